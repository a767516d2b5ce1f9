"""Bundled examples, built offline from scikit-image's sample photos (shipped inside its wheel).

None of them is in the demo model's training data. Licences (scikit-image's docstrings): the
coffee photo and the brick and gravel textures are CC0; the motorcycle views come from the
Middlebury 2014 stereo benchmark and are used here as inputs only, never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Example:
    name: str
    description: str
    source: np.ndarray  # H×W×3 uint8
    mask: np.ndarray  # H×W uint8, 255 = edit
    reference: np.ndarray  # H×W×3 uint8
    keep_shape: bool


def _box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def _ellipse_mask(shape: tuple[int, int], centre: tuple[int, int], radii: tuple[int, int]) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    inside = ((cols - centre[0]) / radii[0]) ** 2 + ((rows - centre[1]) / radii[1]) ** 2 <= 1
    return inside.astype(np.uint8) * 255


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def bundled_examples() -> list[Example]:
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    coffee = data.coffee()
    cup = _ellipse_mask(coffee.shape[:2], centre=(290, 150), radii=(115, 130))
    return [
        Example("motorcycle-headlight", "part composition: the small headlight (try auto zoom-in)",
                left, _box_mask(left.shape[:2], (500, 110, 575, 200)), right, keep_shape=False),
        Example("motorcycle-tank", "part composition: repaint the fuel tank from the other view",
                left, _box_mask(left.shape[:2], (330, 140, 500, 260)), right, keep_shape=False),
        Example("coffee-brick", "texture transfer: the cup in brick, its shape kept",
                coffee, cup, _rgb(data.brick()), keep_shape=True),
        Example("coffee-gravel", "texture transfer: the cup in gravel, its shape kept",
                coffee, cup, _rgb(data.gravel()), keep_shape=True),
    ]
