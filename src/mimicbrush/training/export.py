"""Write a trained model in `MimicBrushPipeline.save_pretrained`'s format, atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..loading import DTYPES


def export_pipeline(pipeline, target: Path, dtype: str) -> Path:
    """Save `pipeline` (cast to `dtype` in place: call it when training is over) to `target`,
    written beside it and renamed, so an interrupted export never leaves a half folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target_dtype = DTYPES[dtype]
    for module in pipeline.components.values():
        # cast only what differs: diffusers warns on every cast
        if isinstance(module, torch.nn.Module) and any(p.dtype != target_dtype for p in module.parameters()):
            module.to(dtype=target_dtype)
        _forget_origin(module)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}.", dir=target.parent))
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        if target.exists():
            old = staging.with_name(f".trash-{target.name}")
            os.replace(target, old)
            shutil.rmtree(old)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _forget_origin(module) -> None:
    """Drop `_name_or_path`, which diffusers' from_pretrained records and save_pretrained writes:
    after training it names a folder the weights no longer come from (often a temp folder)."""
    from diffusers.configuration_utils import FrozenDict

    config = getattr(module, "_internal_dict", None)
    if config is not None and "_name_or_path" in config:
        module._internal_dict = FrozenDict({k: v for k, v in config.items() if k != "_name_or_path"})
