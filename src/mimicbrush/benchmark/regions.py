"""Which pixels each metric sees: the mask's box in the edit and the reference's annotated region.

Boxes are `(x0, y0, x1, y1)` in pixels, x0/y0 inclusive and x1/y1 exclusive (as PIL's crop).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .. import imaging
from ..errors import InputError
from .tracks import Box, ReferenceRegion

# Box metrics need a minimum size: SSIM's 11-pixel window, LPIPS's AlexNet strides.
MIN_BOX_SIDE = 32


def tight_box(mask: np.ndarray) -> Box:
    """Bounding box of the True pixels of an H×W boolean mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise InputError("the mask is empty, so it has no bounding box")
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def grow_box(box: Box, size: tuple[int, int], min_side: int = MIN_BOX_SIDE) -> Box:
    """Grow each side of `box` symmetrically to at least `min_side`, kept inside the image."""
    width, height = size
    x0, x1 = _grow_span(box[0], box[2], width, min_side)
    y0, y1 = _grow_span(box[1], box[3], height, min_side)
    return x0, y0, x1, y1


def _grow_span(start: int, stop: int, limit: int, min_length: int) -> tuple[int, int]:
    length = min(max(stop - start, min_length), limit)
    start -= (length - (stop - start)) // 2
    start = min(max(start, 0), limit - length)
    return start, start + length


def mask_box(mask: np.ndarray) -> Box:
    """The "mask box" of every box metric: the tight box grown to MIN_BOX_SIDE."""
    return grow_box(tight_box(mask), (mask.shape[1], mask.shape[0]))


def reference_box(region: ReferenceRegion, reference: Image.Image) -> Box:
    """The annotated reference region as a box: the box itself, a mask file's tight box, or the
    whole reference when the case has no annotation."""
    width, height = reference.size
    if region is None:
        return 0, 0, width, height
    if isinstance(region, tuple):
        x0, y0, x1, y1 = region
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise InputError(f"reference box {region} lies outside the {width}×{height} reference")
        return region
    mask = imaging.binary_mask(imaging.load_mask(region, reference.size)).astype(bool)
    return tight_box(mask)


def square_for_embedding(image: Image.Image, side: int) -> Image.Image:
    """Pad to a centred white square (as the pipeline pads its inputs), then bicubic to side²,
    so the embedding networks see the whole region, undistorted and uncropped."""
    square = imaging.pad_to_square(np.asarray(image.convert("RGB")), fill=255)
    return Image.fromarray(square).resize((side, side), Image.BICUBIC)
