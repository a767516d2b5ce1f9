"""ComfyUI's image and mask tensors ↔ the 8-bit pixels the rest of mimicbrush takes.

ComfyUI: IMAGE is [B, H, W, C] float in 0–1 (C = 3, sometimes 4 or 1), MASK is [B, H, W] (or
[H, W]) float in 0–1, 1 = selected. LoadImage makes them as uint8 / 255, so rounding ×255 gives
back the file's bytes exactly; the edit then sees the same pixels as `mimicbrush edit` on that
file, and the mask goes through the command line's rules (imaging.load_mask).
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import imaging
from ..errors import InputError

# ComfyUI's LoadImage returns an empty mask when the image has no alpha channel (64×64 in
# upstream ComfyUI, the image's size in the pip-installable fork): the usual way to get here.
EMPTY_MASK_MESSAGE = (
    "the mask is empty: there is nothing to edit. A LoadImage of an image without an alpha channel "
    "gives an empty mask; load a black-and-white mask with LoadImageMask (channel: red) instead, "
    "or paint the region in the mask editor"
)


def to_uint8(tensor) -> np.ndarray:
    """A float 0–1 tensor as uint8 (×255, rounded half to even, clipped)."""
    array = tensor.detach().float().cpu().numpy()
    return np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)


def images(tensor, what: str) -> list[np.ndarray]:
    """An IMAGE batch as H×W×3 uint8 arrays (alpha dropped, grey repeated)."""
    if tensor is None:
        raise InputError(f"the {what} is missing")
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[-1] not in (1, 3, 4) or tensor.shape[0] == 0:
        raise InputError(f"the {what} must be an IMAGE [batch, height, width, channels]; got shape {tuple(tensor.shape)}")
    pixels = to_uint8(tensor)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return [np.ascontiguousarray(frame[..., :3]) for frame in pixels]


def masks(tensor, what: str = "mask") -> list[np.ndarray]:
    """A MASK batch as H×W uint8 arrays (255 = selected)."""
    if tensor is None:
        raise InputError(f"the {what} is missing")
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3 or tensor.shape[0] == 0:
        raise InputError(f"the {what} must be a MASK [batch, height, width]; got shape {tuple(tensor.shape)}")
    return list(to_uint8(tensor))


def paired(items: list, count: int, what: str, of: str) -> list:
    """`items` for each of `count` inputs: one applies to all, else one per input."""
    if len(items) == 1:
        return items * count
    if len(items) != count:
        raise InputError(f"{what} batch has {len(items)} entries for {count} {of}: give one (used for all) "
                         f"or one per {of.rstrip('s')}")
    return items


def edit_mask(mask: np.ndarray, source_size: tuple[int, int]):
    """The edit's mask at the source's size, by the command line's rules (> 128 edits; another
    size of the same aspect ratio is resized with a notice, another aspect ratio is refused),
    and the notices as text. An empty mask gets a message naming LoadImageMask."""
    if not (mask > 128).any():
        raise InputError(EMPTY_MASK_MESSAGE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = imaging.load_mask(mask, source_size)
    return loaded, [str(warning.message) for warning in caught]


def hint(box: str, mask, what: str):
    """A reference hint from a node's inputs: a box "x0,y0,x1,y1", an H×W uint8 mask, or None."""
    box = (box or "").strip()
    if box and mask is not None:
        raise InputError(f"{what}: give a box or a mask, not both")
    if box:
        if not imaging.looks_like_box(box):
            raise InputError(f"{what} must be x0,y0,x1,y1 in the reference's pixels, got {box!r}")
        return box
    return mask


def to_image_batch(arrays: list[np.ndarray]):
    """H×W×3 uint8 arrays (same size) as an IMAGE tensor."""
    import torch

    return torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0)
