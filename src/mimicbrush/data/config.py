"""The `data:` section of a training config: dataclasses plus strict validation.

Every key is documented in docs/data.md. Unknown keys, wrong types and out-of-range values
raise `ConfigError` naming the key's full path (for example `data.video.ssim_band`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config_reader import Section
from ..errors import ConfigError

VIDEO_MASK_KINDS = ("grid", "box", "segment")
STATIC_MASK_KINDS = ("grid", "box", "segment")
SEGMENT_FORMATS = ("auto", "sa1b", "label_map", "felzenszwalb")
KEYPOINT_METHODS = ("sift", "orb")
BORDER_MODES = ("reflect", "constant")
# a source's weight when its section is given without one (the paper's 70 % video, 30 % stills);
# an absent section has weight 0
DEFAULT_VIDEO_WEIGHT = 0.7
DEFAULT_STATIC_WEIGHT = 0.3


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "mimicbrush"


@dataclass(frozen=True)
class VideoConfig:
    weight: float = 0.0
    roots: tuple[Path, ...] = ()
    manifest: Path | None = None
    ssim_band: tuple[float, float] = (0.2, 0.9)
    ssim_size: int = 128
    max_frame_gap: int | None = None
    max_tries: int = 20
    mask_kinds: Mapping[str, float] = field(default_factory=lambda: {"grid": 1.0})
    # label maps of the clips' frames: <segments>/<clip folder or video stem>/<frame stem>.png
    segments: Path | None = None


@dataclass(frozen=True)
class StaticDatasetConfig:
    images: Path | None  # None: the frame folders listed in `manifest`, one dataset each
    segments: Path | None = None  # None: look next to the images; with `manifest`, per clip below it
    format: str = "auto"
    # a clip list (as data.video.manifest): training stills and video from one list of clips
    manifest: Path | None = None


@dataclass(frozen=True)
class FelzenszwalbConfig:
    scale: float = 200.0
    sigma: float = 0.8
    min_size: int = 50
    max_side: int = 256


@dataclass(frozen=True)
class StaticConfig:
    weight: float = 0.0
    datasets: tuple[StaticDatasetConfig, ...] = ()
    felzenszwalb: FelzenszwalbConfig = FelzenszwalbConfig()
    mask_kinds: Mapping[str, float] = field(default_factory=lambda: {"segment": 1.0})


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    flip_p: float = 0.5
    rotation: float = 30.0
    perspective: float = 0.3
    perspective_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.05
    color_p: float = 0.8
    border: str = "reflect"
    # one colour jitter for both images of a pair instead of one each (the paper: one each)
    shared_color: bool = False
    # probability of one random colour remap (hue turn, channel order, inversion) applied to both
    # images of a pair: the masked content's colours can then come only from the reference, not
    # from having seen the scene before
    pair_remap_p: float = 0.0


@dataclass(frozen=True)
class MaskingConfig:
    grid_sizes: tuple[int, int] = (3, 10)
    p_matched: float = 0.75
    p_unmatched: float = 0.5
    keypoints: str = "sift"
    keypoint_resolution: int = 256
    max_keypoints: int = 1000
    ratio: float = 0.75
    box_area: tuple[float, float] = (0.05, 0.5)
    segment_area: tuple[float, float] = (0.02, 0.6)


@dataclass(frozen=True)
class DataConfig:
    resolution: int = 512
    samples_per_epoch: int = 10000
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    video: VideoConfig = VideoConfig()
    static: StaticConfig = StaticConfig()
    augment: AugmentConfig = AugmentConfig()
    masking: MaskingConfig = MaskingConfig()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, base_dir: str | Path, path: str = "data") -> DataConfig:
        """Validate a parsed `data:` mapping; relative paths are taken relative to `base_dir`."""
        section = Section(raw, path, Path(base_dir))
        config = cls(
            resolution=section.integer("resolution", cls.resolution, minimum=32, multiple_of=8),
            samples_per_epoch=section.integer("samples_per_epoch", cls.samples_per_epoch, minimum=1),
            cache_dir=section.path("cache_dir", default_cache_dir(), optional=True),
            video=_video(section.child("video")),
            static=_static(section.child("static")),
            augment=_augment(section.child("augment")),
            masking=_masking(section.child("masking")),
        )
        section.finish()
        if config.video.weight + config.static.weight <= 0:
            raise ConfigError(f"{path}: no source to draw from (give {path}.video or {path}.static a weight > 0)")
        return config


def _video(section: Section) -> VideoConfig:
    defaults = VideoConfig()
    config = VideoConfig(
        weight=section.number("weight", DEFAULT_VIDEO_WEIGHT if section.given else 0.0, minimum=0.0),
        roots=section.path_list("roots"),
        manifest=section.path("manifest", None, optional=True),
        ssim_band=section.number_pair("ssim_band", defaults.ssim_band, minimum=-1.0, maximum=1.0),
        ssim_size=section.integer("ssim_size", defaults.ssim_size, minimum=16),
        max_frame_gap=section.integer("max_frame_gap", None, minimum=1, optional=True),
        max_tries=section.integer("max_tries", defaults.max_tries, minimum=1),
        mask_kinds=section.weights("mask_kinds", defaults.mask_kinds, VIDEO_MASK_KINDS),
        segments=section.path("segments", None, optional=True),
    )
    section.finish()
    if config.weight > 0 and not config.roots and config.manifest is None:
        raise ConfigError(f"{section.name}: weight is {config.weight:g} but neither roots nor manifest is given")
    if config.mask_kinds.get("segment", 0) > 0 and config.segments is None:
        raise ConfigError(f"{section.name}.mask_kinds: segment masks on video frames need {section.name}.segments "
                          "(a folder of label maps per clip)")
    if config.segments is not None and not config.segments.is_dir():
        raise ConfigError(f"{section.name}.segments: folder not found: {config.segments}")
    return config


def _static(section: Section) -> StaticConfig:
    datasets = []
    for index, item in enumerate(section.items("datasets")):
        entry = Section(item, f"{section.name}.datasets[{index}]", section.base_dir)
        dataset = StaticDatasetConfig(
            images=entry.path("images", None, optional=True),
            segments=entry.path("segments", None, optional=True),
            format=entry.choice("format", "auto", SEGMENT_FORMATS),
            manifest=entry.path("manifest", None, optional=True),
        )
        entry.finish()
        if (dataset.images is None) == (dataset.manifest is None):
            raise ConfigError(f"{entry.name}: give either images (a folder) or manifest (a clip list), not "
                              f"{'both' if dataset.images else 'neither'}")
        datasets.append(dataset)
    config = StaticConfig(
        weight=section.number("weight", DEFAULT_STATIC_WEIGHT if section.given else 0.0, minimum=0.0),
        datasets=tuple(datasets),
        felzenszwalb=_felzenszwalb(section.child("felzenszwalb")),
        mask_kinds=section.weights("mask_kinds", StaticConfig().mask_kinds, STATIC_MASK_KINDS),
    )
    section.finish()
    if config.weight > 0 and not config.datasets:
        raise ConfigError(f"{section.name}: weight is {config.weight:g} but no datasets are given")
    return config


def _felzenszwalb(section: Section) -> FelzenszwalbConfig:
    defaults = FelzenszwalbConfig()
    config = FelzenszwalbConfig(
        scale=section.number("scale", defaults.scale, minimum=1e-6),
        sigma=section.number("sigma", defaults.sigma, minimum=0.0),
        min_size=section.integer("min_size", defaults.min_size, minimum=1),
        max_side=section.integer("max_side", defaults.max_side, minimum=16),
    )
    section.finish()
    return config


def _augment(section: Section) -> AugmentConfig:
    defaults = AugmentConfig()
    config = AugmentConfig(
        crop_scale=section.number_pair("crop_scale", defaults.crop_scale, minimum=1e-3, maximum=1.0),
        crop_ratio=section.number_pair("crop_ratio", defaults.crop_ratio, minimum=0.1, maximum=10.0),
        flip_p=section.number("flip_p", defaults.flip_p, minimum=0.0, maximum=1.0),
        rotation=section.number("rotation", defaults.rotation, minimum=0.0, maximum=180.0),
        perspective=section.number("perspective", defaults.perspective, minimum=0.0, maximum=0.9),
        perspective_p=section.number("perspective_p", defaults.perspective_p, minimum=0.0, maximum=1.0),
        brightness=section.number("brightness", defaults.brightness, minimum=0.0, maximum=1.0),
        contrast=section.number("contrast", defaults.contrast, minimum=0.0, maximum=1.0),
        saturation=section.number("saturation", defaults.saturation, minimum=0.0, maximum=1.0),
        hue=section.number("hue", defaults.hue, minimum=0.0, maximum=0.5),
        color_p=section.number("color_p", defaults.color_p, minimum=0.0, maximum=1.0),
        border=section.choice("border", defaults.border, BORDER_MODES),
        shared_color=section.boolean("shared_color", defaults.shared_color),
        pair_remap_p=section.number("pair_remap_p", defaults.pair_remap_p, minimum=0.0, maximum=1.0),
    )
    section.finish()
    return config


def _masking(section: Section) -> MaskingConfig:
    defaults = MaskingConfig()
    config = MaskingConfig(
        grid_sizes=section.integer_pair("grid_sizes", defaults.grid_sizes, minimum=2),  # 1x1 cannot be partly masked
        p_matched=section.number("p_matched", defaults.p_matched, minimum=0.0, maximum=1.0),
        p_unmatched=section.number("p_unmatched", defaults.p_unmatched, minimum=0.0, maximum=1.0),
        keypoints=section.choice("keypoints", defaults.keypoints, KEYPOINT_METHODS),
        keypoint_resolution=section.integer("keypoint_resolution", defaults.keypoint_resolution, minimum=32),
        max_keypoints=section.integer("max_keypoints", defaults.max_keypoints, minimum=8),
        ratio=section.number("ratio", defaults.ratio, minimum=0.01, maximum=1.0),
        box_area=section.number_pair("box_area", defaults.box_area, minimum=1e-3, maximum=0.99),
        segment_area=section.number_pair("segment_area", defaults.segment_area, minimum=1e-4, maximum=0.99),
    )
    section.finish()
    return config
