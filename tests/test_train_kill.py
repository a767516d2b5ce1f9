"""A run killed with SIGKILL (after a checkpoint, possibly in the middle of the next save)
resumes to the weights of an uninterrupted run."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from mimicbrush.training import load_train_config, train
from mimicbrush.training.checkpoint import CheckpointStore
from test_train_distributed import FAST_LINEAR_OPTIM, SUBPROCESS_TIMEOUT, environment
from test_train_support import one_thread, state_of, tiny_document, write_config, write_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    images = write_images(tmp_path / "images")
    document = tiny_document(images, tmp_path / "killed", train={"max_steps": 1000}, optim=FAST_LINEAR_OPTIM,
                             checkpoint={"every_steps": 2, "keep_last": 10})
    config_path = write_config(tmp_path / "killed.yaml", document)
    store = CheckpointStore(tmp_path / "killed" / "checkpoints")
    process = subprocess.Popen([sys.executable, "-m", "mimicbrush", "train", str(config_path)],
                               env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while not (store.root / "step-00000004").exists():
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint at step 4 in time"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()

    resumed = load_train_config(config_path, ["train.max_steps=6"])
    train(resumed, resume=str(store.root / "step-00000004"))
    straight = load_train_config(config_path, ["train.max_steps=6", f"output_dir={tmp_path / 'straight'}"])
    train(straight)
    for component in ("unet", "reference_unet", "image_proj", "depth_guider"):
        expected = state_of(tmp_path / "straight" / "model", component)
        got = state_of(tmp_path / "killed" / "model", component)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0, msg=f"{component}.{key}")
