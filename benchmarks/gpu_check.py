"""The GPU check (issue #23): every GPU question in one command of about 5 minutes on one H100.

    python benchmarks/gpu_check.py -o DIR                         # the whole check, on a CUDA GPU
    python benchmarks/gpu_check.py -o DIR --only speed,memory     # rerun parts
    python benchmarks/gpu_check.py -o DIR --rehearse              # every section, tiny, on the CPU (CI)

Sections, in this order, each under its own time cap and all under --budget seconds:

  parity       the parity kit's tiny cases (its make_weights.py builds the weights there) with
               TF32 off: CUDA fp32 against CPU fp32 (the largest difference of every array the
               kit lists, and the kit's compare.py verdict for each), then fp16 and bf16 against
               CUDA fp32 (PSNR of the model's square output, before paste-back)
  speed        bench_inference's full-size random weights, 512², 50 DDIM steps, fp16, modes
               faithful, fast, fast-t0 and compile (its own cap): seconds per edit and ms per
               step (bench_inference's median of 3 after a warm-up), peak GPU memory, and the
               ratio to the floor: one step's FLOPs (torch.utils.flop_counter) over the peak of an
               8192³ fp16 matrix product measured in this run
  fewer-steps  unipc 12 and euler 8 against ddim 50 on the same weights: time only
  memory       offload `model` and `sequential`: peak GPU memory and time
  batch        `mimicbrush edit --batch` of 8 edits on the random model saved to a folder: throughput
  training     SD-1.5-sized U-Nets in the trainer's objective under bf16 autocast, batch 1, 4 and 8,
               without and with gradient checkpointing: seconds per step and peak memory (running
               out of memory at a size is a result)
  xl           MimicBrush-XL at real size (bench_inference.random_xl_pipeline: two 2.57 B-parameter
               SDXL U-Nets, random weights), a 1024² 50-step fp16 edit: the build's seconds, one
               edit by stage and step (peak GPU memory, paste-back checked), then the fast path's
               median of 2 after a warm-up: seconds per edit, ms per step, peak GPU memory

`--rehearse` runs every section at tiny sizes on the CPU, in the same code: the check cannot rot
between the rare GPU lendings (CI runs it: tests/test_gpu_check.py). There CUDA becomes the CPU
(one thread), the timed edits run in fp32 (fp16 on a CPU is slow and tells nothing; parity still
compares fp16 and bf16), peak GPU memory becomes the process's peak RSS (labelled so), and compile
captures its graphs without generating code.

DIR/gpu-check.json is rewritten after every section (a call stopped at its time limit keeps what
was done), DIR/gpu-check.md holds the tables (also printed at the end). A section that fails
records its error and the next one runs. Exit status 0 when every section gave a result, 1 when
one failed or ran out of time, 2 for bad arguments. How to run it on the lent GPU machine:
docs/performance.md, "Running the GPU check".
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inference as bench  # noqa: E402  (the modes, the random full-size weights, the timing)

from mimicbrush.benchmark.metrics import psnr  # noqa: E402
from mimicbrush.fileio import write_atomic  # noqa: E402
from mimicbrush.loading import DTYPES  # noqa: E402

SECTION_NAMES = ("parity", "speed", "fewer-steps", "memory", "batch", "training", "xl")
DEFAULT_KITS = (ROOT / ".parity-kit", ROOT.parent / "shared" / "parity")  # the carried copy, then CI's
MIN_SECTION_S = 5.0  # a section with less left of the budget is not started
GIB = 2**30


@dataclass(frozen=True)
class Plan:
    """What the check runs: the GPU's sizes or the rehearsal's (the code is the same)."""

    size: str  # bench_inference.SIZES key of the random pipelines (the resolution comes with it)
    dtype: str  # of the timed edits and the matrix product that gives the peak (loading.DTYPES key)
    threads: int | None  # torch's CPU threads (None: torch's default)
    steps: int  # DDIM steps of a timed edit
    repeats: int  # timed edits after the warm-up; the median is reported
    matmul_side: int  # the square matrix product whose rate is the peak
    compile_backend: str
    compile_cap_s: float
    parity_cases: tuple[str, ...]
    parity_steps: int | None  # None: each case's own
    parity_resolution: int | None  # None: the kit's 512
    parity_depth_input_size: int | None  # None: the kit's 518 (the depth model's input side)
    fewer_steps: tuple[tuple[str, int], ...]
    offload_steps: tuple[tuple[str, int], ...]  # timed steps per offload mode (per-step cost × 50 gives the edit)
    batch_edits: int
    train_resolution: int
    train_batches: tuple[int, ...]
    train_steps: int  # timed optimizer steps per configuration, after one warm-up step
    xl_size: str
    xl_repeats: int  # timed edits of the xl section after bench_inference's warm-up (and its single edit)
    caps: dict[str, float] = field(default_factory=dict)
    budget_s: float = 360.0


GPU_PLAN = Plan(
    size="full", dtype="fp16", threads=None, steps=50, repeats=3, matmul_side=8192, compile_backend="inductor",
    compile_cap_s=100,
    parity_cases=("tiny_a", "tiny_b", "tiny_c"), parity_steps=None, parity_resolution=None,
    parity_depth_input_size=None,
    fewer_steps=(("unipc", 12), ("euler", 8)), offload_steps=(("model", 10), ("sequential", 3)),
    batch_edits=8, train_resolution=512, train_batches=(1, 4, 8), train_steps=3, xl_size="full", xl_repeats=2,
    caps={"parity": 90, "speed": 160, "fewer-steps": 40, "memory": 75, "batch": 75, "training": 90, "xl": 90},
    budget_s=360,
)
# fp32 and one thread: on the CPU fp16 is slow and tells nothing, and a second thread only adds
# synchronisation to tensors this small (a 3-step tiny edit, measured on the shared 2-core machine:
# 0.24 CPU s in fp32 with one thread, 1.34 in fp16, 5.5 in fp32 with two threads)
REHEARSAL_PLAN = Plan(
    size="tiny", dtype="fp32", threads=1, steps=3, repeats=1, matmul_side=256, compile_backend="eager",
    compile_cap_s=90,
    # tiny_a has no shape control: its depth input is all zeros, and at 56² (4×4 patches) the kit's
    # ViT-S depth model costs nothing instead of most of the section
    parity_cases=("tiny_a",), parity_steps=2, parity_resolution=64, parity_depth_input_size=56,
    fewer_steps=(("unipc", 2), ("euler", 2)), offload_steps=(("model", 2), ("sequential", 2)),
    batch_edits=2, train_resolution=64, train_batches=(1, 2), train_steps=1, xl_size="tiny", xl_repeats=1,
    # about 47 CPU seconds in all (measured on the shared 2-core machine); the caps leave room for a busy one
    caps={name: 120 for name in SECTION_NAMES}, budget_s=480,
)


class TimeCapReached(BaseException):
    """A time cap expired. BaseException, like KeyboardInterrupt: code that catches Exception
    (compile's fallback to eager, say) must not swallow it."""

    def __init__(self, label: str, seconds: float):
        super().__init__(f"{label}: stopped at its time cap of {seconds:.0f} s")
        self.label = label


class TimeCaps:
    """Nested time caps on the main thread: SIGALRM raises TimeCapReached for the innermost cap
    that is due, in whatever code runs then."""

    def __init__(self):
        self.active: list[tuple[float, str, float]] = []  # (due, label, seconds)
        self.previous_handler = signal.signal(signal.SIGALRM, self._expire)

    def close(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous_handler)

    @contextlib.contextmanager
    def limit(self, seconds: float, label: str):
        entry = (time.monotonic() + seconds, label, seconds)
        self.active.append(entry)
        self._arm()
        try:
            yield
        finally:
            self.active.remove(entry)
            self._arm()

    def _arm(self) -> None:
        if not self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        due = min(entry[0] for entry in self.active)
        signal.setitimer(signal.ITIMER_REAL, max(due - time.monotonic(), 0.001))

    def _expire(self, signum, frame) -> None:
        due = [entry for entry in self.active if entry[0] <= time.monotonic() + 0.001]
        if not due:  # woke early
            self._arm()
            return
        _, label, seconds = due[-1]
        raise TimeCapReached(label, seconds)


class Skipped(Exception):
    """The section cannot run in this package or on this machine; its reason is its result."""


@dataclass
class Context:
    plan: Plan
    device: torch.device
    kit: Path
    work: Path
    caps: TimeCaps
    say: Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Shared measurements


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def free(device: torch.device) -> None:
    """Return the caching allocator's free blocks (after an item ran out of memory, say)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def release(device: torch.device) -> None:
    """Give back what the last section held: compiled graphs, cached blocks."""
    torch._dynamo.reset()
    free(device)


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:400]}" if text else type(error).__name__


@contextlib.contextmanager
def item(results: dict, key: str, device: torch.device):
    """One measurement of a section: an exception becomes its {"error": ...} and the section goes
    on to the next (a time cap still stops the section: it is no Exception)."""
    failed = False
    try:
        yield
    except Exception as error:
        results[key] = {"error": one_line(error), "traceback": traceback.format_exc().splitlines()[-8:]}
        failed = True
    if failed:  # outside the except: its traceback no longer holds the item's tensors
        free(device)


def matmul_peak(side: int, device: torch.device, dtype: torch.dtype) -> dict:
    """The rate of a side³ matrix product on random data (never zeros: they run faster), the
    median of 10 after 3 warm-ups."""
    generator = torch.Generator(device).manual_seed(0)
    a = torch.randn(side, side, device=device, dtype=dtype, generator=generator)
    b = torch.randn(side, side, device=device, dtype=dtype, generator=generator)
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(10):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - begin)
    median = statistics.median(seconds)
    return {"side": side, "dtype": str(dtype).removeprefix("torch."), "median_ms": significant(1000 * median),
            "tflops": significant(2 * side**3 / median / 1e12)}


def significant(value: float, digits: int = 4) -> float:
    """`value` to a few significant digits (a CPU's TFLOP/s would round to 0 at fixed decimals)."""
    return float(f"{value:.{digits}g}")


def step_flops(pipe, device: torch.device, resolution: int, variant: tuple[bool, int | None]) -> float:
    """FLOPs of one denoising step on this path: a 2-step edit's count minus a 1-step edit's, so
    what runs once per edit cancels (after a warm-up edit has cached the per-model constants)."""
    faithful, reference_timestep = variant
    counts = []
    with bench.model_kind(pipe, reference_timestep):
        bench.time_edit(pipe, device, resolution, 1, faithful)
        for steps in (1, 2):
            with FlopCounterMode(display=False) as counter:
                bench.time_edit(pipe, device, resolution, steps, faithful)
            counts.append(counter.get_total_flops())
    return float(counts[1] - counts[0])


def against_floor(timing: dict, flops: float, peak: dict) -> dict:
    """bench_inference's timing, with the step's floor (FLOPs at the measured peak) and the ratio."""
    floor_ms = flops / (peak["tflops"] * 1e12) * 1000
    return {**timing, "tflops_per_step": significant(flops / 1e12), "floor_ms_per_step": significant(floor_ms),
            "ratio_to_floor": significant(timing["ms_per_step"] / floor_ms, 3) if floor_ms > 0 else None}


def random_pipeline(ctx: Context):
    return bench.random_pipeline(bench.SIZES[ctx.plan.size], ctx.device, DTYPES[ctx.plan.dtype])


# ---------------------------------------------------------------------------------------------
# Sections: each fills `result` as it goes, so a timeout or an error keeps what was measured


def check_parity(ctx: Context, result: dict) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import parity_kit  # how the tests run the kit's cases through our pipeline and capture its arrays

    from mimicbrush import MimicBrushPipeline

    plan, kit = ctx.plan, ctx.kit
    if not (kit / "cases.json").is_file():
        raise FileNotFoundError(f"parity kit not found at {kit} (benchmarks/gpu_check_prepare.sh copies it "
                                "to .parity-kit, or pass --kit)")
    weights, result["weights"] = kit_weights(kit, ctx.work / "parity-TINY")
    pipe = MimicBrushPipeline.from_pretrained(weights)
    pipe.set_progress_bar_config(disable=True)
    if plan.parity_depth_input_size:
        pipe.register_to_config(depth_input_size=plan.parity_depth_input_size)
    cases = {case["name"]: case for case in json.loads((kit / "cases.json").read_text())["cases"]}
    options = {"resolution": plan.parity_resolution} if plan.parity_resolution else {}
    # the kit's expected arrays are the release's fp32 CPU run on the kit's own numbers
    result["kit_verdict_applies"] = (result["weights"]["hashes_match"] and plan.parity_steps is None
                                     and plan.parity_resolution is None and plan.parity_depth_input_size is None)
    result["cases"] = {}
    for name in plan.parity_cases:
        case = dict(cases[name], steps=plan.parity_steps or cases[name]["steps"])
        entry = result["cases"][name] = {"steps": case["steps"], "keep_shape": case["keep_shape"]}
        ctx.say(f"parity: {name}, CPU fp32")
        pipe.to(torch.device("cpu"), torch.float32)
        cpu = parity_kit.run_case(pipe, case, kit, **options)
        ctx.say(f"parity: {name}, {ctx.device.type} fp32, TF32 off")
        with exact_fp32():
            pipe.to(ctx.device)
            device_fp32 = parity_kit.run_case(pipe, case, kit, **options)
        entry["fp32_device_vs_cpu"] = largest_differences(device_fp32, cpu)
        entry["kit_compare"] = {
            "cpu_fp32": kit_compare(kit, case, cpu, ctx.work / f"{name}-cpu-fp32.npz"),
            "device_fp32": kit_compare(kit, case, device_fp32, ctx.work / f"{name}-device-fp32.npz"),
        }
        for label, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            ctx.say(f"parity: {name}, {ctx.device.type} {label}")
            pipe.to(ctx.device, dtype)
            half = parity_kit.run_case(pipe, case, kit, **options)
            levels = np.abs(half["pred_512"].astype(np.int16) - device_fp32["pred_512"].astype(np.int16))
            entry[f"{label}_vs_fp32"] = {"psnr_db": round(psnr(half["pred_512"], device_fp32["pred_512"]), 2),
                                         "max_level_diff": int(levels.max()),
                                         "final_latents_max_abs": round(float(np.abs(
                                             half["final_latents"] - device_fp32["final_latents"]).max()), 4)}


@contextlib.contextmanager
def exact_fp32():
    """TF32 off for matrix products and convolutions: the kit's condition for a GPU run."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def kit_weights(kit: Path, target: Path) -> tuple[Path, dict]:
    """The kit's TINY release-layout folder, written by its make_weights.py once per work folder.
    Its tensor hashes were made with torch 2.13 on an x86 CPU; another torch may draw other numbers
    (make_weights.py then still writes every file and exits 2): the kit's expected arrays no longer
    apply, CUDA against CPU on the same weights still does."""
    record = target / ".gpu-check-weights.json"
    if record.is_file():
        return target, json.loads(record.read_text())
    start = time.perf_counter()
    made = subprocess.run([sys.executable, str(kit / "make_weights.py"), "--size", "tiny", "--out", str(target)],
                          capture_output=True, text=True)
    lines = (made.stdout + made.stderr).strip().splitlines() or [""]
    if made.returncode not in (0, 2) or not (target / "mimicbrush" / "mimicbrush.bin").is_file():
        raise RuntimeError(f"make_weights.py failed (exit {made.returncode}): {lines[-1]}")
    info = {"hashes_match": made.returncode == 0, "make_weights_s": round(time.perf_counter() - start, 1),
            "make_weights_said": lines[-1][:300]}
    record.write_text(json.dumps(info))
    return target, info


def largest_differences(actual: dict[str, np.ndarray], baseline: dict[str, np.ndarray]) -> dict:
    """Max |difference| per array (images in 8-bit levels), and the float array that differs most
    relative to its own magnitude."""
    differences, worst = {}, None
    for name in sorted(set(actual) & set(baseline)):
        if actual[name].shape != baseline[name].shape:
            differences[name] = f"shape {actual[name].shape} != {baseline[name].shape}"
            continue
        difference = float(np.abs(actual[name].astype(np.float64) - baseline[name].astype(np.float64)).max())
        differences[name] = difference
        scale = float(np.abs(baseline[name]).max())
        if baseline[name].dtype.kind == "f" and scale > 0 and (worst is None or difference / scale > worst[2]):
            worst = (name, difference, difference / scale)
    largest = {"array": worst[0], "max_abs": worst[1], "relative_to_its_max": worst[2]} if worst else None
    return {"largest": largest, "max_abs": differences}


def kit_compare(kit: Path, case: dict, arrays: dict[str, np.ndarray], path: Path) -> dict:
    """The kit's own compare.py on these arrays: within its tolerances or not, and which fail."""
    np.savez(path, **{name: value for name, value in arrays.items() if name in case["arrays"]})
    compared = subprocess.run([sys.executable, str(kit / "compare.py"), "--case", case["name"], "--actual", str(path)],
                              capture_output=True, text=True)
    if compared.returncode not in (0, 1):
        return {"error": f"compare.py exit {compared.returncode}: {(compared.stdout + compared.stderr).strip()[-300:]}"}
    outside = [line.split()[0] for line in compared.stdout.splitlines()
               if line.split() and line.split()[0] in case["arrays"] and (" NO" in line or "!= expected" in line)]
    return {"within_tolerance": compared.returncode == 0, "outside": outside}


def check_speed(ctx: Context, result: dict) -> None:
    device, plan = ctx.device, ctx.plan
    ctx.say(f"speed: the {plan.dtype} matrix-product peak")
    result["matmul_peak"] = peak = matmul_peak(plan.matmul_side, device, DTYPES[plan.dtype])
    pipe = random_pipeline(ctx)
    resolution = pipe.resolution
    result.update(model=f"bench_inference {plan.size} (random weights)", resolution=resolution, steps=plan.steps,
                  dtype=plan.dtype, repeats=plan.repeats, modes={})
    if device.type != "cuda":
        result["flops_note"] = "the CPU's attention kernel has no FLOP formula in torch.utils.flop_counter: not counted"
    flops = {}
    for mode, variant in bench.EAGER_VARIANTS.items():
        ctx.say(f"speed: {mode}")
        with item(result["modes"], mode, device):
            flops[mode] = step_flops(pipe, device, resolution, variant)
            timing = bench.measure(pipe, device, resolution, plan.steps, plan.repeats, {mode: variant})[mode]
            result["modes"][mode] = against_floor(timing, flops[mode], peak)
    ctx.say(f"speed: compile ({plan.compile_backend}, its own cap of {plan.compile_cap_s:.0f} s)")
    # last: compiling changes the U-Nets for good
    with item(result["modes"], "compile", device):
        result["modes"]["compile"] = compiled_timing(ctx, pipe, resolution, flops.get("fast"), peak)


def compiled_timing(ctx: Context, pipe, resolution: int, fast_flops: float | None, peak: dict) -> dict:
    """The fast path with compiled U-Nets: the first edit (which compiles), then bench_inference's
    timing. Its floor is fast's FLOPs (the same work; compiled graphs cannot be counted eagerly)."""
    device, plan = ctx.device, ctx.plan
    torch._dynamo.utils.counters.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with ctx.caps.limit(plan.compile_cap_s, "compile"):
                bench.compile_unets(pipe, backend=plan.compile_backend)
                first = bench.time_edit(pipe, device, resolution, plan.steps, False)
                timing = bench.measure(pipe, device, resolution, plan.steps, plan.repeats, {"compile": (False, None)})
        except TimeCapReached as reached:
            if reached.label != "compile":
                raise
            return {"error": f"timed out: compiling and timing took longer than its cap of {plan.compile_cap_s:.0f} s"}
    fallback = [str(warning.message) for warning in caught if "torch.compile failed" in str(warning.message)]
    if fallback:
        return {"error": f"compile fell back to eager: {fallback[0][:300]}"}
    stats = torch._dynamo.utils.counters["stats"]
    timed = against_floor(timing["compile"], fast_flops, peak) if fast_flops is not None else timing["compile"]
    return {**timed, "backend": plan.compile_backend,
            "first_edit_s": round(first, 2), "unique_graphs": stats.get("unique_graphs", 0),
            "floor_from": "fast's FLOPs"}


def check_fewer_steps(ctx: Context, result: dict) -> None:
    from mimicbrush.samplers import use_sampler

    plan, device = ctx.plan, ctx.device
    pipe = random_pipeline(ctx)
    result.update(resolution=pipe.resolution, dtype=plan.dtype, note="time only: random weights say nothing of quality",
                  schedulers={})
    baseline = None
    for name, steps in (("ddim", plan.steps), *plan.fewer_steps):
        ctx.say(f"fewer-steps: {name} {steps}")
        with item(result["schedulers"], f"{name} {steps}", device):
            use_sampler(pipe, name)
            timing = bench.measure(pipe, device, pipe.resolution, steps, plan.repeats, {"fast": (False, None)})["fast"]
            baseline = baseline or timing["median_s_per_edit"]
            result["schedulers"][f"{name} {steps}"] = {
                "scheduler": name, "steps": steps, "median_s_per_edit": timing["median_s_per_edit"],
                "ms_per_step": timing["ms_per_step"], "time_vs_ddim": round(timing["median_s_per_edit"] / baseline, 3)}


def check_memory(ctx: Context, result: dict) -> None:
    plan, device = ctx.plan, ctx.device
    pipe = random_pipeline(ctx)
    resolution = pipe.resolution
    result.update(resolution=resolution, dtype=plan.dtype, modes={})
    for mode, steps in plan.offload_steps:
        ctx.say(f"memory: offload {mode} ({steps} steps)")
        with item(result["modes"], mode, device):
            pipe.to("cpu")
            try:
                offload(pipe, device, mode)
            except Skipped as skip:
                result["modes"][mode] = {"skipped": str(skip)}
                continue
            try:
                timing = bench.measure(pipe, device, resolution, steps, 1, {mode: (False, None)})[mode]
            finally:
                pipe.remove_all_hooks()
            # the per-step cost (streaming the U-Nets in) times the check's step count
            estimate = timing["s_outside_loop"] + plan.steps * timing["ms_per_step"] / 1000
            result["modes"][mode] = {**timing, f"estimated_s_per_{plan.steps}_step_edit": round(estimate, 3)}


def offload(pipe, device: torch.device, mode: str) -> None:
    from mimicbrush.acceleration import place_pipeline

    if device.type != "cpu":
        place_pipeline(pipe, device, mode)
    elif mode == "model":  # rehearsal: diffusers' hooks with the CPU as the execution device
        pipe.enable_model_cpu_offload(device=device)
    else:
        raise Skipped("accelerate's sequential offload cannot execute on the CPU (rehearsal only)")


def check_batch(ctx: Context, result: dict) -> None:
    plan, device, work = ctx.plan, ctx.device, ctx.work / "batch"
    shutil.rmtree(work, ignore_errors=True)
    ctx.say("batch: saving the random model")
    pipe = random_pipeline(ctx)
    resolution = pipe.resolution
    start = time.perf_counter()
    pipe.save_pretrained(work / "model", safe_serialization=True)
    result["save_s"] = round(time.perf_counter() - start, 2)
    del pipe
    release(device)
    inputs = bench.edit_inputs(resolution)
    Image.fromarray(inputs["source_image"]).save(work / "source.png")
    Image.fromarray(inputs["reference_image"]).save(work / "reference.png")
    rows = [{"source": "source.png", "reference": "reference.png", "box": inputs["mask_image"], "seed": seed,
             "output": f"edit-{seed}.png"} for seed in range(plan.batch_edits)]
    (work / "edits.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    command = [sys.executable, "-m", "mimicbrush", "edit", "--batch", str(work / "edits.jsonl"),
               "-o", str(work / "out"), "--model", str(work / "model"), "--device", device.type,
               "--dtype", plan.dtype, "--steps", str(plan.steps)]
    result.update(edits=plan.batch_edits, steps=plan.steps, resolution=resolution,
                  command="mimicbrush " + " ".join(command[3:]))
    ctx.say(f"batch: {plan.batch_edits} edits through `mimicbrush edit --batch`")
    # this checkout's package, wherever the command runs (PYTHONUNBUFFERED: a line per written edit, as it is written)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    written, start = [], time.perf_counter()
    with open(work / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        try:
            for line in process.stdout:  # one line per written edit
                written.append(time.perf_counter() - start)
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    wall = time.perf_counter() - start
    result.update(exit_status=process.returncode, written=len(written), wall_s=round(wall, 2))
    if process.returncode != 0 or len(written) != plan.batch_edits:
        tail = (work / "stderr.txt").read_text().strip().splitlines()[-1:] or [""]
        result["error"] = (f"edit --batch exit {process.returncode}, {len(written)} of {plan.batch_edits} written: "
                           f"{tail[0][:300]}")
        return
    # the first edit carries the process start and the model load; the rest are the throughput
    steady = (written[-1] - written[0]) / max(len(written) - 1, 1)
    result.update(first_edit_done_s=round(written[0], 2), s_per_edit_after_first=round(steady, 3),
                  edits_per_minute=round(60 / steady, 1) if steady > 0 else None)


def check_training(ctx: Context, result: dict) -> None:
    from mimicbrush.training.components import COMPONENT_ROLES
    from mimicbrush.training.config import OptimConfig
    from mimicbrush.training.objective import MimicBrushObjective
    from mimicbrush.training.trainable import (enable_gradient_checkpointing, freeze_unreached, probe_batch,
                                               set_trainable)
    from mimicbrush.training.trainer import make_optimizer, place_for_training

    plan, device = ctx.plan, ctx.device
    # the paper's trainable components, optimizer and clipping, from its config
    paper = yaml.safe_load((ROOT / "configs" / "train-sd15.yaml").read_text())
    trainable = paper["train"]["trainable"]
    ctx.say("training: building the model")
    pipe = bench.random_pipeline(dict(bench.SIZES[plan.size], resolution=plan.train_resolution), device, torch.float32)
    set_trainable({role: getattr(pipe, role) for role in COMPONENT_ROLES}, trainable)
    objective = MimicBrushObjective(pipe, trainable)
    place_for_training(objective, device, "bf16", gradient_checkpointing=False)
    side = plan.train_resolution // pipe.vae_scale_factor
    probe = probe_batch(plan.train_resolution, (pipe.vae.config.latent_channels, side, side), pipe.clip_input_size,
                        pipe.config.depth_input_size, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    with autocast:
        freeze_unreached(objective, probe)  # as the trainer does: no optimizer state for what the loss never reaches
    parameters = [parameter for parameter in objective.parameters() if parameter.requires_grad]
    optimizer = make_optimizer(OptimConfig(**{key: paper["optim"][key] for key in ("lr", "weight_decay")}), parameters)
    result.update(resolution=plan.train_resolution, mixed_precision="bf16 autocast, float32 weights",
                  trainable=trainable,
                  trainable_parameters_m=round(sum(p.numel() for p in parameters) / 1e6, 1),
                  optimizer="AdamW (the trainer's make_optimizer)", max_grad_norm=paper["train"]["max_grad_norm"],
                  configurations={})

    def step(batch) -> None:
        with autocast:
            loss = objective(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, paper["train"]["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.bank.clear()

    for checkpointing in (False, True):
        if checkpointing:
            enable_gradient_checkpointing(objective.trainable.values())
        for batch_size in plan.train_batches:
            label = f"batch {batch_size}, checkpointing {'on' if checkpointing else 'off'}"
            ctx.say(f"training: {label}")
            with item(result["configurations"], label, device):
                result["configurations"][label] = {"batch": batch_size, "gradient_checkpointing": checkpointing,
                                                   **train_steps(device, step, probe, batch_size, plan.train_steps)}
            optimizer.zero_grad(set_to_none=True)
            objective.bank.clear()
            free(device)


def train_steps(device: torch.device, step: Callable[[dict], None], probe: dict, batch_size: int, count: int) -> dict:
    """Seconds per optimizer step (the median of `count` after a warm-up) and peak memory at this
    batch size; running out of memory is a result."""
    batch = {key: value.expand(batch_size, *value.shape[1:]).contiguous() for key, value in probe.items()}
    reset_peak(device)
    try:
        step(batch)  # warm-up: optimizer state, kernels
        seconds = []
        for _ in range(count):
            bench.synchronize(device)
            start = time.perf_counter()
            step(batch)
            bench.synchronize(device)
            seconds.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        return {"outcome": "out of memory", **bench.peak_memory(device)}
    median = statistics.median(seconds)
    return {"outcome": "ran", "s_per_step": round(median, 3), "all_s": [round(value, 3) for value in seconds],
            "samples_per_s": round(batch_size / median, 2), **bench.peak_memory(device)}


def check_xl(ctx: Context, result: dict) -> None:
    """The SDXL backbone's edit: build (timed), one edit by stage and step (bench_inference's
    single_edit: the first, with its peak memory and its paste-back checked), then the fast path's
    median. Each is recorded as it ends, so a time cap keeps what was measured."""
    if not bench.sdxl_backbone_available():
        raise Skipped("no SDXL backbone in this package")
    plan, device = ctx.plan, ctx.device
    ctx.say(f"xl: building the {plan.xl_size} SDXL-backbone pipeline ({plan.dtype})")
    start = time.perf_counter()
    pipe = bench.random_xl_pipeline(plan.xl_size, device, DTYPES[plan.dtype])
    bench.synchronize(device)
    result.update(model=f"bench_inference.random_xl_pipeline {plan.xl_size!r} (random weights)",
                  build_s=round(time.perf_counter() - start, 1), resolution=pipe.resolution, steps=plan.steps,
                  dtype=plan.dtype, repeats=plan.xl_repeats,
                  unet_parameters={name: sum(p.numel() for p in getattr(pipe, name).parameters())
                                   for name in ("unet", "reference_unet")})
    ctx.say(f"xl: one edit by stage at {pipe.resolution}²")
    with item(result, "single_edit", device):
        result["single_edit"] = bench.single_edit(pipe, device, pipe.resolution, plan.steps)
    ctx.say(f"xl: fast at {pipe.resolution}², median of {plan.xl_repeats}")
    with item(result, "fast", device):
        result["fast"] = bench.measure(pipe, device, pipe.resolution, plan.steps, plan.xl_repeats,
                                       {"fast": (False, None)})["fast"]


SECTIONS: dict[str, Callable[[Context, dict], None]] = {
    "parity": check_parity, "speed": check_speed, "fewer-steps": check_fewer_steps, "memory": check_memory,
    "batch": check_batch, "training": check_training, "xl": check_xl,
}


# ---------------------------------------------------------------------------------------------
# Running sections, the report


def run_section(name: str, ctx: Context, report: dict, deadline: float, out: Path) -> None:
    left = deadline - time.monotonic()
    cap = min(ctx.plan.caps[name], left)
    entry = report["sections"][name] = {"status": "running", "cap_s": round(cap, 1), "result": {}}
    if left < MIN_SECTION_S:
        entry.update(status="not run", reason=f"the budget of {ctx.plan.budget_s:.0f} s was spent", seconds=0.0)
        return
    ctx.say(f"{name}: start (cap {cap:.0f} s)")
    start, cpu_start = time.monotonic(), time.process_time()
    try:
        with ctx.caps.limit(cap, name):
            SECTIONS[name](ctx, entry["result"])
        failed = item_errors(entry["result"])
        entry["status"] = "error" if failed else "ok"
        if failed:
            entry["error"] = "; ".join(failed)
    except Skipped as skip:
        entry.update(status="skipped", reason=str(skip))
    except TimeCapReached as reached:
        entry.update(status="timed out", error=str(reached))
    except Exception as error:  # one section's failure must not stop the others
        entry.update(status="error", error=one_line(error), traceback=traceback.format_exc().splitlines()[-12:])
    entry["seconds"] = round(time.monotonic() - start, 1)
    entry["cpu_seconds"] = round(time.process_time() - cpu_start, 1)  # this process's, children not counted
    release(ctx.device)
    ctx.say(f"{name}: {entry['status']} in {entry['seconds']:.1f} s"
            + (f" ({entry['error']})" if "error" in entry else ""))
    write_report(report, out)


def item_errors(result, path: str = "") -> list[str]:
    """`where: message` of every "error" recorded inside a section's result."""
    found = []
    if isinstance(result, dict):
        for key, value in result.items():
            if key == "error":
                found.append(f"{path or 'result'}: {value}")
            else:
                found += item_errors(value, f"{path}.{key}" if path else key)
    return found


def environment(device: torch.device, rehearse: bool) -> dict:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    import cv2

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "opencv": cv2.__version__, "rehearsal": rehearse, "threads": torch.get_num_threads()}
    info.update({name: version(name) for name in ("diffusers", "transformers", "accelerate", "huggingface_hub",
                                                  "safetensors", "numpy")})
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(device=properties.name, memory_gib=round(properties.total_memory / GIB, 1),
                    multiprocessors=properties.multi_processor_count)
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()})"
    return info


def write_report(report: dict, out: Path) -> None:
    write_atomic(out / "gpu-check.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / "gpu-check.md", markdown(report))


def markdown(report: dict) -> str:
    env = report["environment"]
    memory_label = "peak GPU memory (allocated)" if not env["rehearsal"] else "peak memory (process RSS, not GPU)"
    lines = [
        "# GPU check" + (" (CPU rehearsal: tiny sizes, not GPU figures)" if env["rehearsal"] else ""), "",
        f"{env['device']}; torch {env['torch']} (CUDA {env['cuda']}), diffusers {env['diffusers']}, "
        f"transformers {env['transformers']}, OpenCV {env['opencv']}; {report['started']}; "
        f"`{report['command']}`", "",
        "| section | status | seconds | cap (s) | note |", "| --- | --- | --- | --- | --- |",
    ]
    for name, entry in report["sections"].items():
        note = entry.get("error") or entry.get("reason") or ""
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | {entry['cap_s']} | {note[:200]} |")
    lines += ["", f"| section | measurement | time | {memory_label} | notes |", "| --- | --- | --- | --- | --- |"]
    for name, entry in report["sections"].items():
        try:
            rows = ROWS[name](entry.get("result", {}))
        except (KeyError, TypeError, ValueError, StopIteration) as error:  # a result cut short
            rows = [["(part of the result)", "", "", f"not tabulated ({one_line(error)}): see gpu-check.json"]]
        lines += ["| " + " | ".join([name, *(str(cell) for cell in row)]) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _row(label: str, entry: dict, cells: Callable[[dict], list[str]]) -> list[str]:
    """One measurement's table row, or what stopped it."""
    if "error" in entry:
        return [label, "", "", f"error: {entry['error']}"]
    if "skipped" in entry:
        return [label, "", "", f"skipped: {entry['skipped']}"]
    return [label, *cells(entry)]


def _gib(entry: dict) -> str:
    value = entry.get("peak_allocated_gib", entry.get("process_peak_rss_gib"))
    return "" if value is None else f"{value:.2f} GiB"


def _timing(entry: dict) -> str:
    return f"{entry['median_s_per_edit']:.3f} s / edit, {entry['ms_per_step']:.1f} ms / step"


def _parity_rows(result: dict) -> list[list[str]]:
    rows = []
    applies = result.get("kit_verdict_applies")

    def device_vs_cpu(case: dict) -> list[str]:
        largest = case["fp32_device_vs_cpu"]["largest"] or {}
        kit = case["kit_compare"]["device_fp32"]
        verdict = ("kit: within tolerance" if kit.get("within_tolerance") else
                   f"kit: outside for {', '.join(kit.get('outside', [])) or kit.get('error', '?')}")
        return ["", "", f"largest: {largest.get('array')} {largest.get('max_abs', 0):.3g} "
                        f"({largest.get('relative_to_its_max', 0):.2g} of its max); "
                        f"{verdict}{'' if applies else ' (does not apply here)'}"]

    for name, case in result.get("cases", {}).items():
        if "fp32_device_vs_cpu" in case:
            rows.append(_row(f"{name} fp32: device vs CPU", case, device_vs_cpu))
        for label in ("fp16", "bf16"):
            if f"{label}_vs_fp32" in case:
                rows.append(_row(f"{name} {label} vs fp32", case[f"{label}_vs_fp32"], lambda half: [
                    "", "", f"PSNR {half['psnr_db']} dB, max {half['max_level_diff']} levels (model output)"]))
    return rows


def _speed_rows(result: dict) -> list[list[str]]:
    rows = []
    if "matmul_peak" in result:
        peak = result["matmul_peak"]
        rows.append([f"{peak['side']}³ {peak['dtype']} matrix product", f"{peak['median_ms']} ms", "",
                     f"{peak['tflops']} TFLOP/s"])

    def cells(entry: dict) -> list[str]:
        note = (f"{entry['ratio_to_floor']}× the floor ({entry['floor_ms_per_step']} ms / step)"
                if "ratio_to_floor" in entry else "no floor (fast's FLOPs were not counted)")
        if "first_edit_s" in entry:
            note += f"; first edit {entry['first_edit_s']} s ({entry['backend']})"
        return [_timing(entry), _gib(entry), note]

    for mode, entry in result.get("modes", {}).items():
        rows.append(_row(f"{mode}, {result['steps']} steps at {result['resolution']}²", entry, cells))
    return rows


def _fewer_steps_rows(result: dict) -> list[list[str]]:
    return [_row(label, entry, lambda entry: [_timing(entry), "", f"{entry['time_vs_ddim']} of ddim's time"])
            for label, entry in result.get("schedulers", {}).items()]


def _memory_rows(result: dict) -> list[list[str]]:
    def cells(entry: dict) -> list[str]:
        estimate = next(value for key, value in entry.items() if key.startswith("estimated_s_per_"))
        return [_timing(entry), _gib(entry),
                f"{entry['steps']} steps timed; about {estimate} s for the full edit "
                "(outside the loop + steps × per step)"]

    return [_row(f"offload {mode}", entry, cells) for mode, entry in result.get("modes", {}).items()]


def _batch_rows(result: dict) -> list[list[str]]:
    if not result:
        return []
    return [_row(f"edit --batch, {result.get('edits')} edits of {result.get('steps')} steps", result, lambda result: [
        f"{result['s_per_edit_after_first']} s / edit after the first", "",
        f"{result['edits_per_minute']} edits / min; first written at {result['first_edit_done_s']} s "
        f"(process start and model load); {result['wall_s']} s in all"])]


def _training_rows(result: dict) -> list[list[str]]:
    def cells(entry: dict) -> list[str]:
        if entry["outcome"] != "ran":
            return ["", _gib(entry), entry["outcome"]]
        return [f"{entry['s_per_step']} s / step ({entry['samples_per_s']} samples / s)", _gib(entry), ""]

    return [_row(label, entry, cells) for label, entry in result.get("configurations", {}).items()]


def _xl_rows(result: dict) -> list[list[str]]:
    rows = []
    if "single_edit" in result:
        def stages(entry: dict) -> list[str]:
            per_call = {name: stage["s"] / stage["calls"] for name, stage in entry["stages"].items()}
            output = entry["output"]
            note = (f"built in {result['build_s']} s; reference U-Net {per_call['reference_unet']:.3f} s, "
                    f"imitative {per_call['unet']:.3f} s a call, VAE decode {per_call['vae_decoder']:.2f} s; "
                    f"output {'x'.join(map(str, output['size']))}, outside the mask "
                    f"{'kept' if output['outside_mask_unchanged'] else 'CHANGED'}")
            timing = f"{entry['s_per_edit']:.3f} s / edit, {entry['s_per_step'] * 1000:.1f} ms / step"
            return [timing, _gib(entry), note]

        rows.append(_row(f"one edit by stage, {result['steps']} steps at {result['resolution']}²",
                         result["single_edit"], stages))
    if "fast" in result:
        rows.append(_row(f"fast, {result['steps']} steps at {result['resolution']}²", result["fast"],
                         lambda entry: [_timing(entry), _gib(entry), ""]))
    return rows


ROWS = {"parity": _parity_rows, "speed": _speed_rows, "fewer-steps": _fewer_steps_rows, "memory": _memory_rows,
        "batch": _batch_rows, "training": _training_rows, "xl": _xl_rows}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True, help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--rehearse", action="store_true", help="every section at tiny sizes on the CPU")
    parser.add_argument("--only", help=f"comma list of sections to run ({', '.join(SECTION_NAMES)})")
    parser.add_argument("--kit", help="the parity kit's folder (default: .parity-kit, the carried copy, "
                        "else ../shared/parity)")
    parser.add_argument("--budget", type=float, help="seconds for all sections together (default 360; rehearsal 480)")
    parser.add_argument("--cap", action="append", default=[], metavar="SECTION=SECONDS",
                        help="another time cap for a section (compile=SECONDS for compile's own); repeatable")
    parser.add_argument("--device", default="cuda", help="the GPU (default cuda); the rehearsal uses the CPU")
    parser.add_argument("--work", help="folder for the kit's weights, the saved random model and the batch's "
                        "edits (default: a temporary folder, removed at the end)")
    parser.add_argument("--force", action="store_true", help="replace a gpu-check.json already in the output folder")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> tuple[Plan, list[str]]:
    """The plan with the command line's caps and budget, and the sections to run; ValueError names
    what is wrong."""
    plan = REHEARSAL_PLAN if args.rehearse else GPU_PLAN
    sections = list(SECTION_NAMES)
    if args.only:
        sections = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in sections if name not in SECTION_NAMES]
        if unknown or not sections:
            raise ValueError(f"--only: unknown section {', '.join(unknown) or '(none given)'} "
                             f"(sections: {', '.join(SECTION_NAMES)})")
        sections = [name for name in SECTION_NAMES if name in sections]
    caps, compile_cap = dict(plan.caps), plan.compile_cap_s
    for item in args.cap:
        name, _, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if name not in (*SECTION_NAMES, "compile") or value <= 0:
            raise ValueError(f"--cap {item!r}: expected SECTION=SECONDS with SECTION one of "
                             f"{', '.join(SECTION_NAMES)}, compile and SECONDS > 0")
        if name == "compile":
            compile_cap = value
        else:
            caps[name] = value
    if args.budget is not None and args.budget <= 0:
        raise ValueError("--budget: expected seconds > 0")
    return replace(plan, caps=caps, compile_cap_s=compile_cap,
                   budget_s=args.budget if args.budget is not None else plan.budget_s), sections


def find_kit(given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    return next((kit for kit in DEFAULT_KITS if (kit / "cases.json").is_file()), DEFAULT_KITS[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan, sections = configure(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.rehearse else torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU here: run this on the lent GPU machine (docs/performance.md, \"Running the GPU "
              "check\"), or --rehearse for the CPU rehearsal", file=sys.stderr)
        return 2
    out = Path(args.output)
    if (out / "gpu-check.json").exists() and not args.force:
        print(f"error: {out / 'gpu-check.json'} already exists (pass --force to replace it)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    diffusers_logging.set_verbosity_error()  # casting random modules warns once per module
    began = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    ctx = Context(plan, device, find_kit(args.kit), work, TimeCaps(), say)
    saved_threads = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    if plan.threads:
        torch.set_num_threads(plan.threads)
        os.environ["OMP_NUM_THREADS"] = str(plan.threads)  # for the child processes too
    report = {
        "gpu_check": 1,
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": environment(device, args.rehearse),
        "budget_s": plan.budget_s,
        "kit": str(ctx.kit),
        "sections": {},
    }
    deadline = began + plan.budget_s
    try:
        for name in sections:
            run_section(name, ctx, report, deadline, out)
    finally:
        ctx.caps.close()
        torch.set_num_threads(saved_threads[0])
        if saved_threads[1] is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved_threads[1]
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - began, 1)
    write_report(report, out)
    print(markdown(report))
    return 0 if all(entry["status"] in ("ok", "skipped") for entry in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
