"""Reading images from disk as RGB uint8 arrays."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..errors import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def read_rgb(path: Path, *, apply_exif_orientation: bool = True) -> np.ndarray:
    """H×W×3 uint8 RGB. Segmentation files index raw pixels, so their images skip EXIF rotation."""
    flags = cv2.IMREAD_COLOR if apply_exif_orientation else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imread(str(path), flags)
    if image is None:
        raise InputError(f"cannot read image: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label_map(path: Path) -> np.ndarray:
    """A segmentation label map as a 2-D int32 array; 0 means unlabelled.

    Grey and palette PNGs give their values (PIL keeps palette indices, which OpenCV would turn
    into colours); an RGB map gives one label per colour, black being 0.
    """
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read label map: {path} ({error})") from error
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return np.asarray(image).astype(np.int32)
