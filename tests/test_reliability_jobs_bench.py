"""`mimicbrush bench run` killed with SIGKILL at a random moment: every finished edit survives and
is reused, at most the one edit in flight is lost, no partial edit is left (helpers and
MIMICBRUSH_KILLS / MIMICBRUSH_KILL_SEED: test_reliability_jobs.py)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_reliability_jobs import (
    KILL_SEED,
    KILL_WINDOW_S,
    KILLS,
    KillReport,
    finish,
    run_and_kill,
)
from tiny_models import tiny_pipeline

pytestmark = pytest.mark.slow

CASES = max(30, 10 * KILLS)  # room for every kill to land while it edits


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def write_track(root: Path) -> Path:
    """An inter-ID part-composition track of random 32×32 cases, laid out as the release's."""
    track = root / "PartComp" / "CrossInstance"
    track.mkdir(parents=True)
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    for index in range(CASES):
        for role in ("source", "reference"):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(track / f"case{index:02d}_{role}.png")
        Image.fromarray(mask).save(track / f"case{index:02d}_source_mask.png")
    return root


def finished_edits(out_dir: Path) -> dict[str, tuple[int, int]]:
    """name → (inode, mtime) of every visible edit; each must be a whole, readable PNG."""
    edits = {}
    for path in sorted((out_dir / "edits").rglob("*.png")):
        with Image.open(path) as image:
            image.load()
            assert image.size == (32, 32) and "mimicbrush-bench" in image.text
        stat = path.stat()
        edits[path.name] = (stat.st_ino, stat.st_mtime_ns)
    return edits


def test_benchmark_killed_at_random_moments_keeps_every_finished_edit(tmp_path, tiny_model):
    rng = random.Random(KILL_SEED + 1)
    track = write_track(tmp_path / "track")
    out_dir = tmp_path / "out"
    argv = [sys.executable, "-m", "mimicbrush", "bench", "run", str(track), "--model", str(tiny_model),
            "-o", str(out_dir), "--steps", "2", "--device", "cpu",
            "--dino-model", "none", "--clip-model", "none", "--lpips-net", "none"]
    report = KillReport()
    kept: dict[str, tuple[int, int]] = {}
    for attempt in range(KILLS):
        log = tmp_path / f"bench-{attempt}.log"
        seen_before_kill: dict[str, tuple[int, int]] = {}
        done = len(kept)
        if not run_and_kill(argv, log, lambda done=done: len(finished_edits(out_dir)) > done,
                            rng.uniform(0, KILL_WINDOW_S),
                            before_kill=lambda seen=seen_before_kill: seen.update(finished_edits(out_dir))):
            break
        after = finished_edits(out_dir)
        lost = len(set(seen_before_kill.items()) - set(after.items()))  # finished, then gone or rewritten
        assert lost == 0 and kept.items() <= after.items()  # nor anything an earlier run finished
        litter = [path.name for path in (out_dir / "edits").rglob(".*.tmp")]
        assert len(litter) <= 1, litter  # at most the one edit in flight, as a hidden temp file
        report.kills += 1
        report.lost.append(lost)
        report.litter.append(len(litter))
        kept = after
    finish(argv, tmp_path / "bench-final.log")
    final = finished_edits(out_dir)
    assert len(final) == CASES
    assert kept.items() <= final.items()  # edits made before the kills were reused, not redone
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary
    print(f"benchmark: {report}, {len(kept)} edits kept across kills")
