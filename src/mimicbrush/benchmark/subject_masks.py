"""Seeded masks over a photo's subject, with no segmentation network.

1. Subject region: `cv2.grabCut` on a copy whose long side is 160 px, 4 iterations, initialised
   with the central box that leaves a 10% margin on each side (DreamBooth photos centre their
   subject); foreground = definite + probable foreground, opened and closed with a 3×3 kernel,
   largest connected component, holes filled, then resized back (bilinear, > 0.5). When that
   covers under 3% or over 90% of the photo, the estimate is the ellipse inscribed in the
   initial box instead. OpenCV's RNG is seeded before every call, so the result is repeatable.
2. Part mask: a shape (ellipse, rotated box or smooth blob, equally likely) centred on a subject
   pixel drawn with probability proportional to its distance from the subject's edge, scaled
   until its intersection with the subject covers the target area (within 10%); the mask is that
   intersection.
3. Crossing mask (`--crossing-masks`): an ellipse or rotated box centred on a pixel of the
   subject's edge, scaled until it covers the target area, and kept as drawn (not cut to the
   subject), so it hides part of the subject and part of the background, as a user's rough
   ellipse does; redrawn until each side holds at least a fifth of the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORK_SIDE = 160
GRABCUT_ITERATIONS = 4
INIT_MARGIN = 0.1
MIN_SUBJECT_FRACTION = 0.03
MAX_SUBJECT_FRACTION = 0.9
SHAPES = ("ellipse", "box", "blob")
CROSSING_SHAPES = ("ellipse", "box")
CROSSING_MIN_SHARE = 0.2  # of a crossing mask, on the subject and on the background each
CROSSING_ATTEMPTS = 16
AREA_TOLERANCE = 0.1
MAX_SCALE_STEPS = 12


@dataclass(frozen=True)
class SubjectEstimate:
    mask: np.ndarray  # H×W bool
    method: str  # "grabcut" or "central_ellipse"


def estimate_subject(rgb: np.ndarray, seed: int = 0) -> SubjectEstimate:
    """The subject region of an H×W×3 uint8 photo (see the module docstring)."""
    height, width = rgb.shape[:2]
    scale = WORK_SIDE / max(height, width)
    small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    small_height, small_width = small.shape[:2]
    margin_x, margin_y = round(small_width * INIT_MARGIN), round(small_height * INIT_MARGIN)
    init_box = (margin_x, margin_y, small_width - 2 * margin_x, small_height - 2 * margin_y)
    labels = np.zeros((small_height, small_width), np.uint8)
    cv2.setRNGSeed(seed)  # grabCut's GMM initialisation draws from OpenCV's global RNG
    cv2.grabCut(
        cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
        labels,
        init_box,
        np.zeros((1, 65), np.float64),
        np.zeros((1, 65), np.float64),
        GRABCUT_ITERATIONS,
        cv2.GC_INIT_WITH_RECT,
    )
    foreground = _clean_region(np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8))
    mask = cv2.resize(foreground.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5
    if MIN_SUBJECT_FRACTION <= mask.mean() <= MAX_SUBJECT_FRACTION:
        return SubjectEstimate(mask, "grabcut")
    return SubjectEstimate(_central_ellipse(width, height), "central_ellipse")


def _clean_region(region: np.ndarray) -> np.ndarray:
    kernel = np.ones((3, 3), np.uint8)
    region = cv2.morphologyEx(region, cv2.MORPH_OPEN, kernel)
    region = cv2.morphologyEx(region, cv2.MORPH_CLOSE, kernel)
    count, components, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
    if count <= 1:
        return np.zeros(region.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (components == largest).astype(np.uint8)
    # Fill holes: whatever background the border cannot reach belongs to the subject.
    outside = np.pad(1 - region, 1, constant_values=1)
    cv2.floodFill(outside, None, (0, 0), 2)
    return (outside[1:-1, 1:-1] != 2) | region.astype(bool)


def _central_ellipse(width: int, height: int) -> np.ndarray:
    canvas = np.zeros((height, width), np.uint8)
    axes = (round(width * (0.5 - INIT_MARGIN)), round(height * (0.5 - INIT_MARGIN)))
    cv2.ellipse(canvas, (width // 2, height // 2), axes, 0, 0, 360, 1, thickness=-1)
    return canvas.astype(bool)


def sample_part_mask(subject: np.ndarray, target_pixels: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A random shape inside `subject` covering about `target_pixels` pixels, and its kind."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    centre = _interior_point(subject, rng)
    parameters = _shape_parameters(shape, rng)
    radius = np.sqrt(target_pixels / np.pi)  # a disc of that radius has the target area
    best = None
    for _ in range(MAX_SCALE_STEPS):
        mask = _draw(shape, centre, radius, parameters, subject.shape) & subject
        area = int(mask.sum())
        if area and (best is None or abs(area - target_pixels) < abs(best.sum() - target_pixels)):
            best = mask
        if abs(area / target_pixels - 1) <= AREA_TOLERANCE:
            break
        radius *= np.sqrt(target_pixels / area) if area else 1.5
    if best is None:
        raise ValueError("could not place a mask inside the subject region")
    return best, shape


def sample_crossing_mask(subject: np.ndarray, target_pixels: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A random ellipse or box of about `target_pixels` pixels over the subject's edge, and its kind."""
    edge = subject & ~cv2.erode(subject.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    rows, columns = np.nonzero(edge)
    if not len(rows):
        raise ValueError("the subject region has no edge")
    for _ in range(CROSSING_ATTEMPTS):
        shape = CROSSING_SHAPES[rng.integers(len(CROSSING_SHAPES))]
        index = rng.integers(len(rows))
        centre = (int(columns[index]), int(rows[index]))
        parameters = _shape_parameters(shape, rng)
        radius = np.sqrt(target_pixels / np.pi)
        for _ in range(MAX_SCALE_STEPS):  # the image's border may cut the shape: grow it back
            mask = _draw(shape, centre, radius, parameters, subject.shape)
            area = int(mask.sum())
            if abs(area / target_pixels - 1) <= AREA_TOLERANCE:
                break
            radius *= np.sqrt(target_pixels / area) if area else 1.5
        on_subject = (mask & subject).sum() / max(1, area)
        if CROSSING_MIN_SHARE <= on_subject <= 1 - CROSSING_MIN_SHARE:
            return mask, shape
    raise ValueError(f"no mask crossing the subject's edge in {CROSSING_ATTEMPTS} attempts")


def _interior_point(subject: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    distance = cv2.distanceTransform(subject.astype(np.uint8), cv2.DIST_L2, 3).ravel().astype(np.float64)
    index = int(rng.choice(distance.size, p=distance / distance.sum()))
    row, column = divmod(index, subject.shape[1])
    return column, row


def _shape_parameters(shape: str, rng: np.random.Generator) -> dict:
    parameters = {"aspect": float(rng.uniform(0.5, 2.0)), "angle": float(rng.uniform(0.0, 180.0))}
    if shape == "blob":
        # Radius r(θ) = R·(1 + Σ a_k cos(kθ + φ_k)), k = 2..4: a smooth, star-shaped outline.
        parameters["harmonics"] = [(k, float(rng.uniform(0, 0.2)), float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 4)]
    return parameters


def _draw(shape: str, centre: tuple[int, int], radius: float, parameters: dict, size: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(size, np.uint8)
    aspect, angle = parameters["aspect"], parameters["angle"]
    if shape == "ellipse":
        axes = (max(1, round(radius * np.sqrt(aspect))), max(1, round(radius / np.sqrt(aspect))))
        cv2.ellipse(canvas, centre, axes, angle, 0, 360, 1, thickness=-1)
    elif shape == "box":
        side = radius * np.sqrt(np.pi)  # same area as the disc
        rectangle = (centre, (side * np.sqrt(aspect), side / np.sqrt(aspect)), angle)
        cv2.fillPoly(canvas, [np.round(cv2.boxPoints(rectangle)).astype(np.int32)], 1)
    else:
        theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        wobble = sum(amplitude * np.cos(k * theta + phase) for k, amplitude, phase in parameters["harmonics"])
        radii = radius * (1 + wobble)
        points = np.stack([centre[0] + radii * np.cos(theta), centre[1] + radii * np.sin(theta)], axis=1)
        cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    return canvas.astype(bool)
