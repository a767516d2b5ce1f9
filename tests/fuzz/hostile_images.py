"""Hostile and unusual image files, as bytes: the catalogue the reliability tests check one by one
and the seed corpus the fuzzers mutate (docs/reliability.md)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image

SIZE = (24, 16)  # width, height of the ordinary images below


def _encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def _noise(mode: str = "RGB", size: tuple[int, int] = SIZE, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width`×`height` RGB but holds almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def animated_gif() -> bytes:
    frames = [Image.new("RGB", SIZE, colour) for colour in ((255, 0, 0), (0, 0, 255))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def gray16_png() -> bytes:
    ramp = np.linspace(0, 65535, SIZE[0] * SIZE[1]).astype(np.uint16).reshape(SIZE[1], SIZE[0])
    return _encode(Image.fromarray(ramp), "PNG")


def _rgb16_png() -> bytes:
    """16 bits a channel (Pillow keeps the high byte): made with OpenCV, as Pillow cannot write it."""
    import cv2

    ramp = np.linspace(0, 65535, SIZE[0] * SIZE[1] * 3).astype(np.uint16).reshape(SIZE[1], SIZE[0], 3)
    ok, encoded = cv2.imencode(".png", ramp)
    assert ok
    return encoded.tobytes()


def exif_rotated_jpeg() -> bytes:
    """Stored landscape, EXIF orientation 6 (rotate 90° clockwise to display): displays as portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_noise(), "JPEG", exif=exif, quality=95)


def transparent_png(mode: str) -> bytes:
    rgba = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, SIZE[0] // 2 :, 3] = 255
    return _encode(Image.fromarray(rgba, "RGBA").convert(mode), "PNG")


def palette_with_transparency() -> bytes:
    image = _noise("P")
    return _encode(image, "PNG", transparency=0)


def cmyk_jpeg() -> bytes:
    return _encode(Image.new("CMYK", SIZE, (0, 255, 255, 0)), "JPEG", quality=95)  # pure red


# Found by tests/fuzz/fuzz_loaders.py: a valid first frame, then a frame cut short, on which
# Pillow's `is_animated` raised IndexError before open_image guarded it.
GIF_BROKEN_SECOND_FRAME = base64.b64decode(
    "R0lGODdhGAAQAIEAAP8AAAAAAAAAAAAAACwAAAAAGAAQAAAIIgABCBxIsKDBgwgTKlzIsKHDhxAjSpxIsaLFixgzatxoMCAAIfkEAQAA"
    "AQAsAAAAABgAEKenp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6en"
    "p6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enAIEAAP8AAAAAAAAAAAAIIgABCBxIsKDBgwgTAQDIsKHDhxAjSpxI"
    "saLFixgzatxoMCAAOw=="
)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def scrambled(data: bytes, seed: int = 1) -> bytes:
    """The first 64 bytes (signature and header) kept, a stretch after them overwritten with noise."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    return data[:64] + noise + data[128:]


def hostile_files() -> dict[str, bytes]:
    """name → file contents (the name's extension is the file's claimed type)."""
    png = _encode(_noise(), "PNG")
    jpeg = _encode(_noise(), "JPEG", quality=90)
    return {
        "truncated.png": truncated(png),
        "truncated.jpg": truncated(jpeg),
        "scrambled.png": scrambled(png),
        "zero-byte.png": b"",
        "text.png": b"this is not an image\n",
        "document.pdf": b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n",
        "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "postscript.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "animated.gif": animated_gif(),
        "gif-broken-second-frame.gif": GIF_BROKEN_SECOND_FRAME,
        "gray16.png": gray16_png(),
        "rgb16.png": _rgb16_png(),
        "cmyk.jpg": cmyk_jpeg(),
        "palette.png": _encode(_noise("P"), "PNG"),
        "palette-transparent.png": palette_with_transparency(),
        "la.png": transparent_png("LA"),
        "rgba.png": transparent_png("RGBA"),
        "exif-rotated.jpg": exif_rotated_jpeg(),
        "bomb-100000.png": png_header_only(100_000, 100_000),
        "bomb-9000.png": png_header_only(9_000, 9_000),
        "strip-1x20000.png": png_header_only(1, 20_000),
        "zero-width.png": png_header_only(0, 16),
    }


def seed_corpus() -> dict[str, bytes]:
    """Small valid files in every supported format and mode, plus the hostile ones: the fuzzers'
    starting points (mutating a valid file reaches deeper into a decoder than random bytes)."""
    seeds = {
        f"plain-{mode.lower()}.png": _encode(_noise(mode), "PNG") for mode in ("RGB", "RGBA", "L", "LA", "P", "1")
    }
    seeds.update({
        "plain.jpg": _encode(_noise(), "JPEG"),
        "progressive.jpg": _encode(_noise(), "JPEG", progressive=True),
        "plain.webp": _encode(_noise("RGBA"), "WEBP"),
        "plain.bmp": _encode(_noise(), "BMP"),
        "plain.tiff": _encode(_noise(), "TIFF"),
        "float.tiff": _encode(Image.fromarray(np.linspace(0, 1, 384, dtype=np.float32).reshape(16, 24)), "TIFF"),
        "pages.tiff": _encode(_noise(), "TIFF", save_all=True, append_images=[_noise(seed=1)]),
        "mask.png": _encode(Image.fromarray((np.arange(384).reshape(16, 24) % 256).astype(np.uint8)), "PNG"),
    })
    seeds.update(hostile_files())
    return seeds
