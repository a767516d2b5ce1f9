"""Editing beyond the release: auto zoom-in on small regions, a reference hint, several regions.

The release squashes every source into the model's square (512² for SD-1.5), so a region that
covers 2% of a photo is painted on a few latent cells. `zoomed_edit` wraps the pipeline from
outside: it splits the mask into connected regions, edits each small one on a square crop around
it (so the model sees the region at its own resolution), edits the other regions together on the
whole image as the release does, and pastes every edit back at the source's own size with the
release's feathered blend. Pixels farther than FEATHER_RADIUS from every masked pixel stay
bit-identical to the source. A reference hint (a box or mask on the reference) crops the
reference to that part. The geometry is pure numpy/OpenCV; docs/editing.md explains the choices.

Boxes are `(x0, y0, x1, y1)` in pixels, x0/y0 inclusive and x1/y1 exclusive (as PIL's crop).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import PIL.Image

from . import imaging
from .errors import InputError

Box = tuple[int, int, int, int]

ZOOM_MODES = ("off", "auto")
# Context on each side of a zoomed region, as a multiple of its box's long side: a compact region
# then covers about 1/9 (11%) of its crop, inside the range of mask sizes the model was trained on
# (docs/data.md: boxes 5–50%, segments 2–60% of the canvas) and far from the paper's failure case
# (a region of 1–4% of the image, as in the small-mask track).
DEFAULT_ZOOM_MARGIN = 1.0
# Zoom a region when its box covers less than this share of the image. It matches the margin:
# above ~1/9 the crop (3× the long side) would be about as large as the image, so nothing is
# gained; below, a compact region in a square image gets 1/(3·sqrt(share)) times more model
# pixels per source pixel (1.5× at 5%, 2.4× at 2%, 3.3× at 1%). should_zoom also requires the crop to be smaller than
# the image, which decides elongated regions.
DEFAULT_ZOOM_THRESHOLD = 0.1
# The reference hint is grown by this share of its long side: users draw boxes tight, and a
# part's outline against its surroundings is part of what the model imitates.
DEFAULT_REFERENCE_MARGIN = 0.1
# imaging.feather_mask blurs the mask ten times with a 3×3 kernel, so the blend weight is zero
# farther than 10 px (Chebyshev) from every masked pixel: those pixels are the source's exactly.
FEATHER_RADIUS = 10
# Least context kept around a region inside its crop (where the image allows): more than the
# feather band, so the blend never reaches a crop edge that lies inside the image (no seam).
MIN_CONTEXT_PX = 16
# Above this many separate mask parts zoom is not tried (grouping compares every pair, and each
# zoomed part would be a model call); such a mask, usually a noisy one, is edited as the release.
MAX_ZOOM_COMPONENTS = 256


# ---------------------------------------------------------------------------------------------
# Boxes


def box_size(box: Box) -> tuple[int, int]:
    return box[2] - box[0], box[3] - box[1]


def box_area(box: Box) -> int:
    width, height = box_size(box)
    return width * height


def union_box(boxes) -> Box:
    boxes = np.asarray(list(boxes))
    return int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max())


def tight_box(mask: np.ndarray) -> Box:
    """Bounding box of the non-zero pixels of an H×W mask (which must have one)."""
    x, y, width, height = cv2.boundingRect(np.ascontiguousarray(mask, dtype=np.uint8))
    if width == 0:
        raise InputError("the mask is empty, so it has no bounding box")
    return x, y, x + width, y + height


def _centred_span(start: int, stop: int, length: int, limit: int) -> tuple[int, int]:
    """[start, stop) grown to `length` (at most `limit`) around its centre, then shifted to lie
    inside [0, limit). An odd surplus goes to the right/bottom."""
    length = min(length, limit)
    start -= (length - (stop - start)) // 2
    start = min(max(start, 0), limit - length)
    return start, start + length


def zoom_box(mask_box: Box, image_size: tuple[int, int], margin: float = DEFAULT_ZOOM_MARGIN) -> Box:
    """The crop edited for a region: a square of side long_side + 2·context, with context =
    max(ceil(margin·long_side), MIN_CONTEXT_PX), centred on `mask_box` and shifted (never
    shrunk) to stay inside the image. Square, so the model's padding wastes nothing; along an
    axis shorter than that side, the crop takes the whole axis (the pipeline pads the rectangle).
    It always contains `mask_box`."""
    long_side = max(box_size(mask_box))
    context = max(math.ceil(margin * long_side), MIN_CONTEXT_PX)
    side = long_side + 2 * context
    width, height = image_size
    x0, x1 = _centred_span(mask_box[0], mask_box[2], side, width)
    y0, y1 = _centred_span(mask_box[1], mask_box[3], side, height)
    return x0, y0, x1, y1


def should_zoom(mask_box: Box, crop_box: Box, image_size: tuple[int, int], threshold: float) -> bool:
    """Zoom when the region's box covers less than `threshold` of the image and its crop is
    smaller than the image's long side (otherwise the model would see it no larger)."""
    width, height = image_size
    small = box_area(mask_box) / (width * height) < threshold
    return small and max(box_size(crop_box)) < max(width, height)


def edit_scale(crop_box: Box, resolution: int) -> float:
    """Model pixels per source pixel along a side when `crop_box` is edited at resolution²
    (the pipeline pads the crop to a square of its long side)."""
    return resolution / max(box_size(crop_box))


# ---------------------------------------------------------------------------------------------
# Regions


@dataclass(frozen=True, eq=False)
class RegionPlan:
    """One model call: which part of the source it edits and which masked pixels it repaints."""

    crop_box: Box  # the part of the source given to the model (the whole image when not zoomed)
    mask_box: Box  # tight box of this call's masked pixels, in source pixels
    crop_mask: np.ndarray  # crop-sized bool mask: this call's masked pixels
    zoomed: bool
    components: int  # connected mask components (8-connectivity) edited in this call


def _footprint(mask_box: Box, image_size: tuple[int, int], margin: float, threshold: float) -> tuple[Box, bool]:
    """What a group of components claims, and whether it is zoomed: its zoom box when zoomed;
    otherwise (edited on the whole image) its box grown by MIN_CONTEXT_PX, which holds its
    feathered band with room to spare."""
    crop_box = zoom_box(mask_box, image_size, margin)
    if should_zoom(mask_box, crop_box, image_size, threshold):
        return crop_box, True
    x0, y0, x1, y1 = mask_box
    width, height = image_size
    grown = (max(x0 - MIN_CONTEXT_PX, 0), max(y0 - MIN_CONTEXT_PX, 0),
             min(x1 + MIN_CONTEXT_PX, width), min(y1 + MIN_CONTEXT_PX, height))
    return grown, False


def _group_components(
    boxes: list[Box], image_size: tuple[int, int], margin: float, threshold: float
) -> list[tuple[list[int], Box, bool]]:
    """Group components (given by their boxes) until no two groups' footprints overlap; returns
    (component indices, group box, zoomed) per group, in the raster order of their first pixel.

    Each pass joins every chain of overlapping footprints (union-find) and recomputes the merged
    groups' footprints, which are larger and may overlap others: repeat until stable. A merged
    group only grows, so once edited on the whole image it stays so, and the loop ends.
    """
    groups = [[index] for index in range(len(boxes))]
    while True:
        group_boxes = [union_box(boxes[i] for i in group) for group in groups]
        footprints = [_footprint(box, image_size, margin, threshold) for box in group_boxes]
        claimed = np.array([footprint for footprint, _ in footprints])
        overlap = (
            (claimed[:, None, 0] < claimed[None, :, 2])
            & (claimed[None, :, 0] < claimed[:, None, 2])
            & (claimed[:, None, 1] < claimed[None, :, 3])
            & (claimed[None, :, 1] < claimed[:, None, 3])
        )
        pairs = np.argwhere(np.triu(overlap, k=1))
        if len(pairs) == 0:
            return [(group, box, zoomed) for group, box, (_, zoomed) in zip(groups, group_boxes, footprints)]
        chains = _linked_chains(len(groups), pairs)
        merged = [sorted(index for linked in chain for index in groups[linked]) for chain in chains]
        groups = sorted(merged, key=lambda group: group[0])


def _linked_chains(count: int, pairs: np.ndarray) -> list[list[int]]:
    """The connected components of the graph on `count` nodes with edges `pairs` (union-find)."""
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for first, second in pairs:
        parent[root(int(first))] = root(int(second))
    chains: dict[int, list[int]] = {}
    for node in range(count):
        chains.setdefault(root(node), []).append(node)
    return list(chains.values())


def plan_regions(
    mask: np.ndarray,
    *,
    zoom: str = "auto",
    margin: float = DEFAULT_ZOOM_MARGIN,
    threshold: float = DEFAULT_ZOOM_THRESHOLD,
) -> list[RegionPlan]:
    """Split an H×W {0,1} mask into model calls.

    zoom "off": one call on the whole image with the whole mask (the release's edit). zoom
    "auto": connected components (8-connectivity), grouped while their footprints overlap (see
    _footprint); each zoomed group is one call on its zoom box, and all the other groups are one
    call on the whole image (first in the list). A zoomed crop holds no other call's masked
    pixels and no other call's feathered band, so the calls never blend into each other.
    """
    check_options(zoom, margin, threshold)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    height, width = mask.shape
    image_box = (0, 0, width, height)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        raise InputError("the mask is empty: there is nothing to edit")
    if zoom == "auto" and count - 1 > MAX_ZOOM_COMPONENTS:
        warnings.warn(f"the mask has {count - 1} separate parts (more than {MAX_ZOOM_COMPONENTS}): "
                      "edited on the whole image, without zoom", stacklevel=2)
    if zoom == "off" or count - 1 > MAX_ZOOM_COMPONENTS:
        return [RegionPlan(image_box, tight_box(mask), mask.astype(bool), False, count - 1)]

    boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:]]
    whole_image_components, zoomed = [], []
    for group, group_box, is_zoomed in _group_components(boxes, (width, height), margin, threshold):
        if not is_zoomed:
            whole_image_components.extend(group)
            continue
        x0, y0, x1, y1 = crop_box = zoom_box(group_box, (width, height), margin)
        crop_mask = np.isin(labels[y0:y1, x0:x1], np.asarray(group) + 1)
        zoomed.append(RegionPlan(crop_box, group_box, crop_mask, True, len(group)))
    plans = []
    if whole_image_components:
        whole_mask = np.isin(labels, np.asarray(whole_image_components) + 1)
        plans.append(RegionPlan(image_box, tight_box(whole_mask), whole_mask, False, len(whole_image_components)))
    return plans + zoomed


def feather_band(mask: np.ndarray) -> np.ndarray:
    """H×W bool: the pixels a paste-back at `mask` may change (within FEATHER_RADIUS of it)."""
    kernel = np.ones((2 * FEATHER_RADIUS + 1,) * 2, np.uint8)
    return cv2.dilate(np.ascontiguousarray(mask, dtype=np.uint8), kernel) > 0


def paste_edit(canvas: np.ndarray, model_image: np.ndarray, crop_box: Box, crop_mask: np.ndarray) -> np.ndarray:
    """`canvas` (H×W×3 uint8) with the model's square output for `crop_box` pasted back at the
    crop's own size, blended with the release's feathered mask (imaging.paste_back). Outside the
    crop, and inside it farther than FEATHER_RADIUS from `crop_mask`, the canvas is unchanged."""
    x0, y0, x1, y1 = crop_box
    pasted = canvas.copy()
    pasted[y0:y1, x0:x1] = imaging.paste_back(model_image, canvas[y0:y1, x0:x1], crop_mask.astype(np.uint8))
    return pasted


# ---------------------------------------------------------------------------------------------
# Reference hint


def hint_box(hint, reference_size: tuple[int, int]) -> Box:
    """A reference hint as a box in reference pixels: a box (a 4-tuple or "x0,y0,x1,y1", inside
    the reference) or a mask (path, image or array; > 128 marks the part; its tight box)."""
    if isinstance(hint, (tuple, list)):
        hint = ",".join(str(value) for value in hint)
    if isinstance(hint, str) and imaging.looks_like_box(hint):
        return imaging.parse_box(hint, reference_size)
    return tight_box(imaging.binary_mask(imaging.load_mask(hint, reference_size)))


def reference_list(reference_image) -> list | None:
    """None, or the references as a list: `reference_image` is one image (path, PIL image,
    array) or a list/tuple of them."""
    if reference_image is None:
        return None
    if not isinstance(reference_image, (list, tuple)):
        return [reference_image]
    if not reference_image or any(reference is None for reference in reference_image):
        raise InputError("a list of references must hold at least one image and no None")
    return list(reference_image)


def paired_reference_boxes(reference_image, reference_box) -> list | None:
    """The reference hints paired with `reference_list(reference_image)`: None when there is no
    hint, else one entry (a hint or None) per reference. With a list of references the hints
    are a list of the same length (a single reference takes any hint hint_box takes, including
    a 4-tuple, so only a list of references makes a list of hints)."""
    if reference_box is None:
        return None
    if reference_image is None:
        raise InputError("a reference box needs a reference image (it restricts what the reference offers)")
    if not isinstance(reference_image, (list, tuple)):
        return [reference_box]
    count = len(reference_image)
    if not isinstance(reference_box, (list, tuple)) or len(reference_box) != count:
        given = len(reference_box) if isinstance(reference_box, (list, tuple)) else 1
        raise InputError(f"give one reference box per reference ({count}), paired in order, or none; got {given}")
    if all(box is None for box in reference_box):
        return None
    return list(reference_box)


def reference_crop_box(
    hint: Box, reference_size: tuple[int, int], margin: float = DEFAULT_REFERENCE_MARGIN
) -> Box:
    """The hint box grown by ceil(margin × its long side) on each side, clipped to the reference.
    Not squared: the pipeline pads it to a square with white, as it pads any reference, and
    squaring would bring back the surroundings the hint excludes."""
    context = math.ceil(margin * max(box_size(hint)))
    width, height = reference_size
    x0, y0, x1, y1 = hint
    return max(x0 - context, 0), max(y0 - context, 0), min(x1 + context, width), min(y1 + context, height)


# ---------------------------------------------------------------------------------------------
# The edit


@dataclass(frozen=True)
class EditedRegion:
    """What one model call edited and at which resolution."""

    crop_box: Box  # the part of the source the model edited
    mask_box: Box  # tight box of the masked pixels it repainted
    zoomed: bool
    components: int  # connected mask components in this call
    model_resolution: int  # side of the model's square
    scale: float  # model pixels per source pixel along a side (> 1: finer than the source)
    release_scale: float  # the same without zoom (the whole image squashed into the square)


@dataclass
class EditingOutput:
    """images: the composed edit at the source's own size (one). model_images / depth_images /
    regions: one entry per model call (the whole-image call first, then each zoomed region);
    depth images are at their crop's size (None without shape control). reference_box: the
    part of the reference the model was given (None: the whole reference); with a list of
    references, None or a list with an entry per reference."""

    images: list[PIL.Image.Image]
    model_images: list[PIL.Image.Image]
    depth_images: list[PIL.Image.Image | None]
    regions: list[EditedRegion]
    reference_box: Box | list[Box | None] | None


def check_options(
    zoom: str = "off",
    margin: float = DEFAULT_ZOOM_MARGIN,
    threshold: float = DEFAULT_ZOOM_THRESHOLD,
    reference_margin: float = DEFAULT_REFERENCE_MARGIN,
) -> None:
    if zoom not in ZOOM_MODES:
        raise InputError(f"zoom must be one of {', '.join(ZOOM_MODES)}, got {zoom!r}")
    if not (math.isfinite(margin) and margin >= 0):
        raise InputError(f"the zoom margin must be a finite number >= 0, got {margin!r}")
    if not (math.isfinite(threshold) and 0 < threshold <= 1):
        raise InputError(f"the zoom threshold must be in (0, 1], got {threshold!r}")
    if not (math.isfinite(reference_margin) and reference_margin >= 0):
        raise InputError(f"the reference margin must be a finite number >= 0, got {reference_margin!r}")


def zoomed_edit(
    pipe,
    source_image,
    mask_image,
    reference_image=None,
    reference_box=None,
    *,
    zoom: str = "auto",
    margin: float = DEFAULT_ZOOM_MARGIN,
    threshold: float = DEFAULT_ZOOM_THRESHOLD,
    reference_margin: float = DEFAULT_REFERENCE_MARGIN,
    **pipe_kwargs,
) -> EditingOutput:
    """Edit `source_image` inside `mask_image` by imitating `reference_image`, zooming in on
    small regions (zoom="auto") and restricting the reference to `reference_box`.

    pipe: a MimicBrushPipeline (or any callable with its keyword arguments returning its output
    type); it is called once per RegionPlan with zoom="off". Inputs are those the pipeline takes
    (paths, PIL images, arrays; the mask also as a box string). reference_box: a hint box or
    mask on the reference (see hint_box); None keeps the whole reference. pipe_kwargs: the
    pipeline's other arguments (keep_shape, num_inference_steps, guidance_scale, generator,
    faithful, ...). Every call starts from the generator's state on entry, so each region is
    edited as it would be alone with that seed. With zoom="off" and no hint this is exactly one
    pipeline call on the user's inputs: the release's edit.
    """
    check_options(zoom, margin, threshold, reference_margin)
    source_image, mask_image = imaging.load_source_and_mask(source_image, mask_image)
    source = np.asarray(source_image)
    height, width = source.shape[:2]
    mask = imaging.binary_mask(mask_image)
    reference, used_reference_box = _prepare_references(reference_image, reference_box, reference_margin)
    plans = plan_regions(mask, zoom=zoom, margin=margin, threshold=threshold)

    generator = pipe_kwargs.get("generator")
    initial_state = generator.get_state() if generator is not None else None
    canvas = source
    model_images, depth_images, regions = [], [], []
    for plan in plans:
        if initial_state is not None:
            generator.set_state(initial_state)
        x0, y0, x1, y1 = plan.crop_box
        output = pipe(
            source_image=np.ascontiguousarray(source[y0:y1, x0:x1]),
            mask_image=plan.crop_mask,
            reference_image=reference,
            zoom="off",
            **pipe_kwargs,
        )
        model_image = np.asarray(output.model_images[0].convert("RGB"))
        canvas = paste_edit(canvas, model_image, plan.crop_box, plan.crop_mask)
        resolution = model_image.shape[0]
        regions.append(
            EditedRegion(
                crop_box=plan.crop_box,
                mask_box=plan.mask_box,
                zoomed=plan.zoomed,
                components=plan.components,
                model_resolution=resolution,
                scale=edit_scale(plan.crop_box, resolution),
                release_scale=edit_scale((0, 0, width, height), resolution),
            )
        )
        model_images.append(output.model_images[0])
        depth_images.append(output.depth_images[0])
    return EditingOutput([PIL.Image.fromarray(canvas)], model_images, depth_images, regions, used_reference_box)


def _prepare_references(reference_image, reference_box, margin: float):
    """What _prepare_reference gives, for one reference or (as lists) for a list of them."""
    boxes = paired_reference_boxes(reference_image, reference_box)
    references = reference_list(reference_image)
    if references is None:
        return None, None
    prepared = [_prepare_reference(reference, box, margin)
                for reference, box in zip(references, boxes or [None] * len(references))]
    if not isinstance(reference_image, (list, tuple)):
        return prepared[0]
    crops = [crop for _, crop in prepared]
    return [image for image, _ in prepared], (crops if any(crop is not None for crop in crops) else None)


def _prepare_reference(reference_image, reference_box, margin: float) -> tuple[np.ndarray, Box | None]:
    """The reference the model gets (cropped to the hint plus context) and that crop's box."""
    reference = np.asarray(imaging.load_image(reference_image, "reference image"))
    if reference_box is None:
        return reference, None
    size = (reference.shape[1], reference.shape[0])
    x0, y0, x1, y1 = crop = reference_crop_box(hint_box(reference_box, size), size, margin)
    return np.ascontiguousarray(reference[y0:y1, x0:x1]), crop


def describe_regions(output: EditingOutput) -> list[str]:
    """One line per model call (and one for the reference hint), e.g. for the CLI's stderr."""
    lines = []
    for index, region in enumerate(output.regions, 1):
        crop_width, crop_height = box_size(region.crop_box)
        where = "zoomed on" if region.zoomed else "whole image"
        parts = f"{region.components} part{'s' if region.components > 1 else ''}"
        lines.append(
            f"region {index} ({parts}, mask box {_box_text(region.mask_box)}): {where} "
            f"{_box_text(region.crop_box)} ({crop_width}×{crop_height} px) edited at "
            f"{region.model_resolution}×{region.model_resolution}, {region.scale:.2f} model px per "
            f"source px (without zoom {region.release_scale:.2f})"
        )
    boxes = output.reference_box
    if isinstance(boxes, tuple):
        lines.append(f"reference: cropped to {_box_text(boxes)} (hint plus context)")
    elif boxes is not None:
        lines += [f"reference {index}: cropped to {_box_text(box)} (hint plus context)"
                  for index, box in enumerate(boxes, 1) if box is not None]
    return lines


def _box_text(box: Box) -> str:
    return ",".join(str(value) for value in box)
