"""Contact sheets of training pairs: source | mask overlay | reference, with keypoint matches."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .dataset import TrainingPair
from .masking import grid_bounds

SHEET_TILE = 256  # panel size on the contact sheet; small canvases are enlarged to about this
MAX_DRAWN_MATCHES = 40  # more lines than this hide the images
_CAPTION_HEIGHT = 20
_MASK_TINT = np.array([255, 0, 0], dtype=np.float32)
_GRID_COLOUR = (255, 255, 0)
_MATCHED_CELL_COLOUR = (0, 255, 0)  # outlines cells holding a matched keypoint


def write_preview(samples: Iterable[tuple[int, TrainingPair]], out_dir: Path) -> list[Path]:
    """Write contact_sheet.png, per-sample source/mask/reference PNGs and samples.json.

    Returns the written paths, the contact sheet first.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = []
    records = []
    for index, pair in samples:
        stem = f"sample_{index:03d}"
        for name, image in (("source", pair.source), ("mask", pair.mask * 255), ("reference", pair.reference)):
            path = out_dir / f"{stem}_{name}.png"
            Image.fromarray(image).save(path)
            written.append(path)
        rows.append(render_row(pair, caption=f"#{index} {describe(pair)}"))
        records.append(_record(index, pair))
    sheet_path = out_dir / "contact_sheet.png"
    Image.fromarray(np.vstack(rows) if rows else np.zeros((1, 1, 3), np.uint8)).save(sheet_path)
    summary_path = out_dir / "samples.json"
    summary_path.write_text(json.dumps(records, indent=1) + "\n")
    return [sheet_path, *written, summary_path]


def describe(pair: TrainingPair) -> str:
    parts = [pair.origin, pair.mask_kind]
    if pair.matched_cells is not None:
        parts.append(f"{len(pair.matched_cells)}x{len(pair.matched_cells)}")
    if pair.ssim is not None:
        parts.append(f"ssim {pair.ssim:.2f}")
    if pair.matches is not None:
        parts.append(f"{len(pair.matches)} matches")
    parts.append(f"mask {pair.mask.mean():.0%}")
    return " ".join(parts)


def render_row(pair: TrainingPair, caption: str) -> np.ndarray:
    """Caption strip over three panels; match lines run from the overlay to the reference.

    The overlay tints the mask red, draws the grid in yellow and outlines matched cells in green.
    """
    size = pair.source.shape[0]
    scale = max(1, SHEET_TILE // size) if size < SHEET_TILE else SHEET_TILE / size
    tile = round(size * scale)

    def fit(image: np.ndarray) -> np.ndarray:
        interpolation = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
        return cv2.resize(image, (tile, tile), interpolation=interpolation)

    source = fit(pair.source)
    overlay = fit(_mask_overlay(pair))
    reference = fit(pair.reference)
    row = np.hstack([source, overlay, reference])
    if pair.matches is not None and len(pair.matches):
        _draw_matches(row, pair, scale, tile)
    strip = np.full((_CAPTION_HEIGHT, row.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, caption[: row.shape[1] // 7], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.vstack([strip, row])


def _mask_overlay(pair: TrainingPair) -> np.ndarray:
    tinted = pair.source.astype(np.float32)
    masked = pair.mask.astype(bool)
    tinted[masked] = 0.5 * tinted[masked] + 0.5 * _MASK_TINT
    overlay = tinted.astype(np.uint8)
    if pair.matched_cells is not None:
        bounds = grid_bounds(pair.source.shape[0], len(pair.matched_cells))
        for bound in bounds[1:-1]:
            overlay[:, bound - 1] = overlay[bound - 1, :] = _GRID_COLOUR
        for row, column in zip(*np.nonzero(pair.matched_cells), strict=True):
            corner = (int(bounds[column]), int(bounds[row]))
            opposite = (int(bounds[column + 1]) - 1, int(bounds[row + 1]) - 1)
            cv2.rectangle(overlay, corner, opposite, _MATCHED_CELL_COLOUR, 1)
    return overlay


def _draw_matches(row: np.ndarray, pair: TrainingPair, scale: float, tile: int) -> None:
    count = len(pair.matches)
    chosen = np.linspace(0, count - 1, min(count, MAX_DRAWN_MATCHES)).round().astype(int)
    for order, match in enumerate(chosen):
        hue = int(180 * order / len(chosen))
        colour = cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0].tolist()
        source_point = (pair.matches.source[match] + 0.5) * scale
        reference_point = (pair.matches.reference[match] + 0.5) * scale
        on_source = tuple(int(v) for v in source_point)
        on_overlay = (int(source_point[0]) + tile, int(source_point[1]))
        on_reference = (int(reference_point[0]) + 2 * tile, int(reference_point[1]))
        for point in (on_source, on_overlay, on_reference):
            cv2.circle(row, point, 3, colour, 1, cv2.LINE_AA)
        cv2.line(row, on_overlay, on_reference, colour, 1, cv2.LINE_AA)


def _record(index: int, pair: TrainingPair) -> dict:
    return {
        "index": index,
        "origin": pair.origin,
        "description": pair.description,
        "mask_kind": pair.mask_kind,
        "mask_fraction": round(float(pair.mask.mean()), 4),
        "grid_size": None if pair.matched_cells is None else len(pair.matched_cells),
        "ssim": pair.ssim,
        "matches": None if pair.matches is None else len(pair.matches),
        "source_homography": pair.source_homography.round(6).tolist(),
        "reference_homography": pair.reference_homography.round(6).tolist(),
    }
