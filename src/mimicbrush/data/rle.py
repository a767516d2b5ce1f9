"""Decoding of COCO run-length encoded masks, the format of SA-1B's per-image JSON files.

A mask is stored column by column (Fortran order) as alternating run lengths, starting with a
run of zeros. The compressed form writes each run as 5-bit groups in printable characters
(offset 48): bit 0x20 says another group follows, bit 0x10 of the last group is the sign, and
from the third run on each value is stored as the difference to the run two places earlier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError


def decode_counts_string(counts: str) -> list[int]:
    """Run lengths from the compressed COCO counts string."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value = 0
        shift = 0
        while True:
            if position >= len(counts):
                raise InputError("truncated RLE counts string")
            group = ord(counts[position]) - 48
            position += 1
            value |= (group & 0x1F) << shift
            shift += 5
            if not group & 0x20:
                if group & 0x10:
                    value |= -1 << shift  # sign-extend
                break
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_rle(segmentation: Mapping[str, Any]) -> np.ndarray:
    """H×W bool mask from {"size": [H, W], "counts": str | list[int]}."""
    try:
        height, width = (int(v) for v in segmentation["size"])
        counts = segmentation["counts"]
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"not an RLE mask: expected 'size' [H, W] and 'counts' ({error})") from error
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = _check_runs(decode_counts_string(counts) if isinstance(counts, str) else counts)
    if sum(runs) != height * width:
        raise InputError(f"RLE runs cover {sum(runs)} pixels, expected {height}x{width}={height * width}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True  # runs alternate 0, 1, 0, ...
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T


def _check_runs(counts: Sequence[Any]) -> list[int]:
    runs = [int(run) for run in counts]
    if any(run < 0 for run in runs):
        raise InputError("RLE counts must not be negative")
    return runs
