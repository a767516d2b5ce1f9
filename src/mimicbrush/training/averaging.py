"""An exponential moving average of the trainable weights (`train.ema_decay`).

The average, not the last step's weights, is what the run measures (imitation metric, sample
edits) and exports. It is diffusers' `EMAModel` with its default warm-up: at optimizer step n the
average moves with decay min(ema_decay, n / (n + 9)) (0 at step 1: it starts as a copy of
the weights), so it spans roughly the last n / 9 steps until ema_decay caps it. A
checkpoint keeps it as `ema.safetensors` (the averaged tensors under the objective's parameter
names, the EMA step in the metadata), beside accelerate's files, so `--export` reads it without
accelerate or pickles.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import WeightsError

EMA_FILE = "ema.safetensors"


class WeightAverage:
    """The moving average of `module`'s parameters that require gradients."""

    def __init__(self, module: torch.nn.Module, decay: float):
        from diffusers.training_utils import EMAModel

        named = [(name, parameter) for name, parameter in module.named_parameters() if parameter.requires_grad]
        self.names = [name for name, _ in named]
        self.parameters = [parameter for _, parameter in named]
        self.ema = EMAModel(self.parameters, decay=decay)
        # float32 even where the weights are half precision (DeepSpeed's bf16): a half-precision
        # average would round away updates of (1 - decay) × the weights' change
        self.ema.to(dtype=torch.float32)

    @property
    def step_count(self) -> int:
        return self.ema.optimization_step

    def update(self) -> None:
        """After an optimizer step."""
        self.ema.step(self.parameters)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The module holds the averaged weights inside the block, its own after."""
        self.ema.store(self.parameters)
        self.ema.copy_to(self.parameters)
        try:
            yield
        finally:
            self.ema.restore(self.parameters)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {name: shadow.detach().contiguous().cpu()
                   for name, shadow in zip(self.names, self.ema.shadow_params, strict=True)}
        save_file(tensors, str(Path(folder) / EMA_FILE), metadata={"optimization_step": str(self.step_count)})

    def load(self, folder: Path) -> None:
        """The average saved in a checkpoint folder; names and shapes must match."""
        state, step = read_average(Path(folder) / EMA_FILE)
        missing = [name for name in self.names if name not in state]
        if missing or len(state) != len(self.names):
            raise WeightsError(f"{Path(folder) / EMA_FILE} does not average this run's trainable weights "
                               f"({len(missing)} of {len(self.names)} missing, e.g. {(missing or ['?'])[0]!r})")
        for name, shadow in zip(self.names, self.ema.shadow_params, strict=True):
            if state[name].shape != shadow.shape:
                raise WeightsError(f"{Path(folder) / EMA_FILE}: {name} has shape {tuple(state[name].shape)}, "
                                   f"expected {tuple(shadow.shape)}")
            shadow.data.copy_(state[name])
        self.ema.optimization_step = step


def read_average(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The averaged tensors of a checkpoint's `ema.safetensors` and the step they were made at."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        step = int((handle.metadata() or {}).get("optimization_step", 0))
        return {name: handle.get_tensor(name) for name in handle.keys()}, step


def load_average_into(module: torch.nn.Module, path: Path) -> None:
    """Overwrite `module`'s averaged parameters with those saved at `path` (for export)."""
    state, _ = read_average(path)
    parameters = dict(module.named_parameters())
    for name, tensor in state.items():
        if name not in parameters or parameters[name].shape != tensor.shape:
            raise WeightsError(f"{path}: {name} does not fit this config's model: section and train.trainable")
        with torch.no_grad():
            parameters[name].copy_(tensor)
