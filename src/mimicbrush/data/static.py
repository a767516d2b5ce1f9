"""Static image sources: listing images with their segmentation files, and loading them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .config import FelzenszwalbConfig, StaticDatasetConfig
from .images import IMAGE_EXTENSIONS, read_rgb
from .segments import Segments, felzenszwalb_segments, read_label_map_segments, read_sa1b
from .video import FrameFolderClip, read_manifest


@dataclass(frozen=True)
class StaticImage:
    image: Path
    segments: Path | None  # None: segments come from felzenszwalb
    format: str  # "sa1b" | "label_map" | "felzenszwalb"


def expand_manifest(dataset: StaticDatasetConfig, where: str) -> list[StaticDatasetConfig]:
    """A dataset given as a clip list becomes one dataset per listed frame folder, its label maps
    in `<segments>/<clip folder name>/` (DAVIS's layout, as data.video.segments) where that folder
    exists; a dataset given as a folder is returned as it is."""
    if dataset.manifest is None:
        return [dataset]
    datasets = []
    for clip in read_manifest(dataset.manifest, f"{where}.manifest"):
        if not isinstance(clip, FrameFolderClip):
            raise ConfigError(f"{where}.manifest: stills come from frame folders, not video files ({clip.key})")
        segments = None if dataset.segments is None else dataset.segments / clip.folder.name
        datasets.append(StaticDatasetConfig(images=clip.folder, format=dataset.format,
                                            segments=segments if segments is not None and segments.is_dir() else None))
    return datasets


def list_static_images(dataset: StaticDatasetConfig, where: str) -> list[StaticImage]:
    """Images under `dataset.images` (recursively, sorted) paired with their segmentation files.

    A segmentation file has the image's relative path with `.json` (SA-1B) or `.png` (label map)
    in `dataset.segments` (default: the image folder itself). With format `auto` each image uses
    whichever exists, JSON first, and felzenszwalb when neither does; with `sa1b` or `label_map`
    images lacking that file are left out.
    """
    if not dataset.images.is_dir():
        raise ConfigError(f"{where}.images: folder not found: {dataset.images}")
    if dataset.segments is not None and not dataset.segments.is_dir():
        raise ConfigError(f"{where}.segments: folder not found: {dataset.segments}")
    images = sorted(p for p in dataset.images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if dataset.segments is None:
        # label maps stored next to their images (photo.jpg + photo.png) are not images themselves
        stems = {p.with_suffix("") for p in images if p.suffix.lower() != ".png"}
        images = [p for p in images if not (p.suffix.lower() == ".png" and p.with_suffix("") in stems)]
    items = (_with_segments(image, dataset) for image in images)
    return [item for item in items if item is not None]


_FORMATS_TRIED = {"auto": ("sa1b", "label_map"), "sa1b": ("sa1b",), "label_map": ("label_map",), "felzenszwalb": ()}
_SUFFIXES = {"sa1b": ".json", "label_map": ".png"}


def _with_segments(image: Path, dataset: StaticDatasetConfig) -> StaticImage | None:
    stem = (dataset.segments or dataset.images) / image.relative_to(dataset.images)
    for segment_format in _FORMATS_TRIED[dataset.format]:
        candidate = stem.with_suffix(_SUFFIXES[segment_format])
        if candidate != image and candidate.is_file():
            return StaticImage(image, candidate, segment_format)
    if dataset.format in ("auto", "felzenszwalb"):
        return StaticImage(image, None, "felzenszwalb")
    return None


def read_static_image(item: StaticImage) -> np.ndarray:
    """The RGB image; images with segmentation files keep their raw pixel grid (no EXIF turn)."""
    return read_rgb(item.image, apply_exif_orientation=item.segments is None)


def load_segments(item: StaticImage, image: np.ndarray, felzenszwalb: FelzenszwalbConfig) -> Segments:
    if item.format == "sa1b":
        return read_sa1b(item.segments, image.shape[:2])
    if item.format == "label_map":
        return read_label_map_segments(item.segments, image.shape[:2])
    return felzenszwalb_segments(image, felzenszwalb)
