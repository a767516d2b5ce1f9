"""The MIMICBRUSH_MODEL that Load MimicBrush returns: a loaded pipeline and how ComfyUI manages it.

ComfyUI caches a node's outputs, so a second prompt that changes only the edit's inputs reuses
this object (no reload). Nothing here is global: when ComfyUI drops the output (another model
chosen, POST /free with free_memory) the weights go with it; POST /free with unload_models moves
them off the GPU through the ModelPatcher registered with ComfyUI's model management.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch

from .. import samplers
from ..devices import DTYPES
from ..loading import default_model, load_pipeline
from . import host

BUNDLED = "bundled demo model (CC BY-NC 4.0, non-commercial)"
RELEASE_HUB_ID = "xichenhku/MimicBrush"
HUB_CACHE = "hub"  # models/mimicbrush/hub/: a Hugging Face cache of downloaded hub ids


class MimicBrushModel:
    """A MimicBrushPipeline loaded for ComfyUI, with the schedulers built from its config."""

    def __init__(self, pipe, label: str, patcher=None):
        self.pipe = pipe
        self.label = label
        self.patcher = patcher
        self._model_scheduler_config = pipe.scheduler.config
        self._schedulers: dict = {}
        weakref.finalize(pipe, host.logger.info, f"MimicBrush model released: {label}")

    def scheduler(self, name: str):
        """The scheduler called `name`, built once from the model's config; an InputError (our
        message) when this model cannot use it."""
        if name not in self._schedulers:
            self._schedulers[name] = samplers.make_scheduler(name, self._model_scheduler_config)
        return self._schedulers[name]

    def ready(self) -> None:
        """Put the weights where they run (ComfyUI may have moved them off the GPU meanwhile)."""
        host.load_to_device(self.patcher)

    def __repr__(self) -> str:
        return f"<MimicBrushModel {self.label} on {self.pipe.device}, {self.pipe.unet.dtype}>"


def model_choices() -> list[str]:
    """The Load node's list: the bundled model, the model folders in models/mimicbrush/, and the
    release's hub id."""
    folders = []
    for root in host.model_folders():
        if root.is_dir():
            folders += sorted(child.name for child in root.iterdir() if _looks_like_model(child))
    return [BUNDLED, *dict.fromkeys(folders), RELEASE_HUB_ID]


def _looks_like_model(folder: Path) -> bool:
    from ..weights import is_release_layout

    return folder.is_dir() and ((folder / "model_index.json").is_file() or is_release_layout(folder))


def locate(choice: str, hub_id: str = "") -> tuple[str | Path, Path | None, str]:
    """(what load_pipeline takes, the hub cache folder or None, a label) for the Load node's
    inputs. A folder name is looked up in models/mimicbrush/; a hub id is downloaded into
    models/mimicbrush/hub/ (cache_dir: the hub's hashes are checked again; never the user's
    Hugging Face cache or site-packages)."""
    hub_id = (hub_id or "").strip()
    if hub_id or choice == RELEASE_HUB_ID:
        name = hub_id or choice
        folders = host.model_folders()
        cache = folders[0] / HUB_CACHE if folders else None
        return name, cache, name
    if choice == BUNDLED:
        return default_model(), None, "bundled demo model"
    for root in host.model_folders():
        if (root / choice).is_dir():
            return root / choice, None, choice
    from ..errors import WeightsError

    raise WeightsError(f"no model folder {choice!r} in {', '.join(map(str, host.model_folders())) or 'models/mimicbrush'}")


def load(choice: str, dtype: str = "auto", offload: str = "none", hub_id: str = "") -> MimicBrushModel:
    """Load a model on ComfyUI's device (fp16 where ComfyUI would use it, else fp32), outside
    inference mode: ComfyUI runs nodes under torch.inference_mode(), and weights made there are
    inference tensors the pipeline cannot use (their version counter is unreadable)."""
    location, cache_dir, label = locate(choice, hub_id)
    device = host.torch_device()
    device_name = "auto" if device is None else str(device)
    if dtype == "auto" and device is not None:
        dtype = "fp16" if host.half_precision(device) else "fp32"
    with torch.inference_mode(False):
        pipe = load_pipeline(location, device=device_name, dtype=dtype, offload=offload, cache_dir=cache_dir)
    pipe.set_progress_bar_config(disable=True)  # ComfyUI's own bar counts the U-Net calls
    patcher = None
    if offload == "none" and device is not None:
        modules = {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
        patcher = host.manage(modules, device)
    host.logger.info("MimicBrush model loaded: %s (%s, %s)", label, pipe.device, str(pipe.unet.dtype).removeprefix("torch."))
    return MimicBrushModel(pipe, label, patcher)


DTYPE_CHOICES = ("auto", *DTYPES)
