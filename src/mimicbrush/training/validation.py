"""Sample edits on a fixed validation set, made with `MimicBrushPipeline` on the current weights.

The set is either a folder of cases in the benchmark's layout (`NAME_source.png`,
`NAME_source_mask.png`, `NAME_reference.png`, optional `NAME_gt.png`) or the first pairs the
training data gives with the validation seed (their unmasked source is the ground truth). Each
case becomes one row of a grid: masked source | reference | edit | ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import imaging
from ..data import DataConfig, build_dataset
from ..errors import ConfigError
from .config import ValidationConfig

TILE = 256  # side of each image in the grid


@dataclass(frozen=True)
class ValidationCase:
    name: str
    source: np.ndarray  # H×W×3 uint8
    mask: np.ndarray  # H×W uint8, 255 = edit
    reference: np.ndarray  # h×w×3 uint8
    target: np.ndarray | None  # H×W×3 uint8 ground truth, when known


def load_validation_cases(config: ValidationConfig, data: DataConfig) -> list[ValidationCase]:
    if config.cases is not None:
        return _cases_from_folder(config.cases, config.num_samples)
    dataset = build_dataset(data, seed=config.seed)
    cases = []
    for index in range(min(config.num_samples, len(dataset))):
        pair = dataset.sample_pair(index, epoch=0)
        cases.append(ValidationCase(f"pair-{index}", pair.source, pair.mask * 255, pair.reference, pair.source))
    return cases


def _cases_from_folder(folder: Path, limit: int) -> list[ValidationCase]:
    sources = sorted(folder.glob("*_source.png"))[:limit]
    if not sources:
        raise ConfigError(f"validation.cases: no NAME_source.png in {folder}")
    cases = []
    for source_path in sources:
        name = source_path.name[: -len("_source.png")]
        paths = {kind: folder / f"{name}_{kind}.png" for kind in ("source_mask", "reference", "gt")}
        for kind in ("source_mask", "reference"):
            if not paths[kind].is_file():
                raise ConfigError(f"validation.cases: {paths[kind].name} is missing for case {name!r}")
        source = np.asarray(imaging.load_image(source_path, "validation source"))
        mask = np.asarray(imaging.load_mask(str(paths["source_mask"]), (source.shape[1], source.shape[0])))
        reference = np.asarray(imaging.load_image(paths["reference"], "validation reference"))
        target = None
        if paths["gt"].is_file():
            target = np.asarray(imaging.load_image(paths["gt"], "validation ground truth"))
        cases.append(ValidationCase(name, source, mask, reference, target))
    return cases


@torch.no_grad()
def render_validation_grid(pipeline, cases: list[ValidationCase], config: ValidationConfig) -> np.ndarray:
    """Edit every case (seeded, so rows are comparable across steps) and tile the results."""
    rows = []
    for case in cases:
        output = pipeline(case.source, case.mask, case.reference, keep_shape=config.keep_shape,
                          num_inference_steps=config.steps, guidance_scale=config.guidance,
                          generator=torch.Generator().manual_seed(config.seed))
        masked = case.source.copy()
        masked[case.mask > imaging.MASK_THRESHOLD] = 0
        tiles = [masked, case.reference, np.asarray(output.images[0]),
                 case.target if case.target is not None else np.zeros_like(case.source)]
        rows.append(np.concatenate([_tile(image) for image in tiles], axis=1))
    return np.concatenate(rows, axis=0)


def _tile(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((TILE, TILE), Image.BICUBIC))
