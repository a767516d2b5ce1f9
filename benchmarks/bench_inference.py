"""Inference speed and memory: the release's compute pattern against ours, in one process.

Builds a MimicBrushPipeline with random weights at real SD-1.5 sizes (or `--small` for a CPU
run), then times one edit per mode: `faithful` (the release's pattern), `fast` (our default),
`compile` (fast + compiled U-Nets), `offload-model` and `offload-sequential` (GPU only).
Reports median seconds per edit, ms per step, per-component ms, peak memory and the speed-up of
each mode over `faithful`, as JSON on stdout (and in -o FILE).

    python benchmarks/bench_inference.py --device cuda --dtype fp16           # the GPU figures
    python benchmarks/bench_inference.py --small --steps 5 --modes faithful,fast   # CPU

The model's kind: mode `fast-t0` is `fast` on the same weights as the other kind of model, whose
reference U-Net runs at timestep 0 and so once per edit (`reference_timestep` 0; the release's
kind runs it at every step). Timed interleaved with `fast`; `speedup_of_t0_vs_per_step` is the
ratio of the two in this run. `--model-config` times a training config's architecture, freshly
initialised, instead of the SD-1.5 sizes (configs/demo-model.yaml: the bundled model's size):

    python benchmarks/bench_inference.py --model-config configs/demo-model.yaml --steps 20 --modes fast,fast-t0

`--backbone sdxl` builds MimicBrush-XL instead (SDXL's U-Nets, VAE scaling and added conditions,
the same encoders; 1024², or the 64² miniature with `--small`), directly in the given dtype with
random values. `--single-edit` times one edit of `--steps` steps in place of the modes' warm-up and
repeats: by stage (encoders, VAE encoder and decoder, each U-Net; wall and CPU seconds) and by
step, with the load's time and peak memory apart, the edit's peak, and its output checked (the
source's size, unchanged beyond the mask's feathered edge). The real-size XL on a CPU, where a
step takes minutes (docs/performance.md, "MimicBrush-XL at real size"):

    python benchmarks/bench_inference.py --backbone sdxl --dtype bf16 --device cpu --steps 2 --single-edit

`--references 1,2,4` instead measures the default path with that many references (the same one,
repeated: cost does not depend on the pixels): time interleaved repeat by repeat in this process,
memory in a fresh process per count (CPU: a process's peak RSS only grows, so one process cannot
tell the counts apart), and each count's ratio to the first.

`--dtypes fp32,fp16,bf16` times the default path with the same weights in each dtype, interleaved
repeat by repeat, and each dtype's time as a multiple of the first's (wall and CPU seconds): what
the fp16-on-the-CPU notice quotes (mimicbrush.devices.FP16_CPU_SLOWDOWN):

    python benchmarks/bench_inference.py --small --device cpu --steps 4 --repeats 3 --dtypes fp32,fp16,bf16
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import contextmanager

import copy

import numpy as np
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
)

from mimicbrush import DepthGuider, ImageProjection, MimicBrushPipeline, PooledProjection
from mimicbrush.acceleration import compile_unets, place_pipeline
from mimicbrush.devices import DTYPES, resolve_device
from mimicbrush.models import backbone
from mimicbrush.scheduling import release_scheduler

SIZES = {
    # the release: SD-1.5 U-Nets, sd-vae-ft-mse, OpenCLIP ViT-H/14, Depth Anything ViT-B/14
    "full": dict(unet_widths=(320, 640, 1280, 1280), heads=8, context=768, vae_widths=(128, 256, 512, 512),
                 vae_layers=2, clip=(1280, 32, 16, 5120), depth=(768, 12, [96, 192, 384, 768], 128), resolution=512),
    # same structure, narrow: for a CPU run in minutes
    "small": dict(unet_widths=(32, 64, 128, 128), heads=4, context=128, vae_widths=(32, 64, 64, 64),
                  vae_layers=1, clip=(256, 4, 4, 512), depth=(192, 4, [48, 96, 192, 192], 32), resolution=256),
    # narrower still, one layer per U-Net block, at 64²: the CPU rehearsal of benchmarks/gpu_check.py
    # (under a second per edit, and half the graph for its compile to capture)
    "tiny": dict(unet_widths=(32, 32, 64, 64), unet_layers=1, heads=2, context=32, vae_widths=(32, 32, 32, 32),
                 vae_layers=1, clip=(64, 2, 2, 128), depth=(64, 3, [16, 32, 64, 64], 16), resolution=64),
}
# The SDXL backbone: SDXL's U-Nets (the published configs, ../shared/spec/MIMICBRUSH.md §8) in place
# of SD-1.5's, the other parts of the SD-1.5 size named by "others" (SDXL's VAE has SD's
# architecture, with its own scaling factor)
_SDXL_BLOCKS = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    use_linear_projection=True, addition_embed_type="text_time")
XL_SIZES = {
    "full": dict(others="full", resolution=1024, unet=dict(
        _SDXL_BLOCKS, block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)),
    # the same structure in miniature: gpu_check's CPU rehearsal
    "tiny": dict(others="tiny", resolution=64, unet=dict(
        _SDXL_BLOCKS, block_out_channels=(32, 32, 64), layers_per_block=1, transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 2, 4), cross_attention_dim=48, addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32)),
}
SDXL_VAE_SCALING_FACTOR = 0.13025
# the modes that share one eager pipeline: name -> (faithful flag, reference timestep of the model's kind)
EAGER_VARIANTS = {"faithful": (True, None), "fast": (False, None), "fast-t0": (False, 0)}


def build_components(size: dict) -> dict:
    def unet(in_channels: int) -> UNet2DConditionModel:
        return UNet2DConditionModel(
            in_channels=in_channels, block_out_channels=size["unet_widths"],
            layers_per_block=size.get("unet_layers", 2),
            cross_attention_dim=size["context"], attention_head_dim=size["heads"],
            sample_size=size["resolution"] // 8,
        )

    hidden, layers, heads, mlp = size["clip"]
    depth_hidden, depth_layers, neck, fusion = size["depth"]
    return dict(
        unet=unet(13),
        reference_unet=unet(4),
        vae=AutoencoderKL(
            block_out_channels=size["vae_widths"], layers_per_block=size["vae_layers"], latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=32,
        ),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
            patch_size=14, image_size=224, projection_dim=1024,
        )),
        image_proj=ImageProjection(hidden, size["context"]),
        depth_estimator=DepthAnythingForDepthEstimation(DepthAnythingConfig(
            backbone_config=Dinov2Config(
                hidden_size=depth_hidden, num_hidden_layers=depth_layers, num_attention_heads=depth_hidden // 64,
                patch_size=14, image_size=518, apply_layernorm=True, reshape_hidden_states=False,
                out_indices=list(range(depth_layers - 3, depth_layers + 1)),
            ),
            patch_size=14, reassemble_hidden_size=depth_hidden, neck_hidden_sizes=neck, fusion_hidden_size=fusion,
        )),
        depth_guider=DepthGuider(resolution=size["resolution"]),
    )


def build_xl_components(size_name: str) -> dict:
    """The components of XL_SIZES[size_name]: SDXL-shaped U-Nets, their image and pooled projections."""
    xl = XL_SIZES[size_name]
    components = build_components({**SIZES[xl["others"]], "resolution": xl["resolution"]})
    hidden = components["image_encoder"].config.hidden_size

    def unet(in_channels: int) -> UNet2DConditionModel:
        return UNet2DConditionModel(in_channels=in_channels, sample_size=xl["resolution"] // 8, **xl["unet"])

    components.update(unet=unet(13), reference_unet=unet(4),
                      image_proj=ImageProjection(hidden, xl["unet"]["cross_attention_dim"]))
    components["pooled_proj"] = PooledProjection(hidden, backbone.pooled_width(components["unet"].config))
    components["vae"].register_to_config(scaling_factor=SDXL_VAE_SCALING_FACTOR)  # force_upcast: the default
    return components


def random_pipeline(size: dict, device: torch.device, dtype: torch.dtype) -> MimicBrushPipeline:
    """Components built on the meta device, then filled on `device` with the parity kit's kind of
    random values (fan-in scaled weights, unit norms), so activations stay finite in fp16."""
    with init_empty_weights():
        components = build_components(size)
    return _filled_pipeline(components, device, dtype)


def fill_random(module: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                generator: torch.Generator) -> torch.nn.Module:
    """Materialise a meta-device module on `device` directly in `dtype` (no float32 copy first:
    the real-size XL pipeline is 12 GB in bf16 and would pass 24 GB in float32) and fill it with
    the parity kit's kind of random values: fan-in scaled weights, unit norms, small biases. One
    `normal_` per tensor: seconds per billion parameters on a CPU, where diffusers' own
    initialisation would first build every module in float32."""
    module.to(dtype)  # on the meta device: only the dtype changes (integer buffers keep theirs)
    module.to_empty(device=device)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        with torch.no_grad():
            if not tensor.is_floating_point():  # position ids (to_empty left them uninitialised)
                tensor.copy_(torch.arange(tensor.shape[-1], device=device).expand_as(tensor))
            elif name.endswith(".bias") or tensor.ndim == 1 and not name.endswith("weight"):
                tensor.normal_(0, 0.02, generator=generator)
            elif tensor.ndim == 1:
                tensor.normal_(1, 0.1, generator=generator)
            else:
                tensor.normal_(0, 1 / math.sqrt(max(1, tensor[0].numel())), generator=generator)
    return module.eval()


def _filled_pipeline(components: dict, device: torch.device, dtype: torch.dtype) -> MimicBrushPipeline:
    generator = torch.Generator(device).manual_seed(0)
    for module in components.values():
        fill_random(module, device, dtype, generator)
    pipe = MimicBrushPipeline(**components, scheduler=release_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def configured_pipeline(config_path: str, device: torch.device, dtype: torch.dtype) -> MimicBrushPipeline:
    """The architecture of a training config's `model:` section at its data resolution, with the
    trainer's own seeded initialisation (what a run starts from)."""
    from mimicbrush.training import load_train_config
    from mimicbrush.training.components import build_components as build_configured_components

    config = load_train_config(config_path)
    components = build_configured_components(config.model, config.data.resolution, config.seed)
    pipe = MimicBrushPipeline(**components)
    pipe.to(device, dtype)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_backbone_available() -> bool:
    """Whether this package has the SDXL backbone (its pipeline then takes the pooled projection,
    `pooled_proj`, that SDXL's added conditions need)."""
    return "pooled_proj" in inspect.signature(MimicBrushPipeline.__init__).parameters


def random_xl_pipeline(size: str, device: torch.device, dtype: torch.dtype) -> MimicBrushPipeline:
    """A pipeline with the SDXL backbone and random weights, as `random_pipeline` builds the SD-1.5
    one: size "full" (SDXL's U-Nets, for 1024² edits) or "tiny" (gpu_check's CPU rehearsal).
    benchmarks/gpu_check.py's `xl` section calls this once `sdxl_backbone_available()`."""
    with init_empty_weights():
        components = build_xl_components(size)
    return _filled_pipeline(components, device, dtype)


@contextmanager
def model_kind(pipe, reference_timestep: int | None):
    """Time `pipe` as a model of the given kind (the weights do not change the cost)."""
    saved = pipe.config.reference_timestep
    pipe.register_to_config(reference_timestep=reference_timestep)
    try:
        yield
    finally:
        pipe.register_to_config(reference_timestep=saved)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class ComponentTimes:
    """Per timed module: wall seconds, this process's CPU seconds (all its threads: above the wall
    time when several cores work, below it when the machine is shared), calls, first call's start.
    (A plain class: tests load this script by path, where a dataclass cannot find its module.)"""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.first_start: dict[str, float] = {}

    def as_dict(self) -> dict:
        return {name: {"calls": self.calls[name], "s": round(self.wall[name], 3), "cpu_s": round(self.cpu[name], 3)}
                for name in self.wall}


def unets(pipe) -> dict[str, torch.nn.Module]:
    return {"reference_unet": pipe.reference_unet, "unet": pipe.unet}


def edit_stages(pipe) -> dict[str, torch.nn.Module]:
    """The modules a single edit is timed by: the encoders, the VAE's encoder and decoder, each U-Net."""
    return {"image_encoder": pipe.image_encoder, "depth_estimator": pipe.depth_estimator,
            "depth_guider": pipe.depth_guider, "vae_encoder": pipe.vae.encoder, "vae_decoder": pipe.vae.decoder,
            **unets(pipe)}


@contextmanager
def component_timer(modules: dict[str, torch.nn.Module], device: torch.device, times: ComponentTimes):
    """Add each module's forward time to `times` (synchronising, so only for a separate run)."""
    hooks, starts = [], {}
    for name, module in modules.items():

        def before(module, args, name=name):
            synchronize(device)
            starts[name] = (time.perf_counter(), time.process_time())
            times.first_start.setdefault(name, starts[name][0])

        def after(module, args, output, name=name):
            synchronize(device)
            wall, cpu = starts.pop(name)
            times.wall[name] = times.wall.get(name, 0.0) + time.perf_counter() - wall
            times.cpu[name] = times.cpu.get(name, 0.0) + time.process_time() - cpu
            times.calls[name] = times.calls.get(name, 0) + 1

        hooks.append(module.register_forward_pre_hook(before))
        hooks.append(module.register_forward_hook(after, always_call=True))  # also on early exit
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def edit_inputs(resolution: int, references: int = 1):
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    reference = rng.integers(0, 256, (600, 400, 3), dtype=np.uint8)
    return dict(source_image=source, mask_image="200,120,440,360", resolution=resolution,
                reference_image=reference if references == 1 else [reference] * references)


def time_edit(pipe, device, resolution: int, steps: int, faithful: bool, references: int = 1) -> float:
    synchronize(device)
    start = time.perf_counter()
    pipe(**edit_inputs(resolution, references), num_inference_steps=steps, guidance_scale=5.0,
         generator=torch.Generator("cpu").manual_seed(1), faithful=faithful)
    synchronize(device)
    return time.perf_counter() - start


def resident_gib() -> float:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * resource.getpagesize() / 2**30


def reference_memory(pipe, device, resolution: int, steps: int, references: int) -> dict:
    """Peak memory of one edit with `references` references, in a process that ran nothing else."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        time_edit(pipe, device, resolution, steps, False, references)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_allocated_gib": round(peak / 2**30, 4), "edit_gib": round((peak - before) / 2**30, 4)}
    before = resident_gib()
    time_edit(pipe, device, resolution, steps, False, references)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"process_peak_rss_gib": round(peak, 4), "edit_gib": round(peak - before, 4)}


def measure_references(pipe, device, args, resolution: int, counts: list[int]) -> dict:
    """Time per count (fast path) interleaved repeat by repeat; memory per count from a child
    process each; ratios to the first count."""
    import subprocess

    for count in counts:
        time_edit(pipe, device, resolution, args.steps, False, count)  # warm-up
    seconds = {count: [] for count in counts}
    # CPU seconds of this process too: on a shared CPU the wall time includes waiting for a core
    cpu_seconds = {count: [] for count in counts}
    for _ in range(args.repeats):
        for count in counts:
            start = time.process_time()
            seconds[count].append(time_edit(pipe, device, resolution, args.steps, False, count))
            cpu_seconds[count].append(time.process_time() - start)
    memory = {}
    for count in counts:
        command = [sys.executable, __file__, "--device", str(device), "--steps", str(args.steps),
                   "--resolutions", str(resolution), "--memory-of-references", str(count)]
        command += ["--small"] if args.small else []
        command += ["--model-config", args.model_config] if args.model_config else []
        command += ["--dtype", args.dtype] if args.dtype else []
        command += ["--backbone", args.backbone]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        memory[count] = json.loads(result.stdout)
    first = counts[0]
    results = {}
    for count in counts:
        median = statistics.median(seconds[count])
        results[str(count)] = {
            "median_s_per_edit": round(median, 4),
            "all_s": [round(value, 4) for value in seconds[count]],
            "median_cpu_s_per_edit": round(statistics.median(cpu_seconds[count]), 4),
            "all_cpu_s": [round(value, 4) for value in cpu_seconds[count]],
            **memory[count],
            "time_ratio": round(median / statistics.median(seconds[first]), 3),
            "cpu_time_ratio": round(statistics.median(cpu_seconds[count]) / statistics.median(cpu_seconds[first]), 3),
            "edit_memory_ratio": round(memory[count]["edit_gib"] / max(memory[first]["edit_gib"], 1e-9), 3),
        }
    return results


def measure_dtypes(pipe, device, args, resolution: int, names: list[str]) -> dict:
    """The default path with `pipe`'s weights cast to each dtype, timed interleaved repeat by
    repeat (wall and this process's CPU seconds); each dtype's times over the first's, of the
    medians and of the minima (on a shared CPU the minimum is the least disturbed run)."""
    pipes = {name: copy.deepcopy(pipe).to(dtype=DTYPES[name]) for name in names}
    for name in names:
        time_edit(pipes[name], device, resolution, args.steps, False)  # warm-up
    seconds = {name: [] for name in names}
    cpu_seconds = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            start = time.process_time()
            seconds[name].append(time_edit(pipes[name], device, resolution, args.steps, False))
            cpu_seconds[name].append(time.process_time() - start)
    first = names[0]
    results = {}
    for name in names:
        median, median_cpu = statistics.median(seconds[name]), statistics.median(cpu_seconds[name])
        results[name] = {
            "median_s_per_edit": round(median, 4),
            "min_s_per_edit": round(min(seconds[name]), 4),
            "all_s": [round(value, 4) for value in seconds[name]],
            "median_cpu_s_per_edit": round(median_cpu, 4),
            "all_cpu_s": [round(value, 4) for value in cpu_seconds[name]],
            f"time_vs_{first}": round(median / statistics.median(seconds[first]), 3),
            f"cpu_time_vs_{first}": round(median_cpu / statistics.median(cpu_seconds[first]), 3),
            f"min_time_vs_{first}": round(min(seconds[name]) / min(seconds[first]), 3),
        }
    return results


def measure(pipe, device, resolution: int, steps: int, repeats: int,
            variants: dict[str, tuple[bool, int | None]]) -> dict:
    """Time each variant (name → faithful flag, reference timestep of the model's kind) on the
    same pipeline, interleaved repeat by repeat so that drift in the machine's load hits every
    variant alike."""
    def timed(variant, steps):
        faithful, reference_timestep = variant
        with model_kind(pipe, reference_timestep):
            return time_edit(pipe, device, resolution, steps, faithful)

    for variant in variants.values():
        timed(variant, steps)  # warm-up: kernels, allocator, compilation
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = {name: [] for name in variants}
    one_step = {name: [] for name in variants}
    for _ in range(repeats):
        for name, variant in variants.items():
            seconds[name].append(timed(variant, steps))
            # the fixed cost (encoders, VAE) from a one-step edit, to separate the per-step cost
            one_step[name].append(timed(variant, 1))
    results = {}
    for name, variant in variants.items():
        median, fixed = statistics.median(seconds[name]), statistics.median(one_step[name])
        per_step = (median - fixed) / max(steps - 1, 1)
        components = ComponentTimes()
        with component_timer(unets(pipe), device, components):
            timed(variant, steps)
        results[name] = {
            "median_s_per_edit": round(median, 4),
            "min_s_per_edit": round(min(seconds[name]), 4),
            "all_s": [round(value, 4) for value in seconds[name]],
            "ms_per_step": round(1000 * per_step, 2),
            "s_outside_loop": round(fixed - per_step, 4),
            "components_ms_per_step": {key: round(1000 * total / steps, 2) for key, total in components.wall.items()},
            "steps": steps,
        }
        results[name].update(peak_memory(device))
    return results


def peak_memory(device: torch.device) -> dict:
    """Peak GPU memory since the last reset (allocated and reserved); on a CPU the process's peak
    RSS, which only grows."""
    if device.type == "cuda":
        return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3)}
    return {"process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def pasted_back(inputs: dict, output) -> dict:
    """The edit's output against its source: sizes, whether every pixel farther from the mask than
    the paste-back's feathering is the source's, and whether the masked region changed."""
    from mimicbrush import editing, imaging

    source_image, mask_image = imaging.load_source_and_mask(inputs["source_image"], inputs["mask_image"])
    source, mask = np.asarray(source_image), imaging.binary_mask(mask_image).astype(bool)
    image = np.asarray(output.images[0])
    same_shape = image.shape == source.shape
    outside = ~editing.feather_band(mask)
    return {"size": list(output.images[0].size), "source_size": list(source_image.size),
            "model_image_size": list(output.model_images[0].size),
            "outside_mask_unchanged": same_shape and bool(np.array_equal(image[outside], source[outside])),
            "inside_mask_changed": same_shape and not np.array_equal(image[mask], source[mask])}


def single_edit(pipe, device: torch.device, resolution: int, steps: int) -> dict:
    """One edit (the first in this process: it also computes the per-model constants, the CLIP
    and depth passes on all-zero inputs), timed by stage and by denoising step, wall and CPU
    seconds, with its peak memory and its output checked: the source's size, and every pixel
    outside the mask the source's. For sizes where `measure`'s warm-up and repeats cost too much:
    the real-size XL on a CPU, minutes a step."""
    inputs = edit_inputs(resolution)
    times, step_ends = ComponentTimes(), []

    def step_end(pipe, step, timestep, values):
        synchronize(device)
        step_ends.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else resident_gib() * 2**30
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    with component_timer(edit_stages(pipe), device, times):
        output = pipe(**inputs, num_inference_steps=steps, guidance_scale=5.0,
                      generator=torch.Generator("cpu").manual_seed(1), callback_on_step_end=step_end)
    synchronize(device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    memory = peak_memory(device)
    peak = memory.get("peak_allocated_gib", memory.get("process_peak_rss_gib")) * 2**30
    loop_start = min(times.first_start[name] for name in unets(pipe))
    step_seconds = np.diff([loop_start, *step_ends])
    return {
        "steps": steps,
        "s_per_edit": round(wall, 3),
        "cpu_s_per_edit": round(cpu, 3),
        "s_per_step": round(float(np.mean(step_seconds)), 3),
        "all_step_s": [round(float(value), 3) for value in step_seconds],
        "s_outside_loop": round(wall - float(np.sum(step_seconds)), 3),
        "stages": times.as_dict(),
        **memory,
        "edit_gib": round((peak - before) / 2**30, 3),
        "output": pasted_back(inputs, output),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else the CPU), cpu, cuda, mps")
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                        help="default fp16 on CUDA and MPS, fp32 on the CPU (mimicbrush.devices)")
    parser.add_argument("--small", action="store_true", help="narrow model (CPU-sized), resolution 256; with "
                        "--backbone sdxl the XL structure in miniature at 64²")
    parser.add_argument("--backbone", choices=["sd15", "sdxl"], default="sd15",
                        help="sdxl: SDXL's U-Nets at 1024² (random_xl_pipeline) in place of SD-1.5's at 512²")
    parser.add_argument("--model-config", help="a training config whose model: section (freshly initialised, at "
                        "its data resolution) is timed instead, e.g. configs/demo-model.yaml")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="faithful,fast,compile,offload-model,offload-sequential",
                        help="also fast-t0: fast, as the kind of model whose reference U-Net runs once per edit")
    parser.add_argument("--resolutions", default=None, help="comma list, e.g. 512,768 (default: the model's)")
    parser.add_argument("--sequential-steps", type=int, default=3, help="steps for offload-sequential (slow)")
    parser.add_argument("--references", help="comma list of reference counts, e.g. 1,2,4: time and memory "
                        "of the default path with that many references, instead of --modes")
    parser.add_argument("--single-edit", action="store_true", help="one edit of --steps steps instead of "
                        "--modes, timed by stage and step with its peak memory and output checked (the real-size "
                        "XL on a CPU: minutes a step)")
    parser.add_argument("--memory-of-references", type=int, help=argparse.SUPPRESS)  # the child of --references
    parser.add_argument("--dtypes", help="comma list of dtypes, e.g. fp32,fp16,bf16: the default path's time in "
                        "each (the same weights), interleaved, as a multiple of the first's, instead of --modes")
    parser.add_argument("-o", "--output", help="also write the JSON here")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype or ("fp16" if device.type in ("cuda", "mps") else "fp32")]
    if args.dtypes:
        dtype = torch.float32  # built once in fp32, then cast to each
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    size = SIZES["small" if args.small else "full"]
    modes = args.modes.split(",")
    if device.type != "cuda":
        modes = [mode for mode in modes if not mode.startswith("offload")]

    diffusers_logging.set_verbosity_error()  # casting random modules warns once per module
    load_start, load_cpu_start = time.perf_counter(), time.process_time()
    if args.model_config:
        pipe = configured_pipeline(args.model_config, device, dtype)
    elif args.backbone == "sdxl":
        pipe = random_xl_pipeline("tiny" if args.small else "full", device, dtype)
    else:
        pipe = random_pipeline(size, device, dtype)
    synchronize(device)
    load = {"s": round(time.perf_counter() - load_start, 2), "cpu_s": round(time.process_time() - load_cpu_start, 2),
            **peak_memory(device)}
    resolutions = [int(r) for r in args.resolutions.split(",")] if args.resolutions else [pipe.resolution]
    if args.memory_of_references:
        print(json.dumps(reference_memory(pipe, device, resolutions[0], args.steps, args.memory_of_references)))
        return 0
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "model": (f"{args.model_config} (fresh initialisation)" if args.model_config
                  else f"SDXL backbone, {'tiny' if args.small else 'real'} sizes (random weights)"
                  if args.backbone == "sdxl" else "small" if args.small else "SD-1.5 sizes (random weights)"),
        "parameters": {name: sum(p.numel() for p in module.parameters())
                       for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)},
        "load": load,
        "steps": args.steps,
        "repeats": args.repeats,
        "results": {},
    }
    if args.single_edit:
        del report["repeats"], report["results"]
        # on a shared machine the wall time includes waiting for a core: the load average says how busy it was
        report["load_average_before"] = [round(value, 2) for value in os.getloadavg()]
        report["single_edit"] = {str(resolution): single_edit(pipe, device, resolution, args.steps)
                                 for resolution in resolutions}
        report["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
        return write_report(report, args.output)
    if args.dtypes:
        names = args.dtypes.split(",")
        print(f"timing {', '.join(names)} at {resolutions[0]} ...", file=sys.stderr)
        report["dtypes"] = measure_dtypes(pipe, device, args, resolutions[0], names)
        del report["results"], report["dtype"]
        return write_report(report, args.output)
    if args.references:
        counts = [int(count) for count in args.references.split(",")]
        print(f"timing {', '.join(map(str, counts))} references at {resolutions[0]} ...", file=sys.stderr)
        report["references"] = measure_references(pipe, device, args, resolutions[0], counts)
        del report["results"]
        return write_report(report, args.output)
    # faithful, fast and fast-t0 share the pipeline and differ by a flag or the model's kind: timed interleaved
    eager = {mode: EAGER_VARIANTS[mode] for mode in modes if mode in EAGER_VARIANTS}
    for mode in eager:
        report["results"][mode] = {}
    for resolution in resolutions:
        print(f"timing {', '.join(eager)} at {resolution} ...", file=sys.stderr)
        for mode, result in measure(pipe, device, resolution, args.steps, args.repeats, eager).items():
            report["results"][mode][str(resolution)] = result
    for mode in [mode for mode in modes if mode not in eager]:
        print(f"timing {mode} ...", file=sys.stderr)
        if mode.startswith("offload"):
            pipe.to("cpu")
            place_pipeline(pipe, device, mode.removeprefix("offload-"))
        elif mode == "compile":
            compile_unets(pipe)
        steps = args.sequential_steps if mode == "offload-sequential" else args.steps
        # a compilation per shape costs minutes: `compile` is timed at the first resolution only
        report["results"][mode] = {
            str(resolution): measure(pipe, device, resolution, steps, args.repeats, {mode: (False, None)})[mode]
            for resolution in (resolutions[:1] if mode == "compile" else resolutions)
        }
        if mode.startswith("offload"):
            pipe.remove_all_hooks()
            pipe.to(device)
    report["speedup_vs_faithful"] = {
        mode: speedups(report["results"].get("faithful", {}), results)
        for mode, results in report["results"].items() if mode != "faithful"
    }
    if "fast" in report["results"] and "fast-t0" in report["results"]:
        # the same weights and path, only the model's kind differs
        report["speedup_of_t0_vs_per_step"] = speedups(report["results"]["fast"], report["results"]["fast-t0"])
    return write_report(report, args.output)


def speedups(baseline: dict, results: dict) -> dict:
    """Per resolution: baseline time / this time, per edit and per step (same step counts only)."""
    return {
        res: {
            "per_edit": round(baseline[res]["median_s_per_edit"] / r["median_s_per_edit"], 3),
            "per_step": round(baseline[res]["ms_per_step"] / max(r["ms_per_step"], 1e-9), 3),
        }
        for res, r in results.items() if res in baseline and r["steps"] == baseline[res]["steps"]
    }


def write_report(report: dict, output: str | None) -> int:
    text = json.dumps(report, indent=2)
    print(text)
    if output:
        with open(output, "w") as file:
            file.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
