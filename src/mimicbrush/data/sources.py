"""What a `data:` section draws from, as a list of folders and files: the record a trained model
carries of its data (training/export.py), and what licence checks read."""

from __future__ import annotations

from pathlib import Path

from .config import DataConfig
from .static import expand_manifest, list_static_images
from .video import FrameFolderClip, list_clips


def data_sources(config: DataConfig, where: str = "data") -> list[Path]:
    """Every clip (frame folder or video file) and every folder of stills drawn from (a still from
    a clip's frame folder counts as that clip), for sources with a weight > 0, in the dataset's
    order, each once, resolved."""
    sources: list[Path] = []
    if config.video.weight > 0:
        for clip in list_clips(config.video.roots, config.video.manifest, f"{where}.video"):
            sources.append(clip.folder if isinstance(clip, FrameFolderClip) else clip.path)
    if config.static.weight > 0:
        for index, entry in enumerate(config.static.datasets):
            entry_where = f"{where}.static.datasets[{index}]"
            for dataset in expand_manifest(entry, entry_where):
                sources += [item.image.parent for item in list_static_images(dataset, entry_where)]
    return list(dict.fromkeys(source.resolve() for source in sources))
