"""SSIM between two frames, and a cache of scores that persists across epochs and processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
from skimage.metrics import structural_similarity


def frame_ssim(first: np.ndarray, second: np.ndarray, size: int) -> float:
    """SSIM of the two RGB frames in grey, scaled so the long side is `size` pixels."""
    height, width = first.shape[:2]
    factor = size / max(height, width)
    shape = (max(7, round(width * factor)), max(7, round(height * factor)))  # SSIM needs 7×7
    grey = [cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), shape, interpolation=cv2.INTER_AREA)
            for frame in (first, second)]
    return float(structural_similarity(grey[0], grey[1], data_range=255))


class SsimCache:
    """Scores keyed by (clip, frame, frame), unordered.

    On disk it is an append-only JSON-lines file: DataLoader workers append their new scores
    (one small O_APPEND write each, so lines from several processes never interleave), and a
    lookup that misses first reads whatever other processes appended since the last read.
    With `path` None the cache lives in memory only.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._scores: dict[tuple[str, int, int], float] = {}
        self._read_offset = 0

    def get(self, clip: str, first: int, second: int) -> float | None:
        key = _key(clip, first, second)
        if key not in self._scores:
            self._read_new_lines()
        return self._scores.get(key)

    def put(self, clip: str, first: int, second: int, score: float) -> None:
        key = _key(clip, first, second)
        self._scores[key] = score
        if self.path is None:
            return
        line = json.dumps({"clip": key[0], "a": key[1], "b": key[2], "ssim": score}) + "\n"
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line.encode())
        finally:
            os.close(descriptor)

    def _read_new_lines(self) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as file:
                file.seek(self._read_offset)
                data = file.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        self._read_offset += len(complete)
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
                self._scores[(entry["clip"], int(entry["a"]), int(entry["b"]))] = float(entry["ssim"])
            except (ValueError, KeyError, TypeError):
                continue  # a damaged line costs one recomputation, nothing more


def _key(clip: str, first: int, second: int) -> tuple[str, int, int]:
    return (clip, min(first, second), max(first, second))


def cache_file(cache_dir: Path, ssim_size: int) -> Path:
    """One file per SSIM resolution, since the score depends on it."""
    return cache_dir / "ssim" / f"ssim-v1-size{ssim_size}.jsonl"
