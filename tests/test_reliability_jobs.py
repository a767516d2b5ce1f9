"""Long jobs killed with SIGKILL at a random moment: `mimicbrush train` resumes, loses at most one
checkpoint interval and leaves no corrupt checkpoint (`bench run`: test_reliability_jobs_bench.py,
which shares the helpers here). A loss that turns NaN or infinite stops the run with its step.

Each test kills its job MIMICBRUSH_KILLS times (default 1, to keep the suite fast) at moments
drawn from MIMICBRUSH_KILL_SEED (default 0); docs/reliability.md reports a longer run.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_train_support import one_thread, tiny_document, write_config, write_images  # noqa: F401

from mimicbrush.cli import main

KILLS = int(os.environ.get("MIMICBRUSH_KILLS", "1"))
KILL_SEED = int(os.environ.get("MIMICBRUSH_KILL_SEED", "0"))
KILL_WINDOW_S = 2.5  # the kill lands this long at most after the job shows progress
JOB_TIMEOUT_S = 300

# one thread: the shared CPU is oversubscribed; a progress update on every step, so the log
# tells how far a job got before its kill
JOB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_MININTERVAL": "0", "HF_HUB_OFFLINE": "1"}

pytestmark = pytest.mark.slow


@dataclass
class KillReport:
    """What the kills did to one job (printed, for docs/reliability.md)."""

    kills: int = 0
    lost: list[int] = field(default_factory=list)  # per kill: steps, or finished edits, lost
    litter: list[int] = field(default_factory=list)  # per kill: hidden temp files left behind

    def __str__(self) -> str:
        return f"{self.kills} kills survived; lost per kill {self.lost}; temp files left per kill {self.litter}"


def run_and_kill(argv: list[str], log: Path, started, delay_s: float, before_kill=lambda: None) -> bool:
    """Run `argv` (stderr to `log`); once `started()` holds, wait `delay_s` and SIGKILL it.
    Returns True if it was killed, False if it finished first (it must then have succeeded)."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=JOB_ENV)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        while not started() and process.poll() is None:
            assert time.monotonic() < deadline, f"{argv} showed no progress: {log.read_text()[-2000:]}"
            time.sleep(0.05)
        time.sleep(delay_s)
        if process.poll() is None:
            before_kill()
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, log.read_text()[-3000:]
    return False


def finish(argv: list[str], log: Path) -> None:
    with open(log, "w") as stderr:
        result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=JOB_ENV, timeout=JOB_TIMEOUT_S,
                                check=False)
    assert result.returncode == 0, log.read_text()[-3000:]


# --- training ------------------------------------------------------------------------------

MAX_STEPS = max(24, 12 * KILLS)  # room for every kill to land while it trains (~4 steps/s here)
CHECKPOINT_EVERY = 4


def complete_checkpoints(run_dir: Path) -> dict[int, Path]:
    folders = (run_dir / "checkpoints").glob("step-*")
    return {int(path.name.removeprefix("step-")): path for path in folders if (path / "trainer_state.json").is_file()}


def check_checkpoint(path: Path) -> None:
    """A complete checkpoint is readable: state, trainable weights, optimizer."""
    state = json.loads((path / "trainer_state.json").read_text())
    assert state["step"] == int(path.name.removeprefix("step-"))
    assert load_file(str(path / "model.safetensors"))
    assert (path / "optimizer.bin").stat().st_size > 0


def last_step_shown(log: Path) -> int:
    steps = re.findall(rf"(\d+)/{MAX_STEPS} \[", log.read_text(errors="replace"))
    return int(steps[-1]) if steps else 0


def test_training_killed_at_random_moments_resumes_within_one_interval(tmp_path):
    rng = random.Random(KILL_SEED)
    document = tiny_document(
        write_images(tmp_path / "images"), tmp_path / "run",
        train={"max_steps": MAX_STEPS, "batch_size": 2, "num_workers": 0},
        checkpoint={"every_steps": CHECKPOINT_EVERY, "keep_last": 2},
    )
    config = write_config(tmp_path / "config.yaml", document)
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "mimicbrush", "train", str(config), "--resume"]
    report = KillReport()
    for attempt in range(KILLS):
        log = tmp_path / f"train-{attempt}.log"
        before = max(complete_checkpoints(run_dir), default=0)
        if not run_and_kill(argv, log, lambda log=log, before=before: last_step_shown(log) > before,
                            rng.uniform(0, KILL_WINDOW_S)):
            break
        checkpoints = complete_checkpoints(run_dir)
        for path in checkpoints.values():
            check_checkpoint(path)
        lost = last_step_shown(log) - max(checkpoints, default=0)
        assert lost <= CHECKPOINT_EVERY, f"{lost} steps lost: {log.read_text()[-2000:]}"
        report.kills += 1
        report.lost.append(lost)
        report.litter.append(sum(1 for _ in run_dir.rglob(".tmp-*")))
    resumed_from = max(complete_checkpoints(run_dir), default=0)
    log = tmp_path / "train-final.log"
    finish(argv, log)
    if resumed_from:
        assert f"at step {resumed_from}" in log.read_text()
    checkpoints = complete_checkpoints(run_dir)
    assert max(checkpoints) == MAX_STEPS and len(checkpoints) <= 2  # keep_last held through the kills
    for path in checkpoints.values():
        check_checkpoint(path)
    assert not [path.name for path in (run_dir / "checkpoints").iterdir() if path.name.startswith(".")]
    model = run_dir / "model"
    assert (model / "model_index.json").is_file()
    for weights in model.glob("*/*.safetensors"):
        assert load_file(str(weights))
    print(f"training: {report}")


@pytest.mark.usefixtures("one_thread")
def test_a_diverging_run_stops_with_the_step_number_in_one_line(tmp_path, capsys):
    document = tiny_document(write_images(tmp_path / "images"), tmp_path / "run", train={"max_steps": 4})
    config = write_config(tmp_path / "config.yaml", document)
    assert main(["train", str(config), "optim.lr=1e30"]) == 2  # step 1 throws the weights to ~1e30
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: loss is (nan|inf|-inf) at step 2; stopped before that update\. .*", error), error
