"""Image and mask I/O and the geometry of an edit: pad to square, collage, model inputs, paste-back.

Pure functions on PIL images and numpy arrays, no models. The arithmetic follows the release's
demo path exactly (see ../shared/parity/README.md, "Facts"), since the parity kit checks it.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from .errors import InputError
from .fileio import write_atomic

MASK_THRESHOLD = 128  # a mask pixel > 128 means "edit"
MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb limit (about 8000 x 8000), checked before decoding
MAX_IMAGE_SIDE = 12_000  # the edit pads to a square of the longest side: 12,000² × 3 bytes = 432 MB
# Formats photos and masks come in (JPEG includes MPO, phone photos with extra frames). Pillow's
# other plugins (EPS runs Ghostscript, PSD, FITS, …) are attack surface a photo editor does not need.
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EXIF orientation -> the transpose that shows the stored pixels as displayed (as Pillow's
# ImageOps.exif_transpose); 5-8 swap width and height
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SIDE_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
EXIF_ORIENTATION_TAG = 0x0112


# ---------------------------------------------------------------------------------------------
# Loading


def check_size(size: tuple[int, int], what: str) -> None:
    """Refuse empty images, decompression bombs and strips whose padded square would not fit."""
    width, height = size
    if width < 1 or height < 1:
        raise InputError(f"{what} has no pixels ({width}×{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"{what} is too large: {width}×{height} = {width * height:,} pixels, over the "
            f"{MAX_IMAGE_PIXELS:,}-pixel limit (a guard against decompression bombs); downscale it first"
        )
    if max(width, height) > MAX_IMAGE_SIDE:
        raise InputError(
            f"{what} is too long: {width}×{height}, over the {MAX_IMAGE_SIDE:,}-pixel limit on the longest "
            "side (the edit pads it to a square of that side); crop or downscale it first"
        )


def open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open an image file fully, or raise InputError naming the file.

    EXIF rotation is applied; of an animation or multi-page file the first frame is returned (with
    a notice); the mode is one of `normalise_mode`'s.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} is a folder, not an image file: {path}")
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{what} is an empty file: {path}")
    try:
        with warnings.catch_warnings():
            # our own, lower limit is checked below with a clearer message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image_file = Image.open(path, formats=SUPPORTED_FORMATS)
    except PermissionError:
        raise InputError(f"{what} cannot be read: permission denied: {path}") from None
    except Image.UnidentifiedImageError:
        raise InputError(
            f"{what} cannot be read: {path} is not a {', '.join(SUPPORTED_FORMATS[:-1])} or "
            f"{SUPPORTED_FORMATS[-1]} image"
        ) from None
    except Image.DecompressionBombError as error:  # far over our limit: Pillow refuses at the header
        raise InputError(
            f"{what} {path} is too large, over the {MAX_IMAGE_PIXELS:,}-pixel limit (a guard against "
            f"decompression bombs): {error}"
        ) from None
    except Exception as error:  # Pillow's parsers raise many types on malformed headers
        raise InputError(
            f"{what} cannot be read: {path} is truncated or corrupt ({type(error).__name__}: {error})"
        ) from None
    with image_file:
        check_size(image_file.size, f"{what} {path}")
        try:
            # MPO (phone photos with a depth or preview frame) is exempt: its first frame is the photo
            several_frames = getattr(image_file, "is_animated", False) and image_file.format != "MPO"
            image_file.load()
            image = normalise_mode(ImageOps.exif_transpose(image_file))
        except InputError as error:
            raise InputError(f"{what} {path}: {error}") from None
        except Exception as error:  # truncated data, bad EXIF, decoder errors: all properties of the file
            raise InputError(
                f"{what} cannot be read: {path} is truncated or corrupt ({type(error).__name__}: {error})"
            ) from None
    if several_frames:
        warnings.warn(f"{what} {path} has several frames (animation or pages): using the first", stacklevel=2)
    return image


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """L image from a 16/32-bit integer or float image: 16-bit spans 0..65535, float 0..1."""
    array = np.asarray(image, dtype=np.float64)
    array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    if image.mode.startswith("I;16"):
        peak = 65535.0
    elif image.mode == "F":
        peak = 1.0 if array.size and array.min() >= 0 and array.max() <= 1 else 255.0
    else:  # "I" (32-bit): holds 8- or 16-bit data depending on the writer
        peak = 65535.0 if array.size and array.max() > 255 else 255.0
    return Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def normalise_mode(image: Image.Image) -> Image.Image:
    """The same picture in one of L, LA, RGB, RGBA or P (palette without transparency).

    16-bit, 32-bit and float images are scaled to 8 bits; CMYK, YCbCr, LAB and HSV become RGB
    (no colour management); transparency is kept as an alpha channel.
    """
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode == "P":
        return image.convert("RGBA") if "transparency" in image.info else image
    if mode.startswith("I") or mode == "F":
        return _scale_to_8bit(image)
    if mode == "1":
        return image.convert("L")
    if mode == "La":  # premultiplied alpha: Pillow converts it to LA only
        return image.convert("LA")
    if mode in ("PA", "RGBa"):
        return image.convert("RGBA")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    raise InputError(f"colour mode {mode!r} is not supported")


def has_transparency(image: Image.Image) -> bool:
    """Whether any pixel is less than fully opaque."""
    image = normalise_mode(image)
    return image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema()[0] < 255


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB view of any PIL mode; transparency is composited over `background` (not dropped)."""
    image = normalise_mode(image)
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: str | os.PathLike | Image.Image | np.ndarray, what: str = "image") -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an H×W, H×W×3 or H×W×4 uint8 array.

    Transparent pixels are composited over white, the colour the edit pads with, with a notice.
    """
    if isinstance(source, Image.Image):
        check_size(source.size, what)
        image = normalise_mode(source)
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or not (source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (3, 4))):
            raise InputError(f"{what} array must be H×W, H×W×3 or H×W×4 uint8, got {source.shape} {source.dtype}")
        check_size((source.shape[1], source.shape[0]), what)
        image = Image.fromarray(source)
    else:
        image = open_image(source, what)
    if has_transparency(image):
        warnings.warn(f"{what} has transparent pixels: composited over white", stacklevel=2)
    return to_rgb(image)


def parse_box(text: str, size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """`x0,y0,x1,y1` (x0/y0 inclusive, x1/y1 exclusive, as PIL's crop), checked against `size`."""
    try:
        x0, y0, x1, y1 = (int(round(float(part))) for part in text.split(","))
    except (ValueError, OverflowError):  # OverflowError: "inf"
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
    mask = normalise_mode(mask)
    if has_transparency(mask):
        return mask.getchannel("A")
    return mask.convert("L")


def mask_from_array(array: np.ndarray) -> Image.Image:
    """L image from an H×W mask array: bool, uint8 (0..255) or float (0..1)."""
    if array.ndim != 2:
        raise InputError(f"mask array must be H×W, got shape {array.shape}")
    if array.dtype == bool:
        return Image.fromarray(array.astype(np.uint8) * 255, "L")
    if array.dtype == np.uint8:
        return Image.fromarray(array, "L")
    if np.issubdtype(array.dtype, np.floating):
        scaled = np.nan_to_num(array.astype(np.float64), nan=0.0) * 255.0 + 0.5
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
    raise InputError(f"mask array must be bool, uint8 (0..255) or float (0..1), got {array.dtype}")


def same_aspect(size: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether `size` is `target` scaled, up to the rounding of a downscale (half a pixel a side)."""
    (width, height), (target_width, target_height) = size, target
    return abs(width * target_height - height * target_width) <= (target_width + target_height) / 2


def exif_orientation(image) -> int:
    """The EXIF orientation (1-8) of an image file given by its path; 1 for a PIL image or an array
    (their pixels are taken as displayed: load_image applies EXIF only when it opens a file), for a
    box, and for a file without a valid tag."""
    if not isinstance(image, (str, os.PathLike)) or (isinstance(image, str) and looks_like_box(image)):
        return 1
    try:
        with Image.open(image, formats=SUPPORTED_FORMATS) as image_file:
            orientation = image_file.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # unreadable files are reported by load_image, with a clear message
        return 1
    return orientation if orientation in EXIF_TRANSPOSE else 1


def load_source_and_mask(source, mask) -> tuple[Image.Image, Image.Image]:
    """The source (RGB, as displayed) and its mask (load_mask), the mask following the source's
    EXIF orientation where it was painted on the stored pixels (see load_mask)."""
    image = load_image(source, "source image")
    return image, load_mask(mask, image.size, source_orientation=exif_orientation(source))


def load_mask(
    mask: str | os.PathLike | Image.Image | np.ndarray,
    size: tuple[int, int],
    source_orientation: int = 1,
) -> Image.Image:
    """An L-mode mask at `size` (> 128 = edit; soft values are kept) from a file, image, array or box.

    A mask of another size but the source's aspect ratio is resized to the source (nearest) with a
    notice, since users often paint masks on a downscaled copy; one of another aspect ratio is
    refused, since stretching it would move the edit. An empty mask is an error (nothing to edit);
    a full one is allowed, with a notice.

    `size` is the source as displayed. When the source's EXIF orientation swaps its sides (5-8,
    `source_orientation`) and the mask has the aspect ratio of the source's stored pixels (not of
    the displayed ones), the mask was painted by a tool that ignores EXIF: it gets the same EXIF
    transform, with a notice, then is resized as above if needed. With orientations 2-4, and when
    the source is square, the stored and displayed shapes agree and the mask is taken as displayed.
    """
    if isinstance(mask, str) and looks_like_box(mask):
        x0, y0, x1, y1 = parse_box(mask, size)
        array = np.zeros((size[1], size[0]), np.uint8)
        array[y0:y1, x0:x1] = 255
        image = Image.fromarray(array, "L")
    else:
        if isinstance(mask, np.ndarray):
            image = mask_from_array(mask)
        elif isinstance(mask, Image.Image):
            image = mask_to_luminance(mask)
        else:
            image = mask_to_luminance(open_image(mask, "mask"))
        stored_size = (size[1], size[0])
        if (source_orientation in SIDE_SWAPPING_ORIENTATIONS and not same_aspect(image.size, size)
                and same_aspect(image.size, stored_size)):
            warnings.warn(
                f"mask is {image.size[0]}×{image.size[1]}, the source's stored orientation (EXIF orientation "
                f"{source_orientation} displays it as {size[0]}×{size[1]}): rotated as the source is",
                stacklevel=2,
            )
            image = image.transpose(EXIF_TRANSPOSE[source_orientation])
        if image.size != tuple(size):
            width, height = image.size
            if not same_aspect(image.size, size):
                raise InputError(
                    f"mask is {width}×{height} but the source is {size[0]}×{size[1]}: another aspect ratio, "
                    "so it cannot be resized without moving the edit (is it the mask of another image, "
                    "or rotated by EXIF differently?)"
                )
            warnings.warn(
                f"mask is {width}×{height} but the source is {size[0]}×{size[1]}: resized to the source (nearest)",
                stacklevel=2,
            )
            image = image.resize(size, Image.NEAREST)
    selected = np.asarray(image) > MASK_THRESHOLD
    if not selected.any():
        raise InputError("the mask is empty: no pixel is above 128, so there is nothing to edit")
    if selected.all():
        warnings.warn("the mask covers the whole source: nothing of the source is kept", stacklevel=2)
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
    """Write atomically (temp file, fsync, then rename); refuse to overwrite unless `force`.

    PNG files carry `metadata` as text chunks; JPEG files carry it as the EXIF description. A
    reader never sees a half-written file, and a crash leaves at most a hidden `.NAME.*.tmp`.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name ending in .png, .jpg or .webp")
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
    return write_atomic(path, buffer.getvalue(), force=force)
