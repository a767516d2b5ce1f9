"""One forward and backward of MimicBrush-XL's imitative U-Net alone, at its real size, on this
machine: pure bf16 weights (no float32 master copy), diffusers' gradient checkpointing, 1024²
(128² latents), batch 1. Measured beside xl_training_plan.py's estimate of the same step.

    python benchmarks/xl_unet_step.py [-o step.json]

The U-Net: SDXL's (xl_training_plan.SDXL_UNET) widened to 13 input channels, random weights
(bench_inference.fill_random); its context 257 image tokens 2048 wide, SDXL's added conditions
(a 1280-wide pooled vector, the time ids of a 1024² square); the loss, MSE to a random target.
Alone: no reference U-Net, so no reference bank for its self-attention to read (the plan's `unet`
row has the bank's keys and values as well).

Measured: wall and CPU seconds of the forward and of the backward; resident memory before the
step and at the end of the forward, the process's peak (ru_maxrss); the bytes autograd keeps for
the backward at the end of the forward, counted by the plan's own `SavedTensors` hooks on the real
tensors; the gradients' bytes. Estimated, by the plan's method on the meta device for the same
module and inputs (`GpuKernelPolicy` without autocast: bf16, flash attention): the saved bytes
with checkpointing plus the largest block's, which the backward recomputes one at a time.
About 12 GiB of memory: check `free -g` first.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.utils import logging as diffusers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inference as bench  # noqa: E402  (fill_random, resident_gib)
import xl_training_plan as plan  # noqa: E402  (the published U-Net config, SavedTensors, GpuKernelPolicy)

from mimicbrush.fileio import write_atomic  # noqa: E402
from mimicbrush.models.backbone import pooled_width, time_ids  # noqa: E402

GIB = 2**30
IMAGE_TOKENS = 257  # CLIP ViT-H/14's penultimate tokens, image_proj'd to the U-Net's context width
IN_CHANNELS = 13  # noisy latent 4, mask 1, collage latent 4, depth feature 4


def step_inputs(unet, resolution: int, device, generator: torch.Generator | None) -> tuple[tuple, dict]:
    """(sample, timestep, context) and the added conditions of one training sample; empty
    tensors on the meta device."""
    dtype, side = torch.bfloat16, resolution // 8

    def tensor(*shape):
        if device.type == "meta":
            return torch.empty(*shape, device=device, dtype=dtype)
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    args = (tensor(1, IN_CHANNELS, side, side), torch.tensor([500], device=device),
            tensor(1, IMAGE_TOKENS, unet.config.cross_attention_dim))
    added = {"text_embeds": tensor(1, pooled_width(unet.config)), "time_ids": time_ids(resolution, 1, device, dtype)}
    return args, added


def planned_bytes(resolution: int) -> dict:
    """The plan's estimate for this step: what a checkpointed forward saves, and the largest
    block's own saved bytes (from a forward without checkpointing), on the meta device."""
    figures = {}
    for checkpointing in (True, False):
        unet = plan.build_unet(plan.BACKBONES["sdxl"], IN_CHANNELS).to(torch.bfloat16).train()
        saved = plan.SavedTensors()
        saved.exclude(unet.parameters())
        policy = plan.GpuKernelPolicy(autocast=False)
        if checkpointing:
            unet.enable_gradient_checkpointing(plan.checkpointing_under(policy))
        handles = [] if checkpointing else saved.track_blocks({"unet": unet})
        args, added = step_inputs(unet, resolution, torch.device("meta"), None)
        with policy, saved.recording():
            unet(*args, added_cond_kwargs=added, return_dict=False)
        for handle in handles:
            handle.remove()
        if checkpointing:
            figures["saved_gib"] = sum(saved.by_phase.values()) / GIB
        else:
            figures["largest_block_gib"] = max(saved.by_block.values()) / GIB
            figures["saved_without_checkpointing_gib"] = sum(saved.by_phase.values()) / GIB
    figures["activations_gib"] = figures["saved_gib"] + figures["largest_block_gib"]
    return {key: round(value, 3) for key, value in figures.items()}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(resolution: int) -> dict:
    """Build the U-Net in bf16, then one checkpointed forward and backward, timed and weighed."""
    cpu = torch.device("cpu")
    generator = torch.Generator(cpu).manual_seed(0)
    start = time.perf_counter()
    unet = bench.fill_random(plan.build_unet(plan.BACKBONES["sdxl"], IN_CHANNELS), cpu, torch.bfloat16, generator)
    unet.train().requires_grad_(True)
    unet.enable_gradient_checkpointing()  # diffusers' default: torch.utils.checkpoint, non-reentrant
    parameters = sum(p.numel() for p in unet.parameters())
    result = {"parameters": parameters, "weights_gib": round(parameters * 2 / GIB, 3),
              "build_s": round(time.perf_counter() - start, 1), "build_peak_rss_gib": round(peak_rss_gib(), 3)}
    args, added = step_inputs(unet, resolution, cpu, generator)
    target = torch.randn(1, 4, resolution // 8, resolution // 8, generator=generator)

    before = bench.resident_gib()
    saved = plan.SavedTensors()
    saved.exclude(unet.parameters())
    start, cpu_start = time.perf_counter(), time.process_time()
    with saved.recording():
        prediction = unet(*args, added_cond_kwargs=added, return_dict=False)[0]
    loss = F.mse_loss(prediction.float(), target)
    forward = {"s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu_start, 1)}
    saved_bytes = sum(saved.by_phase.values())
    saved.seen.clear()  # the hooks' own references: autograd alone holds them now, and frees them as it goes
    after_forward = bench.resident_gib()
    peak_after_forward = peak_rss_gib()

    start, cpu_start = time.perf_counter(), time.process_time()
    loss.backward()
    backward = {"s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu_start, 1)}
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in unet.parameters() if p.grad is not None)
    peak = peak_rss_gib()
    result.update(
        forward=forward, backward=backward, step_s=round(forward["s"] + backward["s"], 1),
        resident_before_step_gib=round(before, 3),
        saved_for_backward_gib=round(saved_bytes / GIB, 3),
        resident_rise_in_forward_gib=round(after_forward - before, 3),
        peak_rss_after_forward_gib=round(peak_after_forward, 3),
        gradients_gib=round(gradients / GIB, 3),
        all_parameters_have_gradients=all(p.grad is not None for p in unet.parameters()),
        gradients_finite=all(bool(torch.isfinite(p.grad).all()) for p in unet.parameters() if p.grad is not None),
        loss=round(loss.item(), 4),
        peak_rss_gib=round(peak, 3),
        # what the step itself added at its peak, beyond the weights held before it
        step_peak_over_resident_before_gib=round(peak - before, 3),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", help="also write the JSON report here")
    parser.add_argument("--resolution", type=int, default=1024, help="pixels (a multiple of 32; default 1024)")
    args = parser.parse_args(argv)
    diffusers_logging.set_verbosity_error()
    report = {"what": "SDXL imitative U-Net alone (13 input channels), bf16 weights and gradients, gradient "
                      "checkpointing, batch 1, random weights, one forward and backward on this machine",
              "resolution": args.resolution, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "planned": planned_bytes(args.resolution)}
    report["measured"] = measure(args.resolution)
    measured, planned = report["measured"], report["planned"]
    # the same counting on the CPU's kernels; and what the step added to memory at its peak
    # against the plan's formula for it (bf16 gradients beside the activations)
    report["measured_over_planned"] = {
        "saved_for_backward": round(measured["saved_for_backward_gib"] / planned["saved_gib"], 3),
        "step_memory": round(measured["step_peak_over_resident_before_gib"]
                             / (measured["gradients_gib"] + planned["activations_gib"]), 3),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        write_atomic(args.output, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
