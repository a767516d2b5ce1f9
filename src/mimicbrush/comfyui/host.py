"""What the nodes use of the ComfyUI they run in, imported when used (never at import time).

Without ComfyUI (CI, the Python API) every function here has a plain fallback: CUDA, MPS or the
CPU as `devices.resolve_device` picks, no progress bar, no interrupt, no model management. The
pip-installable fork names its modules `comfy.cmd.folder_paths`; upstream ComfyUI `folder_paths`.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

logger = logging.getLogger("mimicbrush.comfyui")

MODEL_FOLDER = "mimicbrush"  # models/mimicbrush/ under ComfyUI's models directory


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def folder_paths():
    """ComfyUI's folder_paths module, or None outside ComfyUI."""
    return _optional("comfy.cmd.folder_paths") or _optional("folder_paths")


def model_management():
    return _optional("comfy.model_management")


def model_folders() -> list[Path]:
    """The folders ComfyUI lists for models/mimicbrush/ (registered on first use; created, since
    a hub download goes there)."""
    paths = folder_paths()
    if paths is None:
        return []
    try:
        folders = paths.get_folder_paths(MODEL_FOLDER)
    except KeyError:
        folders = []
    if not folders:
        paths.add_model_folder_path(MODEL_FOLDER, os.path.join(paths.models_dir, MODEL_FOLDER), is_default=True)
        folders = paths.get_folder_paths(MODEL_FOLDER)
    return [Path(folder) for folder in folders]


def torch_device():
    """The device ComfyUI runs models on (honours --cpu, --gpu-only, ...); None outside ComfyUI."""
    management = model_management()
    return None if management is None else management.get_torch_device()


def half_precision(device) -> bool:
    """ComfyUI's answer to "fp16 on this device?" (False on the CPU)."""
    management = model_management()
    if management is None:
        return device.type == "cuda"
    return bool(management.should_use_fp16(device))


def throw_if_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Stop (or POSTed /interrupt).
    processing_interrupted() returns None in the fork, so this is the call that works in both."""
    management = model_management()
    if management is not None:
        management.throw_exception_if_processing_interrupted()


class Progress:
    """One tick per U-Net call on ComfyUI's progress bar for the running node."""

    def __init__(self, total: int):
        utils = _optional("comfy.utils")
        self.total = total
        self.bar = utils.ProgressBar(total) if utils is not None else None

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)


def manage(modules: dict, device):
    """Register the model's modules with ComfyUI's model management (a ModelPatcher over them),
    so that ComfyUI moves them to `device` when they run, back to its offload device when another
    model needs the memory, and off the GPU on "unload models" (POST /free); None outside ComfyUI."""
    management = model_management()
    patcher_module = _optional("comfy.model_patcher")
    if management is None or patcher_module is None:
        return None
    import torch

    container = torch.nn.ModuleDict(modules)  # the pipeline's own modules, not copies
    return patcher_module.ModelPatcher(container, load_device=device, offload_device=management.unet_offload_device())


def load_to_device(patcher) -> None:
    """Ask ComfyUI to put the model on its device, freeing other models' memory if needed."""
    management = model_management()
    if patcher is not None and management is not None:
        management.load_models_gpu([patcher])
