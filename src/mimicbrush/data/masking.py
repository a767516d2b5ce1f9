"""Masks on the S×S source canvas (1 = region to repaint): keypoint grids, boxes, segments."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .augment import warp_image
from .config import MaskingConfig
from .segments import Segments

_GRID_REDRAWS = 50  # redraws before an empty or full grid is fixed up by flipping one cell
_SEGMENT_TRIES = 12  # segments tried before giving up on a segment mask


@dataclass(frozen=True)
class MaskResult:
    mask: np.ndarray  # S×S uint8 in {0, 1}
    kind: str  # "grid" | "box" | "segment"
    matched_cells: np.ndarray | None = None  # N×N bool for grid masks: cells holding a match


def grid_bounds(size: int, cells: int) -> np.ndarray:
    """Pixel boundaries of `cells` near-equal cells across `size` pixels."""
    return np.round(np.linspace(0, size, cells + 1)).astype(int)


def grid_mask(size: int, matched_points: np.ndarray, config: MaskingConfig,
              rng: np.random.Generator) -> MaskResult:
    """N×N grid, N uniform in `grid_sizes`; cells holding a matched keypoint are masked with
    probability `p_matched`, the others with `p_unmatched`. Never empty, never full."""
    cells = int(rng.integers(config.grid_sizes[0], config.grid_sizes[1] + 1))
    bounds = grid_bounds(size, cells)
    matched = np.zeros((cells, cells), dtype=bool)
    if len(matched_points):
        points = np.asarray(matched_points).reshape(-1, 2)
        columns = np.clip(np.searchsorted(bounds, points[:, 0], side="right") - 1, 0, cells - 1)
        rows = np.clip(np.searchsorted(bounds, points[:, 1], side="right") - 1, 0, cells - 1)
        matched[rows, columns] = True
    probability = np.where(matched, config.p_matched, config.p_unmatched)
    for _ in range(_GRID_REDRAWS):
        masked = rng.random((cells, cells)) < probability
        if 0 < masked.sum() < masked.size:
            break
    else:
        flat = masked.reshape(-1)
        flat[rng.integers(flat.size)] = not flat.all()  # all masked: clear one; none: set one
    mask = np.repeat(np.repeat(masked, np.diff(bounds), axis=0), np.diff(bounds), axis=1)
    return MaskResult(mask.astype(np.uint8), "grid", matched)


def box_mask(size: int, config: MaskingConfig, rng: np.random.Generator) -> MaskResult:
    """One axis-aligned box covering a fraction of the canvas drawn from `box_area`."""
    area = rng.uniform(*config.box_area) * size * size
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    width = int(np.clip(round(np.sqrt(area * aspect)), 1, size - 1))
    height = int(np.clip(round(area / width), 1, size - 1))  # never the full canvas
    left = int(rng.integers(0, size - width + 1))
    top = int(rng.integers(0, size - height + 1))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:top + height, left:left + width] = 1
    return MaskResult(mask, "box")


def segment_mask(segments: Segments, homography: np.ndarray, size: int, config: MaskingConfig,
                 rng: np.random.Generator) -> MaskResult | None:
    """One segment of the image, carried onto the canvas, covering a fraction in `segment_area`.

    Returns None when none of the tried segments fits (the caller falls back to a grid mask).
    """
    low, high = config.segment_area
    # segments under a quarter of `low` would need a crop under a quarter of the image to qualify
    candidates = [i for i in rng.permutation(len(segments)) if segments.area_fraction(i) >= low / 4]
    for index in candidates[:_SEGMENT_TRIES]:
        mask = warp_image(segments.mask(index).astype(np.uint8), homography, size, nearest=True)
        if low <= mask.mean() <= high:
            return MaskResult(mask, "segment")
    return None
