"""Checkpoints: atomic saves, keep-last-N, finding the latest, and the trainer's own state.

A checkpoint is a folder `step-NNNNNNNN` holding accelerate's `save_state` files (trainable
weights, optimizer, LR scheduler, gradient scaler, RNG states per process) and
`trainer_state.json` (step, data position, the model section it was made with), and the weight
average `ema.safetensors` where the run keeps one. It is written
as `.tmp-step-NNNNNNNN` and renamed when complete, and removed by renaming it to `.trash-...`
first, so a kill at any moment never leaves a `step-*` folder that is incomplete; leftovers of a
killed save are ignored and cleaned up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, WeightsError
from .zero import full_precision_state_dict

STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"  # accelerate's name for the first prepared model
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_LEFTOVER_PREFIXES = (".tmp-", ".trash-")


@dataclass(frozen=True)
class TrainerState:
    step: int  # optimizer steps done
    epoch: int  # data position: epoch ...
    sample_offset: int  # ... and samples of it consumed by all processes
    num_processes: int
    batch_size: int
    gradient_accumulation_steps: int
    model: dict[str, Any]  # the `model:` section and `train.trainable` the weights belong to
    deepspeed_zero_stage: int | None = None  # None: saved without DeepSpeed

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, folder: Path) -> TrainerState:
        try:
            return cls(**json.loads((folder / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise ConfigError(f"{folder}: not a readable training checkpoint ({error})") from None


class CheckpointStore:
    """The `checkpoints/` folder of a run."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(match.group(1)), path) for path in self.root.iterdir()
                 if (match := _STEP_DIR.match(path.name)) and (path / STATE_FILE).is_file()]
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def resolve(self, requested: str | None) -> Path | None:
        """`latest` (or None) -> the newest checkpoint, if any; otherwise the given folder."""
        if requested in (None, "latest"):
            return self.latest()
        path = Path(requested).expanduser()
        if not (path / STATE_FILE).is_file():
            raise ConfigError(f"{requested}: not a checkpoint folder (no {STATE_FILE})")
        return path.resolve()

    def remove_leftovers(self) -> None:
        """Delete what a killed save or prune left behind (main process only)."""
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.name.startswith(_LEFTOVER_PREFIXES):
                    shutil.rmtree(path, ignore_errors=True)

    def save(self, accelerator, state: TrainerState, keep_last: int | None,
             write_extra: Callable[[Path], None] | None = None) -> Path:
        """Collective: every process calls it (accelerate writes per-process RNG files).
        `write_extra(folder)` adds the main process's own files to the checkpoint."""
        final = self.root / f"step-{state.step:08d}"
        staging = self.root / f".tmp-{final.name}"
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if write_extra is not None:
                write_extra(staging)
            (staging / STATE_FILE).write_text(state.to_json())
            _sync_tree(staging)
            if final.exists():  # re-saving a step after resuming from an earlier one
                self._discard(final)
            os.replace(staging, final)
            _sync_dir(self.root)
            if keep_last is not None:
                for old in self.checkpoints()[:-keep_last]:
                    self._discard(old)
        accelerator.wait_for_everyone()
        return final

    def _discard(self, path: Path) -> None:
        trash = path.with_name(f".trash-{path.name}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def use_unwrapped_weights(accelerator) -> None:
    """Make accelerate save and load the trainable weights under the unwrapped module's names,
    so a checkpoint resumes whatever the process count (DDP would prefix every key with
    `module.`) and `--export` can read it without accelerate.

    DeepSpeed saves and loads its own files instead (the weights, and the optimizer state with
    the float32 master weights, sharded per process); beside them the checkpoint gets the master
    weights gathered into `model.safetensors`, for `--export`."""
    from accelerate.utils import DistributedType

    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED

    def save_unwrapped(models, weights, output_dir) -> None:
        if deepspeed and len(models) == 1:
            from safetensors.torch import save_file

            state = full_precision_state_dict(accelerator.unwrap_model(models[0]), keep=accelerator.is_main_process)
            if state is not None:
                save_file(state, str(Path(output_dir) / WEIGHTS_FILE), metadata={"format": "pt"})
        elif len(weights) == len(models):
            weights[:] = [accelerator.unwrap_model(model).state_dict() for model in models]

    def load_unwrapped(models, input_dir) -> None:
        path = Path(input_dir) / WEIGHTS_FILE
        if not deepspeed and path.is_file() and len(models) == 1:
            load_weights(accelerator.unwrap_model(models[0]), path)
            models.clear()  # tells accelerate they are loaded

    accelerator.register_save_state_pre_hook(save_unwrapped)
    accelerator.register_load_state_pre_hook(load_unwrapped)


def load_weights(module, path: Path) -> None:
    """Trainable weights of a checkpoint into a `MimicBrushObjective`, names and shapes checked."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    for keys, what in ((missing, "lacks"), (unexpected, "has an unexpected")):
        if keys:
            raise WeightsError(f"{path} {what} key {keys[0]!r} ({len(keys)} in all): it does not fit this "
                               "config's model: section and train.trainable")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise WeightsError(f"{path}: key {key!r} has shape {tuple(tensor.shape)}, the model expects "
                               f"{tuple(expected[key].shape)}")
    module.load_state_dict(state, strict=True)


def _sync_tree(folder: Path) -> None:
    """Flush the files to disk before the rename publishes them."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _sync_dir(folder)


def _sync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
