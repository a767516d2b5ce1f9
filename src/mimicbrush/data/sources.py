"""What a `data:` section draws from, as a list of folders and files: the record a trained model
carries of its data (training/export.py), and what licence checks read."""

from __future__ import annotations

from pathlib import Path

from .config import DataConfig
from .static import expand_manifest
from .video import FrameFolderClip, list_clips


def data_sources(config: DataConfig, where: str = "data") -> list[Path]:
    """Every clip (frame folder or video file) and still-image folder with a weight > 0, in the
    order the dataset lists them, each once."""
    sources: list[Path] = []
    if config.video.weight > 0:
        for clip in list_clips(config.video.roots, config.video.manifest, f"{where}.video"):
            sources.append(clip.folder if isinstance(clip, FrameFolderClip) else clip.path)
    if config.static.weight > 0:
        for index, entry in enumerate(config.static.datasets):
            sources += [dataset.images for dataset in expand_manifest(entry, f"{where}.static.datasets[{index}]")]
    return list(dict.fromkeys(source.resolve() for source in sources))
