"""Schedulers against the release's 50-step DDIM: how close each gets in fewer steps, and the time.

    python benchmarks/bench_schedulers.py -o OUT [--model M] [--steps 8,12,16,20,25,30,50] \
        [--schedulers ddim,dpm++,...] [--repeats 2] [--limit N]

For every scheduler the model supports (mimicbrush.samplers; default: all of them) and every step
count, the bundled examples (mimicbrush.examples) are edited with one seed and each edit is
scored against the 50-step DDIM edit of the same case: PSNR and SSIM inside the mask's box
(benchmark.regions.mask_box), at the source's size. Seconds per edit: every configuration is
timed once per case and repeat, in an order rotated from one case to the next so that drift in
the machine's load does not always hit the same configuration; reported as the median, and the
ratio to DDIM-50 both as measured (medians) and from a least-squares fit of the other
configurations' timed edits to seconds = outside + per_call × U-Net calls (robust to one
configuration catching a busy spell).
The recommendation is the configuration with the fewest U-Net calls (an edit's cost on any
machine) whose worst case agrees to at least --min-psnr dB and whose scheduler keeps that at
every larger step count of the ladder (converging on DDIM-50, not crossing it by chance); equal
calls: the better worst case. Writes OUT/bench_schedulers.json, OUT/bench_schedulers.md (the table) and
OUT/bench_schedulers.png (agreement against time; needs matplotlib: pip install -e '.[bench]'),
and prints the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mimicbrush import imaging, samplers
from mimicbrush.benchmark import metrics
from mimicbrush.benchmark.regions import mask_box
from mimicbrush.errors import MimicBrushError
from mimicbrush.examples import bundled_examples
from mimicbrush.fileio import write_atomic
from mimicbrush.loading import default_model, load_pipeline

REFERENCE = ("ddim", 50)  # the release's setting: what every edit is compared with
LADDER = (8, 12, 16, 20, 25, 30, 50)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    parser.add_argument("--model", help="default: the bundled demo model")
    parser.add_argument("--steps", default=",".join(map(str, LADDER)), help="the step ladder, comma-separated")
    parser.add_argument("--schedulers", help="comma-separated names (default: every one the model supports)")
    parser.add_argument("--repeats", type=int, default=2, help="timed edits per configuration and case")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N bundled examples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--min-psnr", type=float, default=30.0, help="agreement the recommendation needs (dB)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    args.steps = sorted({int(value) for value in args.steps.split(",")})
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def model_identity(model: Path | str) -> dict:
    """Which weights were measured: the folder, the git commit that last changed it (when it is in a
    checkout) and a hash of the imitative U-Net's weights."""
    identity = {"model": str(model)}
    folder = Path(model)
    if folder.is_dir():
        commit = subprocess.run(["git", "log", "-1", "--format=%H", "--", "."], cwd=folder, capture_output=True,
                                text=True)
        identity["model_commit"] = commit.stdout.strip() or None
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        if weights.is_file():
            identity["unet_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return identity


def configurations(names: list[str], ladder: list[int]) -> list[tuple[str, int]]:
    """(scheduler, steps) pairs, the reference first."""
    pairs = [REFERENCE] + [(name, steps) for name in names for steps in ladder]
    return list(dict.fromkeys(pairs))


def timed_edit(pipe, example, steps: int, seed: int, guidance: float) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    output = pipe(source_image=example.source, mask_image=example.mask, reference_image=example.reference,
                  keep_shape=example.keep_shape, num_inference_steps=steps, guidance_scale=guidance,
                  generator=torch.Generator("cpu").manual_seed(seed))
    return np.asarray(output.images[0]), time.perf_counter() - start


def measure(pipe, examples, pairs, args) -> list[dict]:
    """Edit every case with every configuration, `repeats` times, interleaved; score the first
    edit of each (the edits are deterministic) against the reference configuration's."""
    schedulers = {name: samplers.make_scheduler(name, pipe.scheduler.config) for name, _ in pairs}
    seconds = {pair: [] for pair in pairs}
    edits: dict[tuple, np.ndarray] = {}
    total = args.repeats * len(examples) * len(pairs)
    slots = args.repeats * len(examples)
    with tqdm(total=total, desc="edits", file=sys.stderr) as progress:
        for repeat in range(args.repeats):
            for index, example in enumerate(examples):
                start = (repeat * len(examples) + index) * len(pairs) // slots  # spread over the slots
                order = pairs[start:] + pairs[:start]
                for pair in order:
                    name, steps = pair
                    pipe.scheduler = schedulers[name]
                    image, elapsed = timed_edit(pipe, example, steps, args.seed, args.guidance)
                    seconds[pair].append(elapsed)
                    edits.setdefault((index, pair), image)
                    progress.update()
    calls = {pair: samplers.unet_calls(schedulers[pair[0]], pair[1]) for pair in pairs}
    # fitted over the other configurations (8 to 2N-1 calls: DDIM-50 lies inside their range), so
    # that the ratio's denominator is not also the fit's one high-leverage point
    others = {pair: times for pair, times in seconds.items() if pair != REFERENCE} or seconds
    outside, per_call = time_model(calls, others)
    modelled_reference = outside + per_call * calls[REFERENCE]
    reference_seconds = statistics.median(seconds[REFERENCE])
    rows = []
    for pair in pairs:
        name, steps = pair
        scores = []
        for index, example in enumerate(examples):
            box = mask_box(example.mask > 128)
            scores.append(metrics.box_scores(edits[(index, pair)], edits[(index, REFERENCE)], box))
        psnrs = [score["psnr_box"] for score in scores]
        ssims = [score["ssim_box"] for score in scores]
        rows.append({
            "scheduler": name,
            "steps": steps,
            "unet_calls": calls[pair],
            "psnr_box_mean": round(statistics.mean(psnrs), 2),
            "psnr_box_min": round(min(psnrs), 2),
            "ssim_box_mean": round(statistics.mean(ssims), 4),
            "ssim_box_min": round(min(ssims), 4),
            "seconds_median": round(statistics.median(seconds[pair]), 4),
            "time_vs_ddim50": round((outside + per_call * calls[pair]) / modelled_reference, 3),
            "time_vs_ddim50_measured": round(statistics.median(seconds[pair]) / reference_seconds, 3),
            "per_case_psnr_box": [round(value, 2) for value in psnrs],
        })
    return rows, {"outside_seconds": round(outside, 3), "seconds_per_unet_call": round(per_call, 4)}


def time_model(calls: dict, seconds: dict) -> tuple[float, float]:
    """Least-squares (outside, per_call) of seconds = outside + per_call × calls over every timed edit."""
    x = np.array([calls[pair] for pair, times in seconds.items() for _ in times], dtype=float)
    y = np.array([value for times in seconds.values() for value in times])
    per_call, outside = np.polyfit(x, y, 1) if len(set(x)) > 1 else (y.mean() / x[0], 0.0)
    return float(outside), float(per_call)


def recommend(rows: list[dict], min_psnr: float) -> dict | None:
    """Fewest U-Net calls (then the better worst case) among the configurations other than the
    reference whose worst case agrees to min_psnr dB at that and every larger step count of the
    same scheduler."""
    def holds(row):
        same = [other for other in rows if other["scheduler"] == row["scheduler"] and other["steps"] >= row["steps"]
                and (other["scheduler"], other["steps"]) != REFERENCE]
        return all(other["psnr_box_min"] >= min_psnr for other in same)

    candidates = [row for row in rows if (row["scheduler"], row["steps"]) != REFERENCE and holds(row)]
    return min(candidates, key=lambda row: (row["unet_calls"], -row["psnr_box_min"]), default=None)


def markdown(rows: list[dict], recommended: dict | None) -> str:
    lines = ["| scheduler | steps | U-Net calls | PSNR box mean / worst (dB) | SSIM box mean / worst | s / edit (median) "
             "| time vs DDIM-50 (fit) | (measured) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        reference = (row["scheduler"], row["steps"]) == REFERENCE
        agreement = ("(the reference)", "(the reference)") if reference else (
            f"{row['psnr_box_mean']:.1f} / {row['psnr_box_min']:.1f}", f"{row['ssim_box_mean']:.3f} / {row['ssim_box_min']:.3f}")
        cells = [row["scheduler"], str(row["steps"]), str(row["unet_calls"]), *agreement,
                 f"{row['seconds_median']:.2f}", f"{row['time_vs_ddim50']:.2f}", f"{row['time_vs_ddim50_measured']:.2f}"]
        if row is recommended:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], min_psnr: float, path: Path) -> None:
    """Agreement against measured time and against U-Net calls, one line per scheduler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for name in dict.fromkeys(row["scheduler"] for row in rows):
        points = [row for row in rows if row["scheduler"] == name and (name, row["steps"]) != REFERENCE]
        for axis, key in zip(axes, ("time_vs_ddim50", "unet_calls")):
            axis.plot([row[key] for row in points], [row["psnr_box_mean"] for row in points], marker="o",
                      markersize=3, label=name)
    for axis, label in zip(axes, ("seconds per edit / DDIM-50's (fit of the timed edits)", "U-Net calls per edit")):
        axis.axhline(min_psnr, color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("agreement with DDIM-50: PSNR in the mask box (dB)")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except MimicBrushError as error:  # an unknown or unsupported scheduler, a bad model folder
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    model = args.model or default_model()
    pipe = load_pipeline(model, device=args.device, dtype="fp32")
    pipe.set_progress_bar_config(disable=True)
    supported = samplers.supported_samplers(pipe.scheduler.config)
    names = args.schedulers.split(",") if args.schedulers else supported
    examples = bundled_examples()[: args.limit]
    pairs = configurations(names, args.steps)
    rows, timing = measure(pipe, examples, pairs, args)
    recommended = recommend(rows, args.min_psnr)
    report = {
        **model_identity(model),
        "prediction_type": pipe.model_prediction_type,
        "resolution": pipe.resolution,
        "supported_schedulers": supported,
        "cases": [example.name for example in examples],
        "settings": {"seed": args.seed, "guidance": args.guidance, "repeats": args.repeats, "device": args.device,
                     "min_psnr": args.min_psnr, "reference": list(REFERENCE)},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_average": [round(value, 2) for value in os.getloadavg()]},
        "time_model": timing,
        "recommended": None if recommended is None else {key: recommended[key] for key in
                                                         ("scheduler", "steps", "unet_calls", "time_vs_ddim50")},
        "rows": rows,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1)
    write_atomic(args.output / "bench_schedulers.json", text + "\n")
    write_atomic(args.output / "bench_schedulers.md", markdown(rows, recommended))
    plot(rows, args.min_psnr, args.output / "bench_schedulers.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
