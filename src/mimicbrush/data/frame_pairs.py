"""Drawing two frames of one clip whose SSIM lies inside the configured band."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ssim
from .config import VideoConfig
from .video import Clip


@dataclass(frozen=True)
class FramePair:
    clip: Clip
    source_index: int
    reference_index: int
    source: np.ndarray  # RGB uint8
    reference: np.ndarray
    ssim: float


class FramePairSampler:
    def __init__(self, clips: list[Clip], config: VideoConfig, cache: ssim.SsimCache):
        self.clips = clips
        self.config = config
        self.cache = cache

    def sample(self, rng: np.random.Generator) -> FramePair | None:
        """A pair inside the SSIM band, or None after `max_tries` rejected draws.

        Each try draws a clip, then a frame, then a second frame within `max_frame_gap` of it
        (before or after, so either may come first in time). A cached score saves decoding
        frames that would be rejected anyway.
        """
        low, high = self.config.ssim_band
        for _ in range(self.config.max_tries):
            clip = self.clips[rng.integers(len(self.clips))]
            indices = self._draw_indices(clip.frame_count, rng)
            if indices is None:
                continue
            first, second = indices
            frames = None
            score = self.cache.get(clip.key, first, second)
            if score is None:
                frames = clip.read_frames([first, second])
                score = ssim.frame_ssim(frames[0], frames[1], self.config.ssim_size)
                self.cache.put(clip.key, first, second, score)
            if low <= score <= high:
                if frames is None:
                    frames = clip.read_frames([first, second])
                return FramePair(clip, first, second, frames[0], frames[1], score)
        return None

    def _draw_indices(self, frame_count: int, rng: np.random.Generator) -> tuple[int, int] | None:
        if frame_count < 2:
            return None
        first = int(rng.integers(frame_count))
        gap = self.config.max_frame_gap or frame_count
        low, high = max(0, first - gap), min(frame_count - 1, first + gap)
        second = int(rng.integers(low, high))  # high - low >= 1; skip `first` by shifting past it
        if second >= first:
            second += 1
        return first, second
