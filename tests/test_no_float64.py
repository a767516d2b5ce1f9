"""No float64 tensor inside an edit or a training step: MPS has no float64, so on a Mac one would
fail there while the CPU runs it silently. tests/float64_guard.py records them (every operator,
backward ones included); the half-precision edits and training steps run under it too
(test_half_precision.py). Where a float64 numpy array enters torch it is cast to float32 first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from mimicbrush import edit_options, samplers
from mimicbrush.loading import load_pipeline
from mimicbrush.training import load_train_config
from mimicbrush.training.trainer import Trainer
from float64_guard import Float64Guard
from test_train_support import one_thread, tiny_document, write_config, write_images  # noqa: F401
from tiny_models import tiny_pipeline, tiny_xl_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def images(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)


def test_the_guard_sees_float64_wherever_it_is_made():
    with Float64Guard() as guard:
        torch.from_numpy(np.zeros(3))  # a float64 array entering torch
        torch.ones(2).double()
        torch.arange(3, dtype=torch.float32) * 2
    assert len(guard.found) == 2 and "test_no_float64.py" in guard.found[0].where
    with Float64Guard() as guard:
        torch.from_numpy(np.zeros(3).astype(np.float32))  # cast on the way in: fine
        EulerDiscreteScheduler().set_timesteps(4)  # diffusers' schedule, made float32 before any device
    assert guard.found == []


def test_an_edit_makes_no_float64():
    """The default sampler with shape control and two references, the release's compute pattern
    with zoom, then every named sampler; the bundled model (the other kind of model) and an
    SDXL-shaped one (its added conditions)."""
    pipe = tiny_pipeline()
    source, reference = images()
    edit = dict(source_image=source, reference_image=reference, num_inference_steps=2)
    with Float64Guard() as guard:
        pipe(**edit, mask_image="8,8,40,30", keep_shape=True, generator=edit_options.generator(0))
        pipe(**{**edit, "reference_image": [reference, reference[::-1]]}, mask_image="2,2,9,9", zoom="auto",
             faithful=True, generator=edit_options.generator(1))
        for name in samplers.SAMPLERS:
            samplers.use_sampler(pipe, name)
            pipe(**edit, mask_image="8,8,40,30", generator=edit_options.generator(2))
        bundled = load_pipeline(None, device="cpu")
        bundled.set_progress_bar_config(disable=True)
        bundled(**edit, mask_image="8,8,40,30", keep_shape=True, generator=edit_options.generator(3))
        tiny_xl_pipeline()(**edit, mask_image="8,8,40,30", keep_shape=True, generator=edit_options.generator(4))
    assert not guard.found, guard.report()


def test_a_training_step_makes_no_float64(tmp_path):
    """Setting up and two steps (data, both U-Nets, correspondence supervision, backward, the
    optimizer), in fp32; test_half_precision.py runs bf16 and fp16 under the guard."""
    document = tiny_document(write_images(tmp_path / "images"), tmp_path / "run",
                             train={"max_steps": 2, "batch_size": 2, "num_workers": 0, "correspondence_weight": 0.1})
    config = load_train_config(write_config(tmp_path / "train.yaml", document))
    with Float64Guard() as guard:
        trainer = Trainer(config)
        trainer._train_step()
        trainer._train_step()
    assert not guard.found, guard.report()
