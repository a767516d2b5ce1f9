"""Half precision on the CPU, so that a dtype mistake that would only show on a GPU fails here:
whole edits in fp16 and bf16 on the parity kit's tiny release, on the bundled model and on a tiny
SDXL-shaped model (its VAE upcast included), compared with fp32 by PSNR; training steps under bf16 autocast and under fp16 with the loss scaler
(`torch.amp.GradScaler("cpu")`, which the trainer gives accelerate on the CPU), float64-free.

The PSNR thresholds are set from a measurement (2 DDIM steps, seed 1, model_images, this
project's 2-core AMD EPYC, torch 2.13.0+cpu), about 5 dB below it for other CPUs' kernels:

| model | fp16 vs fp32 | bf16 vs fp32 |
| --- | --- | --- |
| tiny release, 64², land source + portrait reference | 53.7–55.0 dB | 39.4–41.5 dB |
| bundled model, 64², the 4 bundled examples | 59.1–59.6 dB | 48.7–49.1 dB |
| tiny SDXL-shaped model (tests/tiny_models.py), saved and loaded, 64² | 57.7–58.8 dB | 47.0–47.1 dB |

(the ranges over seeds 1 and 2 and, for the bundled model, every example; the tiny release with
shape control on too). fp16 on the CPU is slow (10–35× fp32; its depth estimator dominates the
tiny release's edit), so each model edits once per dtype at 64², its smallest resolution.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState

from mimicbrush import edit_options
from mimicbrush.devices import DTYPES, SlowDtypeWarning
from mimicbrush.examples import bundled_examples
from mimicbrush.loading import load_pipeline
from mimicbrush.training import load_train_config
from mimicbrush.training.trainer import Trainer
from float64_guard import Float64Guard
from parity_kit import KIT
from test_train_support import one_thread, tiny_document, write_config, write_images  # noqa: F401
from tiny_models import saved_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # on a shared CPU one thread is several times faster

STEPS = 2
THRESHOLDS_DB = {  # (model, dtype) -> PSNR floor against fp32: the measurement above less ~5 dB
    ("tiny release", "fp16"): 48.0, ("tiny release", "bf16"): 34.0,
    ("bundled", "fp16"): 54.0, ("bundled", "bf16"): 44.0,
    ("sdxl", "fp16"): 52.0, ("sdxl", "bf16"): 42.0,
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def model_image(pipe, inputs: dict) -> np.ndarray:
    output = pipe(**inputs, num_inference_steps=STEPS, generator=edit_options.generator(1))
    return np.asarray(output.model_images[0])


def load_in(model, dtype: str):
    if dtype == "fp16":
        with pytest.warns(SlowDtypeWarning):  # the one line that says fp16 is slow here
            pipe = load_pipeline(model, device="cpu", dtype=dtype)
    else:
        pipe = load_pipeline(model, device="cpu", dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_release_inputs():
    return dict(source_image=KIT / "inputs" / "land_source.png", mask_image=KIT / "inputs" / "land_mask.png",
                reference_image=KIT / "inputs" / "portrait_reference.png", resolution=64)


@pytest.fixture(scope="module")
def tiny_release_fp32_image(tiny_release_pipeline, tiny_release_inputs):
    return model_image(tiny_release_pipeline, tiny_release_inputs)


@pytest.fixture(scope="module")
def bundled_inputs():
    example = next(example for example in bundled_examples() if example.keep_shape)  # the depth path too
    return dict(source_image=example.source, mask_image=example.mask, reference_image=example.reference,
                keep_shape=True)


@pytest.fixture(scope="module")
def bundled_fp32_image(bundled_inputs):
    return model_image(load_in(None, "fp32"), bundled_inputs)


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    return saved_tiny_pipeline(tmp_path_factory.mktemp("sdxl"), xl=True)


@pytest.fixture(scope="module")
def sdxl_inputs():
    rng = np.random.default_rng(0)
    return dict(source_image=rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), mask_image="4,4,30,30",
                reference_image=rng.integers(0, 256, (30, 28, 3), dtype=np.uint8), keep_shape=True)


@pytest.fixture(scope="module")
def sdxl_fp32_image(sdxl_folder, sdxl_inputs):
    return model_image(load_in(sdxl_folder, "fp32"), sdxl_inputs)


def check_half_edit(pipe, dtype: str, inputs: dict, fp32_image: np.ndarray, threshold: float) -> None:
    modules = [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]
    assert {parameter.dtype for module in modules for parameter in module.parameters()} == {DTYPES[dtype]}
    with Float64Guard() as guard:
        image = model_image(pipe, inputs)
    assert not guard.found, guard.report()
    quality = psnr(image, fp32_image)
    assert quality < 100, f"{dtype} gave fp32's pixels: the edit did not run in {dtype}"
    assert quality >= threshold, f"{dtype} vs fp32: {quality:.1f} dB < {threshold} dB"


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_tiny_release_edits_in_half_precision(tiny_release_dir, tiny_release_inputs, tiny_release_fp32_image, dtype):
    check_half_edit(load_in(tiny_release_dir, dtype), dtype, tiny_release_inputs, tiny_release_fp32_image,
                    THRESHOLDS_DB["tiny release", dtype])


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_bundled_model_edits_in_half_precision(bundled_inputs, bundled_fp32_image, dtype):
    check_half_edit(load_in(None, dtype), dtype, bundled_inputs, bundled_fp32_image, THRESHOLDS_DB["bundled", dtype])


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_sdxl_shaped_model_edits_in_half_precision(sdxl_folder, sdxl_inputs, sdxl_fp32_image, dtype):
    check_half_edit(load_in(sdxl_folder, dtype), dtype, sdxl_inputs, sdxl_fp32_image, THRESHOLDS_DB["sdxl", dtype])


# ---------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one state per process and refuses another mixed precision: reset it
    around each of these runs (the other trainer tests all train without one)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def half_trainer(tmp_path, images, mixed_precision: str, steps: int = 2) -> Trainer:
    document = tiny_document(images, tmp_path / "run", train={
        "max_steps": steps, "batch_size": 2, "num_workers": 0, "mixed_precision": mixed_precision,
        "correspondence_weight": 0.1,  # the reference attention's supervision runs too
    })
    return Trainer(load_train_config(write_config(tmp_path / "train.yaml", document)))


def trainable_copy(trainer: Trainer) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in trainer.parameters]


def forward_dtypes(trainer: Trainer) -> set[torch.dtype]:
    """Record the dtype the imitative U-Net's first convolution computes in."""
    seen = set()
    trainer.objective.parts["unet"].conv_in.register_forward_hook(lambda module, args, output: seen.add(output.dtype))
    return seen


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_training_steps_under_bf16_autocast(tmp_path, images):
    trainer = half_trainer(tmp_path, images, "bf16")
    before, computed_in = trainable_copy(trainer), forward_dtypes(trainer)
    with Float64Guard() as guard:
        trainer.run()  # a non-finite loss would stop it (TrainingDiverged)
    assert not guard.found, guard.report()
    assert computed_in == {torch.bfloat16}
    assert all(parameter.dtype == torch.float32 for parameter in trainer.parameters)  # the master weights
    assert all(not torch.equal(old, new) for old, new in zip(before, trainable_copy(trainer)) if old.numel() > 1)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_fp16_training_scales_the_loss_and_skips_an_overflowing_step(tmp_path, images):
    """accelerate makes no loss scaler on the CPU; the trainer gives it torch's CPU GradScaler, so
    the fp16 path a GPU takes (scaled backward, unscale before clipping, a step skipped on
    overflow, the scale halved, the learning-rate schedule held) runs here."""
    trainer = half_trainer(tmp_path, images, "fp16")
    scaler = trainer.accelerator.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler._device == "cpu"
    initial_scale = scaler.get_scale()
    before, computed_in = trainable_copy(trainer), forward_dtypes(trainer)
    backward_passes = []

    def overflow_first(grad):  # the first step's gradient overflows, as an fp16 one can
        backward_passes.append(1)
        return grad * math.inf if len(backward_passes) == 1 else grad

    trainer.parameters[0].register_hook(overflow_first)
    with Float64Guard() as guard:
        trainer.run()
    assert not guard.found, guard.report()
    assert computed_in == {torch.float16}
    assert len(backward_passes) == 2 and trainer.step == 2
    assert scaler.get_scale() == initial_scale / 2  # halved once: the first step was skipped
    assert trainer.lr_scheduler.last_epoch == 1  # stepped for the second step only
    assert all(parameter.dtype == torch.float32 for parameter in trainer.parameters)
    assert all(torch.isfinite(parameter).all() for parameter in trainer.parameters)
    assert any(not torch.equal(old, new) for old, new in zip(before, trainable_copy(trainer)))
    assert (trainer.store.latest() / "scaler.pt").is_file()  # a resumed run keeps the scale
