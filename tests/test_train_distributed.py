"""Training across processes: a 2-process CPU run (gloo, through torch.distributed.run) matches a
1-process run of the same global batch."""

import os
import subprocess
import sys

import pytest
import torch

from mimicbrush.training import load_train_config, train
from mimicbrush.training.trainer import build_training_model
from test_train_support import one_thread, state_of, tiny_document, write_config, write_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

SUBPROCESS_TIMEOUT = 150  # seconds; imports alone take ~10 s per process on a busy machine
# eps 1 makes AdamW's step nearly linear in the gradient: float rounding that differs between
# the runs stays tiny instead of flipping the sign of near-zero updates
FAST_LINEAR_OPTIM = {"lr": 0.05, "eps": 1.0}


def environment() -> dict[str, str]:
    # no ACCELERATE_USE_CPU: the trainer tells accelerate that GPU-less processes are CPU ones
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("ACCELERATE_USE_CPU", None)
    return environment


def train_in_two_processes(config_path) -> subprocess.CompletedProcess:
    """`mimicbrush train CONFIG` as 2 CPU processes through torch.distributed.run."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mimicbrush", "train", str(config_path)],
        env=environment(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images")


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, images):
    document = tiny_document(images, tmp_path / "ddp", train={"max_steps": 3, "batch_size": 1},
                             optim=FAST_LINEAR_OPTIM, checkpoint={"every_steps": 3})
    config_path = write_config(tmp_path / "ddp.yaml", document)
    completed = train_in_two_processes(config_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip() == str(tmp_path / "ddp" / "model")  # printed once
    assert "training on 2 process(es)" in completed.stderr
    checkpoint = tmp_path / "ddp" / "checkpoints" / "step-00000003"
    assert (checkpoint / "random_states_1.pkl").is_file()

    single = load_train_config(config_path, ["train.batch_size=2", f"output_dir={tmp_path / 'single'}"])
    initial = build_training_model(single).pipeline.unet.state_dict()
    train(single)
    two, one = state_of(tmp_path / "ddp" / "model"), state_of(tmp_path / "single" / "model")
    moved = max((one[key] - initial[key]).abs().max().item() for key in one)
    assert moved > 1e-3
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=0, msg=key)
