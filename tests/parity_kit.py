"""Run the parity kit's cases (../shared/parity) through our pipeline and compare arrays.

The kit ships expected arrays of the release's fp32 CPU run; its README defines the tolerances.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
KIT = SHARED / "parity"


def require_kit() -> Path:
    if not (KIT / "cases.json").is_file():
        pytest.skip("parity kit not present: ../shared/parity (beside the clone) is needed")
    return KIT


def load_cases() -> dict[str, dict]:
    cases = json.loads((require_kit() / "cases.json").read_text())["cases"]
    return {case["name"]: case for case in cases}


def model_dir(size: str, root: Path) -> Path:
    """Write (once) the kit's release-layout folder of random weights under `root`."""
    target = root / size.upper()
    if not (target / "mimicbrush" / "mimicbrush.bin").is_file() or not (target / ".complete").exists():
        subprocess.run(
            [sys.executable, str(KIT / "make_weights.py"), "--size", size, "--out", str(target)],
            check=True, capture_output=True,
        )
        (target / ".complete").touch()
    return target


def run_case(pipe, case: dict, kit: Path = KIT, **call_kwargs) -> dict[str, np.ndarray]:
    """Run one case through `pipe.__call__` (plus `call_kwargs`), capturing the kit's arrays; the
    case's input images are read from `kit` (benchmarks/gpu_check.py passes a carried copy)."""
    arrays: dict[str, np.ndarray] = {}
    captured: dict[str, torch.Tensor] = {}

    def keep(name, tensor):
        arrays[name] = tensor.detach().float().cpu().numpy()

    hooks = [
        pipe.unet.register_forward_hook(
            lambda module, args, output: captured.setdefault("unet_io", (args[0], output[0])) and None
        ),
    ]
    prepare_latents, encode_depth = pipe.prepare_latents, pipe.encode_depth

    def capture_depth(*args):
        feature, depth_map = encode_depth(*args)  # may come from the pipeline's cache
        keep("depth_feature", feature)
        keep("depth_map", depth_map)
        return feature, depth_map

    def capture_latents(inputs, *args):
        reference_latents, latents, masked_latents = prepare_latents(inputs, *args)
        keep("reference_latents", reference_latents)
        keep("init_noise", latents)
        keep("masked_image_latents", masked_latents)
        keep("clip_pixel_values", torch.from_numpy(inputs.clip_pixels))
        return reference_latents, latents, masked_latents

    def on_step_end(pipeline, step, timestep, values):
        if step == 0:
            keep("latents_step0", values["latents"])
            keep("noise_pred_guided_step0", values["noise_pred"])
        keep("final_latents", values["latents"])
        return values

    pipe.prepare_latents, pipe.encode_depth = capture_latents, capture_depth
    try:
        output = pipe(
            source_image=kit / case["inputs"]["source"],
            mask_image=kit / case["inputs"]["mask"],
            reference_image=kit / case["inputs"]["reference"],
            keep_shape=case["keep_shape"],
            num_inference_steps=case["steps"],
            guidance_scale=case["guidance_scale"],
            generator=torch.Generator("cpu").manual_seed(case["seed"]),
            callback_on_step_end=on_step_end,
            **call_kwargs,
        )
    finally:
        del pipe.prepare_latents, pipe.encode_depth
        for hook in hooks:
            hook.remove()
    if not case["keep_shape"]:
        arrays.pop("depth_map")
    unet_input, unet_output = captured["unet_io"]
    keep("unet_input_step0", unet_input)
    keep("noise_pred_raw_step0", unet_output)
    clip = torch.from_numpy(arrays["clip_pixel_values"])
    keep("image_embeds_cond", pipe.image_embeds(clip))
    keep("image_embeds_uncond", pipe.image_embeds(torch.zeros_like(clip)))
    arrays["timesteps"] = pipe.scheduler.timesteps.cpu().numpy().astype(np.int64)
    arrays["pred_512"] = np.asarray(output.model_images[0])
    arrays["output"] = np.asarray(output.images[0])
    return arrays


def compare(case: dict, actual: dict[str, np.ndarray]) -> list[str]:
    """Arrays outside the kit's tolerance, as readable lines (empty = parity)."""
    expected = np.load(KIT / case["expected"])
    failures = []
    for name in expected.files:
        if name not in actual:
            failures.append(f"{name}: not produced")
            continue
        want, got = expected[name], actual[name]
        if want.shape != got.shape:
            failures.append(f"{name}: shape {got.shape} != {want.shape}")
            continue
        difference = float(np.abs(want.astype(np.float64) - got.astype(np.float64)).max())
        if difference > case["tolerance"][name]:
            failures.append(f"{name}: max |diff| {difference:.3g} > tolerance {case['tolerance'][name]:.3g}")
    return failures
