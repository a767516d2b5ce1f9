"""Image and mask I/O and the geometry of an edit: pad to square, collage, model inputs, paste-back.

Pure functions on PIL images and numpy arrays, no models. The arithmetic follows the release's
demo path exactly (see ../shared/parity/README.md, "Facts"), since the parity kit checks it.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from .errors import InputError

MASK_THRESHOLD = 128  # a mask pixel > 128 means "edit"
MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb limit (about 8000 x 8000)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# Loading


def open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open an image file fully (EXIF rotation applied), or raise InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{what} is an empty file: {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        try:
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(
                f"{what} is too large: {path} (limit {MAX_IMAGE_PIXELS:,} pixels)"
            ) from None
        except (OSError, SyntaxError, ValueError) as error:
            raise InputError(f"{what} cannot be read as an image: {path} ({error})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
    return image


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB view of any PIL mode; transparency is composited over `background` (not dropped)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: str | os.PathLike | Image.Image | np.ndarray, what: str = "image") -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an H×W×3 uint8 array."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or source.dtype != np.uint8:
            raise InputError(f"{what} array must be H×W or H×W×3 uint8, got {source.shape} {source.dtype}")
        image = Image.fromarray(source)
    else:
        image = open_image(source, what)
    if getattr(image, "is_animated", False):
        image.seek(0)  # animated files: the first frame is the image
    return to_rgb(image)


def parse_box(text: str, size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """`x0,y0,x1,y1` (x0/y0 inclusive, x1/y1 exclusive, as PIL's crop), checked against `size`."""
    try:
        x0, y0, x1, y1 = (int(round(float(part))) for part in text.split(","))
    except ValueError:
        raise InputError(f"a box must be 'x0,y0,x1,y1' in pixels, got {text!r}") from None
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box {text!r} is empty (need x1 > x0 and y1 > y0)")
    if size is not None:
        width, height = size
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise InputError(f"box {text!r} lies outside the {width}×{height} image")
    return x0, y0, x1, y1


def looks_like_box(text: str) -> bool:
    parts = str(text).split(",")
    return len(parts) == 4 and not Path(str(text)).exists()


def mask_to_luminance(mask: Image.Image) -> Image.Image:
    """Grayscale mask: an RGBA/LA mask uses its alpha when it has transparency, else luminance."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    if mask.mode in ("I;16", "I;16B", "I;16L", "I"):
        return to_rgb(mask).convert("L")
    return mask.convert("L")


def load_mask(
    mask: str | os.PathLike | Image.Image | np.ndarray,
    size: tuple[int, int],
) -> Image.Image:
    """An L-mode mask at `size` (0 or 255 where the box/edit is) from a file, image, array or box.

    A mask of another size is resized to the source (nearest) with a warning, since users often
    paint masks on a downscaled copy. An empty mask is an error: there would be nothing to edit.
    """
    if isinstance(mask, str) and looks_like_box(mask):
        x0, y0, x1, y1 = parse_box(mask, size)
        array = np.zeros((size[1], size[0]), np.uint8)
        array[y0:y1, x0:x1] = 255
        image = Image.fromarray(array, "L")
    else:
        if isinstance(mask, np.ndarray):
            if mask.ndim != 2:
                raise InputError(f"mask array must be H×W, got shape {mask.shape}")
            array = mask.astype(np.uint8) * 255 if mask.dtype == bool else mask.astype(np.uint8)
            image = Image.fromarray(array, "L")
        elif isinstance(mask, Image.Image):
            image = mask_to_luminance(mask)
        else:
            image = mask_to_luminance(open_image(mask, "mask"))
        if image.size != tuple(size):
            warnings.warn(
                f"mask is {image.size[0]}×{image.size[1]} but the source is {size[0]}×{size[1]}: "
                "resized to the source (nearest)",
                stacklevel=2,
            )
            image = image.resize(size, Image.NEAREST)
    if not (np.asarray(image) > MASK_THRESHOLD).any():
        raise InputError("the mask is empty: no pixel is above 128, so there is nothing to edit")
    return image


# ---------------------------------------------------------------------------------------------
# Geometry of the release's demo path


@dataclass(frozen=True)
class SquarePadding:
    """Where an image of `width`×`height` sits inside its padded square of side `side`."""

    width: int
    height: int

    @property
    def side(self) -> int:
        return max(self.width, self.height)

    @property
    def offset(self) -> tuple[int, int]:
        """(left, top) of the image inside the square: centred along the short side."""
        pad = (self.side - min(self.width, self.height)) // 2
        if self.width > self.height:
            return 0, pad
        if self.height > self.width:
            return pad, 0
        return 0, 0

    def crop(self, array: np.ndarray) -> np.ndarray:
        left, top = self.offset
        return array[top : top + self.height, left : left + self.width]


def pad_to_square(array: np.ndarray, fill: int) -> np.ndarray:
    """Centre `array` (H×W or H×W×C uint8) in a square filled with `fill`."""
    height, width = array.shape[:2]
    padding = SquarePadding(width, height)
    square = np.full((padding.side, padding.side) + array.shape[2:], fill, dtype=array.dtype)
    left, top = padding.offset
    square[top : top + height, left : left + width] = array
    return square


def binary_mask(mask: Image.Image | np.ndarray) -> np.ndarray:
    """H×W uint8 array, 1 where the mask is above the threshold."""
    return (np.asarray(mask) > MASK_THRESHOLD).astype(np.uint8)


def make_collage(padded_source: np.ndarray, padded_mask: np.ndarray) -> np.ndarray:
    """The padded source with every masked pixel set to black."""
    return padded_source * (1 - padded_mask)[:, :, None]


def to_model_pixels(square: np.ndarray, resolution: int) -> np.ndarray:
    """Lanczos-resized to resolution², scaled to [-1, 1], as a 1×3×R×R float32 array."""
    resized = np.asarray(Image.fromarray(square).resize((resolution, resolution), Image.LANCZOS))
    pixels = resized.astype(np.float32) / 255.0 * 2.0 - 1.0
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def to_model_mask(padded_mask: np.ndarray, resolution: int) -> np.ndarray:
    """0/1 mask at resolution² (1×1×R×R float32): Lanczos-resized 0/255 image binarised at 0.5."""
    rgb = Image.fromarray(np.repeat(padded_mask[:, :, None] * 255, 3, axis=2)).convert("L")
    resized = np.asarray(rgb.resize((resolution, resolution), Image.LANCZOS)).astype(np.float32) / 255.0
    return (resized >= 0.5).astype(np.float32)[None, None]


def to_clip_pixels(padded_reference: np.ndarray, size: int = 224) -> np.ndarray:
    """CLIP input (1×3×size×size float32): bicubic resize, /255 in float64, mean/std in float32."""
    resized = np.asarray(Image.fromarray(padded_reference).resize((size, size), Image.BICUBIC))
    pixels = (resized * (1.0 / 255.0)).astype(np.float32)
    mean = np.asarray(CLIP_MEAN, np.float32)
    std = np.asarray(CLIP_STD, np.float32)
    pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def to_depth_pixels(padded_source: np.ndarray, size: int = 518) -> np.ndarray:
    """Depth-estimator input (1×3×size×size float32), with the release's arithmetic.

    Cubic resize on uint8, ImageNet mean/std applied to 0..255 values in float64, then /255.
    """
    resized = cv2.resize(padded_source, (size, size), interpolation=cv2.INTER_CUBIC)
    normalised = (resized.astype(np.float64) - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    pixels = normalised.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def to_uint8_image(decoded: np.ndarray) -> np.ndarray:
    """VAE output in [-1, 1] (3×H×W float) → H×W×3 uint8, rounding half to even."""
    scaled = np.clip(decoded.astype(np.float32) / 2 + 0.5, 0, 1) * 255
    return np.round(scaled).astype(np.uint8).transpose(1, 2, 0)


def feather_mask(mask01: np.ndarray, passes: int = 10) -> np.ndarray:
    """Blend weights (H×W×3 uint8, 0..255): the 0/255 mask blurred 10× with a 3×3 Gaussian."""
    alpha = np.repeat((mask01 * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    for _ in range(passes):
        alpha = cv2.GaussianBlur(alpha, (3, 3), 0)
    return alpha


def paste_back(model_image: np.ndarray, source: np.ndarray, mask01: np.ndarray) -> np.ndarray:
    """Put the model's square output back into the source at its own size, feathered at the mask.

    model_image: R×R×3 uint8 (the padded square, resized); source: H×W×3 uint8; mask01: H×W {0,1}.
    """
    height, width = source.shape[:2]
    padding = SquarePadding(width, height)
    square = cv2.resize(model_image, (padding.side, padding.side), interpolation=cv2.INTER_LINEAR)
    crop = padding.crop(square)
    alpha = feather_mask(mask01).astype(np.float64) / 255.0
    blended = crop.astype(np.float64) * alpha + source.astype(np.float64) * (1 - alpha)
    return blended.astype(np.uint8)  # truncation, as the release


# ---------------------------------------------------------------------------------------------
# Writing


def save_image(
    image: Image.Image,
    path: str | os.PathLike,
    *,
    metadata: dict[str, str] | None = None,
    force: bool = False,
) -> Path:
    """Write atomically (temp file + rename); refuse to overwrite unless `force`.

    PNG files carry `metadata` as text chunks; JPEG files carry it as the EXIF description.
    """
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path} already exists (pass --force to overwrite)")
    suffix = path.suffix.lower()
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
    if suffix not in formats:
        raise InputError(f"output must end in .png, .jpg or .webp, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    if formats[suffix] == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in (metadata or {}).items():
            info.add_text(key, str(value))
        image.save(buffer, "PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        if metadata:
            exif[0x010E] = "; ".join(f"{k}={v}" for k, v in metadata.items())  # ImageDescription
        image.save(buffer, formats[suffix], quality=95, exif=exif)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(buffer.getvalue())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
