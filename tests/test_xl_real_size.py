"""MimicBrush-XL at its real size: the sizes benchmarks/bench_inference.py builds it with (on the
meta device, seconds), and a 2-step 1024² edit with random bf16 weights on the CPU when
MIMICBRUSH_FULL_XL=1 (14.6 GiB peak; on a 2-core CPU 3 minutes idle, 12 busy; the same edit
runs in miniature at 64² without it). docs/performance.md has the measured figures."""

import os
import resource

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from PIL import Image

from mimicbrush import editing, imaging

from benchmark_scripts import load_benchmark

SDXL_UNET_PARAMETERS = 2_567_463_684  # stabilityai/stable-diffusion-xl-base-1.0 unet, as published
FULL_XL = os.environ.get("MIMICBRUSH_FULL_XL") == "1"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_inference")


def test_real_size_components(bench):
    """The parts the real-size edit is built from: SDXL's U-Nets (the imitative one's conv_in
    widened from 4 to 13 channels), SDXL's VAE, CLIP ViT-H/14, Depth Anything base, and the
    projections into SDXL's 2048-wide context and 1280-wide pooled vector."""
    with init_empty_weights():
        components = bench.build_xl_components("full")
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()}
    assert counts["reference_unet"] == SDXL_UNET_PARAMETERS
    assert counts["unet"] == SDXL_UNET_PARAMETERS + 9 * 320 * 3 * 3
    assert counts["vae"] == 83_653_863 and components["vae"].config.scaling_factor == 0.13025
    assert counts["image_encoder"] == 632_076_800
    assert counts["image_proj"] == 1280 * 2048 + 2048 and counts["pooled_proj"] == 1280 * 1280 + 1280
    assert counts["depth_estimator"] == 97_470_785
    assert components["depth_guider"].config.resolution == 1024


@pytest.mark.parametrize("size", [
    "tiny",
    pytest.param("full", marks=pytest.mark.skipif(
        not FULL_XL, reason="set MIMICBRUSH_FULL_XL=1 (15 GiB of memory, 3–12 minutes on a 2-core CPU)")),
])
def test_xl_edit_loads_runs_and_pastes_back(bench, size):
    """Built in bf16 in memory (no float32 copy on the way), a 2-step edit at the model's own
    resolution; the output has the source's size, keeps every pixel beyond the paste-back's
    feathering and changes the masked region."""
    cpu = torch.device("cpu")
    resident_before = bench.resident_gib() * 2**30
    pipe = bench.random_xl_pipeline(size, cpu, torch.bfloat16)
    built_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the most this process held so far
    weights = sum(tensor.numel() * tensor.element_size() for module in pipe.components.values()
                  if isinstance(module, torch.nn.Module) for tensor in [*module.parameters(), *module.buffers()])
    assert {p.dtype for module in pipe.components.values() if isinstance(module, torch.nn.Module)
            for p in module.parameters()} == {torch.bfloat16}
    if size == "full":
        # 11.1 GiB of bf16 weights; filling a U-Net in float32 first would hold its 9.6 GiB float32
        # copy beside the other U-Net (4.8 GiB in bf16): 14.4 GiB at least
        assert built_peak < resident_before + weights + 2**30, (built_peak / 2**30, weights / 2**30)

    inputs = bench.edit_inputs(pipe.resolution)
    output = pipe(**inputs, num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(1))

    source = inputs["source_image"]
    image, model_image = np.asarray(output.images[0]), np.asarray(output.model_images[0])
    assert image.shape == source.shape and model_image.shape == (pipe.resolution, pipe.resolution, 3)
    assert model_image.std() > 1  # a picture, not a constant (NaN latents decode to one)
    mask = imaging.binary_mask(imaging.load_mask(inputs["mask_image"], (source.shape[1], source.shape[0])))
    beyond = ~editing.feather_band(mask)
    np.testing.assert_array_equal(image[beyond], source[beyond])
    assert np.abs(image[mask > 0].astype(int) - source[mask > 0]).mean() > 5
    # the benchmark's own check of the same output agrees
    assert bench.pasted_back(inputs, output) == {
        "size": [640, 480], "source_size": [640, 480], "model_image_size": [pipe.resolution] * 2,
        "outside_mask_unchanged": True, "inside_mask_changed": True}


def test_the_benchmarks_paste_back_check_sees_a_change_outside_the_mask(bench):
    """bench_inference.pasted_back is what the single-edit JSON and the GPU check report: it must
    say so when a pixel far from the mask changed, or the source came back unedited."""
    inputs = bench.edit_inputs(64)
    source = inputs["source_image"]

    class Output:
        def __init__(self, image):
            self.images, self.model_images = [Image.fromarray(image)], [Image.fromarray(source[:64, :64])]

    edited = source.copy()
    edited[200:300, 250:400] = 0  # inside the box 200,120,440,360
    assert bench.pasted_back(inputs, Output(edited))["outside_mask_unchanged"] is True
    assert bench.pasted_back(inputs, Output(edited))["inside_mask_changed"] is True
    edited[5, 5] += 1  # far outside it
    assert bench.pasted_back(inputs, Output(edited))["outside_mask_unchanged"] is False
    assert bench.pasted_back(inputs, Output(source.copy()))["inside_mask_changed"] is False
