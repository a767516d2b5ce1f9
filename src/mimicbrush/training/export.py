"""Write a trained model in `MimicBrushPipeline.save_pretrained`'s format, atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..data.sources import data_sources
from ..devices import DTYPES
from ..model_card import MODEL_CARD_FILE, parameter_counts, training_card

DATA_RECORD_FILE = "training_data.json"


def export_trained(pipeline, config, target: Path) -> Path:
    """A run's export: the weights, their data record and their model card."""
    record = data_record(config)
    card = training_card(config, parameter_counts(pipeline), record)
    return export_pipeline(pipeline, target, config.export.dtype, record, card)


def data_record(config) -> dict:
    """What a run trained on and what its imitation metric held out, as paths relative to the
    config's folder: the exported model carries its own record of its data (and so of the
    licences it inherits)."""

    def relative(paths: list[Path]) -> list[str]:
        return [Path(os.path.relpath(path, config.base_dir)).as_posix() for path in paths]

    held_out = config.imitation.data
    return {
        "trained_on": relative(data_sources(config.data)),
        "held_out_for_the_imitation_metric": relative(data_sources(held_out, "imitation.data") if held_out else []),
        "paths_relative_to": "the training config's folder",
    }


def export_pipeline(pipeline, target: Path, dtype: str, record: dict | None = None, card: str | None = None) -> Path:
    """Save `pipeline` (cast to `dtype` in place: call it when training is over) to `target`,
    written beside it and renamed, so an interrupted export never leaves a half folder; `record`
    (data_record) goes beside the weights as training_data.json, `card` as README.md."""
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
        if record is not None:
            (staging / DATA_RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n")
        if card is not None:
            (staging / MODEL_CARD_FILE).write_text(card)
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
