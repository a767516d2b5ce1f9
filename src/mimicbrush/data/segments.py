"""The regions of one static image: SA-1B RLE annotations, a label map, or felzenszwalb."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.segmentation import felzenszwalb

from ..errors import InputError
from .config import FelzenszwalbConfig
from .images import read_label_map
from .rle import decode_rle


class Segments:
    """Regions of an image, each available as an H×W bool mask in the image's pixel grid."""

    def __len__(self) -> int:
        raise NotImplementedError

    def area_fraction(self, index: int) -> float:
        raise NotImplementedError

    def mask(self, index: int) -> np.ndarray:
        raise NotImplementedError


class LabelMapSegments(Segments):
    """One region per non-zero label (0 = unlabelled)."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels
        ids, counts = np.unique(labels, return_counts=True)
        keep = ids != 0
        self.ids = ids[keep]
        self.fractions = counts[keep] / labels.size

    def __len__(self) -> int:
        return len(self.ids)

    def area_fraction(self, index: int) -> float:
        return float(self.fractions[index])

    def mask(self, index: int) -> np.ndarray:
        return self.labels == self.ids[index]


class RleSegments(Segments):
    """SA-1B annotations; masks are decoded only when asked for (an image has ~100 of them)."""

    def __init__(self, annotations: list[dict[str, Any]], height: int, width: int, source: Path):
        self.annotations = annotations
        self.height = height
        self.width = width
        self.source = source

    def __len__(self) -> int:
        return len(self.annotations)

    def area_fraction(self, index: int) -> float:
        annotation = self.annotations[index]
        if "area" in annotation:
            return float(annotation["area"]) / (self.height * self.width)
        return float(self.mask(index).mean())

    def mask(self, index: int) -> np.ndarray:
        mask = decode_rle(self.annotations[index]["segmentation"])
        if mask.shape != (self.height, self.width):
            raise InputError(f"{self.source}: mask {index} is {mask.shape}, image is {(self.height, self.width)}")
        return mask


def read_sa1b(path: Path, image_shape: tuple[int, int]) -> RleSegments:
    """Segments from an SA-1B JSON file ({"image": {...}, "annotations": [{"segmentation": RLE}]})."""
    try:
        document = json.loads(path.read_text())
        annotations = document["annotations"]
        if not all(isinstance(item.get("segmentation"), dict) for item in annotations):
            raise TypeError("every annotation needs an RLE 'segmentation'")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"not an SA-1B annotation file: {path} ({error})") from error
    return RleSegments(annotations, image_shape[0], image_shape[1], path)


def read_label_map_segments(path: Path, image_shape: tuple[int, int]) -> LabelMapSegments:
    labels = read_label_map(path)
    if labels.shape != tuple(image_shape):
        raise InputError(f"label map {path} is {labels.shape[1]}x{labels.shape[0]}, "
                         f"its image is {image_shape[1]}x{image_shape[0]}")
    return LabelMapSegments(labels)


def felzenszwalb_segments(image: np.ndarray, config: FelzenszwalbConfig) -> LabelMapSegments:
    """Unsupervised regions for images without masks, computed on a downscaled copy for speed."""
    height, width = image.shape[:2]
    factor = min(1.0, config.max_side / max(height, width))
    small = image
    if factor < 1.0:
        small = cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))),
                           interpolation=cv2.INTER_AREA)
    labels = felzenszwalb(small, scale=config.scale, sigma=config.sigma, min_size=config.min_size) + 1
    labels = cv2.resize(labels.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST)
    return LabelMapSegments(labels)
