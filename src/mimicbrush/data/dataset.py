"""The training pair dataset: a weighted mixture of video frame pairs and augmented stills.

Every sample is a pure function of (seed, epoch, index): all randomness comes from a numpy
Generator seeded with those three numbers, so runs and DataLoader worker counts agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, InputError
from .augment import Augmented, augment, pair_colour, resize_homography, shrink, warp_points
from .config import DataConfig
from .frame_pairs import FramePairSampler
from .keypoints import Matches, match_keypoints
from .masking import box_mask, grid_mask, segment_mask
from .ssim import SsimCache, cache_file
from .segments import read_label_map_segments
from .static import StaticImage, expand_manifest, list_static_images, load_segments, read_static_image
from .video import list_clips

_SAMPLE_ATTEMPTS = 3  # whole-sample redraws when the video source finds no pair in its band


@dataclass(frozen=True)
class TrainingPair:
    """One sample with everything the preview shows; images are S×S."""

    source: np.ndarray  # S×S×3 uint8, augmented source (not collaged)
    reference: np.ndarray  # S×S×3 uint8, augmented reference
    mask: np.ndarray  # S×S uint8, 1 = region to repaint
    origin: str  # "video" | "static"
    description: str  # clip and frames, or image path
    mask_kind: str  # "grid" | "box" | "segment"
    source_homography: np.ndarray  # 3×3, original source pixels -> source canvas
    reference_homography: np.ndarray  # 3×3, original reference pixels -> reference canvas
    matches: Matches | None  # computed for grid masks, and always with `with_debug`
    matched_cells: np.ndarray | None  # N×N bool for grid masks
    ssim: float | None  # video pairs only


@dataclass(frozen=True)
class _Draw:
    """The two images a sample starts from, before augmentation."""

    source: np.ndarray
    reference: np.ndarray
    description: str
    static_item: StaticImage | None = None
    ssim: float | None = None
    label_map: Path | None = None  # the video source frame's label map, when the clips have them


class PairDataset(Dataset):
    """Map-style dataset of `samples_per_epoch` items; call `set_epoch` before each epoch.

    With persistent DataLoader workers the epoch set in the main process does not reach the
    workers; keep `persistent_workers=False` (the default) or call `sample_pair(i, epoch=e)`.
    """

    def __init__(self, config: DataConfig, seed: int, frame_pairs: FramePairSampler | None,
                 static_images: list[StaticImage]):
        self.config = config
        self.seed = seed
        self.epoch = 0
        self.frame_pairs = frame_pairs
        self.static_images = static_images
        total = config.video.weight + config.static.weight
        self.video_share = config.video.weight / total

    def __len__(self) -> int:
        return self.config.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must not be negative, got {epoch}")
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pair = self.sample_pair(index)
        return {
            "source": to_unit_range(pair.source),
            "reference": to_unit_range(pair.reference),
            "mask": torch.from_numpy(pair.mask).float()[None],
            "source_uint8": torch.from_numpy(pair.source),  # S×S×3, for the depth estimator
            # where each source pixel lies in the reference: known exactly for a still (one image
            # augmented twice), unknown for video frames (all zeros); computed in float64, made float32
            # before it is a tensor (MPS has no float64)
            "source_to_reference": torch.from_numpy(source_to_reference(pair).astype(np.float32)),
        }

    def sample_pair(self, index: int, *, epoch: int | None = None, with_debug: bool = False) -> TrainingPair:
        """The sample for (seed, epoch, index); `with_debug` also matches keypoints for masks
        that do not need them, so the preview can draw them."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, index])
        draw = self._draw(rng)
        size = self.config.resolution
        # augment on a canvas large enough for keypoints to be found, then shrink to S
        work_size = max(size, self.config.masking.keypoint_resolution)
        augment_config = self.config.augment
        own_colour = not augment_config.shared_color
        source_work = augment(draw.source, work_size, augment_config, rng, colour=own_colour)
        reference_work = augment(draw.reference, work_size, augment_config, rng, colour=own_colour)
        if augment_config.shared_color or augment_config.pair_remap_p > 0:
            images = pair_colour([source_work.image, reference_work.image], augment_config, rng)
            source_work = Augmented(images[0], source_work.homography)
            reference_work = Augmented(images[1], reference_work.homography)
        source, reference = shrink(source_work, size), shrink(reference_work, size)
        mask_kinds = self.config.static.mask_kinds if draw.static_item else self.config.video.mask_kinds
        kind = _choose(mask_kinds, rng)
        matches = self._match(source_work.image, reference_work.image) if kind == "grid" or with_debug else None
        mask = None
        if kind == "box":
            mask = box_mask(size, self.config.masking, rng)
        elif kind == "segment":
            segments = self._segments(draw)
            if segments is not None:
                mask = segment_mask(segments, source.homography, size, self.config.masking, rng)
        if mask is None:  # a grid was asked for, or no segment fits the area band on this crop
            if matches is None:
                matches = self._match(source_work.image, reference_work.image)
            mask = grid_mask(size, matches.source, self.config.masking, rng)
        return TrainingPair(
            source=source.image, reference=reference.image, mask=mask.mask,
            origin="static" if draw.static_item else "video", description=draw.description,
            mask_kind=mask.kind, source_homography=source.homography,
            reference_homography=reference.homography, matches=matches,
            matched_cells=mask.matched_cells, ssim=draw.ssim)

    def _draw(self, rng: np.random.Generator) -> _Draw:
        for _ in range(_SAMPLE_ATTEMPTS):
            from_video = rng.random() < self.video_share
            draw = self._draw_video(rng) if from_video else self._draw_static(rng)
            if draw is not None:
                return draw
        low, high = self.config.video.ssim_band
        raise InputError(
            f"data.video: no frame pair with SSIM in [{low:g}, {high:g}] after "
            f"{_SAMPLE_ATTEMPTS * self.config.video.max_tries} tries; widen data.video.ssim_band "
            "or check the clips")

    def _draw_video(self, rng: np.random.Generator) -> _Draw | None:
        pair = self.frame_pairs.sample(rng)
        if pair is None:
            return None
        description = f"{pair.clip.key} frames {pair.source_index}->{pair.reference_index}"
        segments = self.config.video.segments
        label_map = pair.clip.label_map_path(segments, pair.source_index) if segments is not None else None
        return _Draw(pair.source, pair.reference, description, ssim=pair.ssim, label_map=label_map)

    def _segments(self, draw: _Draw):
        """The source's segments: the still's, or the video frame's label map (None: the frame
        has none, and a grid mask is used instead)."""
        if draw.static_item is not None:
            return load_segments(draw.static_item, draw.source, self.config.static.felzenszwalb)
        if draw.label_map is None or not draw.label_map.is_file():
            return None
        return read_label_map_segments(draw.label_map, draw.source.shape[:2])

    def _draw_static(self, rng: np.random.Generator) -> _Draw:
        item = self.static_images[rng.integers(len(self.static_images))]
        image = read_static_image(item)
        return _Draw(image, image, f"{item.image} ({item.format})", static_item=item)

    def _match(self, source: np.ndarray, reference: np.ndarray) -> Matches:
        """Matches between the working canvases, in S×S canvas coordinates."""
        masking = self.config.masking
        matches = match_keypoints(source, reference, method=masking.keypoints,
                                  max_keypoints=masking.max_keypoints, ratio=masking.ratio)
        scale = self.config.resolution / source.shape[0]
        to_canvas = resize_homography(scale, scale)
        return Matches(warp_points(matches.source, to_canvas).astype(np.float32),
                       warp_points(matches.reference, to_canvas).astype(np.float32))


def source_to_reference(pair: TrainingPair) -> np.ndarray:
    """The 3×3 map from source canvas pixels to reference canvas pixels of a still pair, or
    all zeros for a video pair (no dense correspondence is known)."""
    if pair.origin != "static":
        return np.zeros((3, 3))
    return pair.reference_homography @ np.linalg.inv(pair.source_homography)


def build_dataset(config: DataConfig, seed: int) -> PairDataset:
    """List the configured clips and images and set up the SSIM cache.

    Raises ConfigError naming the key when a folder is missing or a source with a weight has
    nothing in it.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")
    frame_pairs = None
    if config.video.weight > 0:
        clips = list_clips(config.video.roots, config.video.manifest, "data.video")
        if not clips:
            places = ", ".join(str(p) for p in (*config.video.roots, config.video.manifest) if p)
            raise ConfigError(f"data.video: no clips (folders of 2+ frames or video files) in {places}")
        frame_pairs = FramePairSampler(clips, config.video, SsimCache(_ssim_cache_path(config)))
    static_images: list[StaticImage] = []
    if config.static.weight > 0:
        for index, entry in enumerate(config.static.datasets):
            where = f"data.static.datasets[{index}]"
            for dataset in expand_manifest(entry, where):
                static_images += list_static_images(dataset, where)
        if not static_images:
            raise ConfigError("data.static: no usable images in any of data.static.datasets")
    return PairDataset(config, seed, frame_pairs, static_images)


def _ssim_cache_path(config: DataConfig) -> Path | None:
    if config.cache_dir is None:
        return None
    path = cache_file(config.cache_dir, config.video.ssim_size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"data.cache_dir: cannot create {path.parent}: {error.strerror}") from error
    return path


def _choose(weights: dict[str, float], rng: np.random.Generator) -> str:
    kinds = list(weights)
    probabilities = np.array([weights[kind] for kind in kinds])
    return kinds[rng.choice(len(kinds), p=probabilities / probabilities.sum())]


def to_unit_range(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 -> 3×H×W float32 in [-1, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div(127.5).sub(1.0)
