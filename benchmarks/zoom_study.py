"""What auto zoom-in buys on small masks: PSNR/SSIM inside the mask's box, zoom off vs auto.

    mimicbrush bench build-inner-id DREAMBOOTH_DIR -o TRACKS --small-masks
    python benchmarks/zoom_study.py TRACKS --model MODEL -o OUT [--steps 50] [--seed 1] [--limit N]

Every case of the track(s) is edited once per mode (`--modes`, default `off,auto`; `auto+hint`
also crops the reference to the case's annotated reference region) with the same seed, through
mimicbrush.editing.zoomed_edit: with zoom off that is exactly the release's edit, and a case that
auto does not zoom gets the same pixels in both modes. Scores are the benchmark's (metrics.py)
against the ground truth, inside the mask's box (regions.mask_box: the tight box grown to 32 px),
and the differences are paired per case. Edits are cached in OUT/edits/MODE/ (a rerun makes only
the missing ones; OUT/settings.json pins the settings they were made with). Writes
OUT/zoom_study.json (per case and summary) and OUT/zoom_study.md (the table for docs/editing.md),
and prints the table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mimicbrush import editing, imaging
from mimicbrush.benchmark import metrics
from mimicbrush.benchmark.regions import mask_box, reference_box
from mimicbrush.benchmark.tracks import Case, load_tracks
from mimicbrush.errors import InputError, MimicBrushError

MODES = ("off", "auto", "auto+hint")
SETTINGS_FILE = "settings.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("track_dir", type=Path, metavar="TRACK_DIR", help="built with build-inner-id --small-masks")
    parser.add_argument("--model", required=True, metavar="PATH_OR_ID")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    parser.add_argument("--modes", default="off,auto", help=f"comma-separated, from {', '.join(MODES)} (default off,auto)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1, help="the same seed for every edit (the benchmark's: 1)")
    parser.add_argument("--margin", type=float, default=editing.DEFAULT_ZOOM_MARGIN)
    parser.add_argument("--threshold", type=float, default=editing.DEFAULT_ZOOM_THRESHOLD)
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N cases")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    args = parser.parse_args(argv)
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not args.modes or any(mode not in MODES for mode in args.modes):
        parser.error(f"--modes takes a comma-separated list of {', '.join(MODES)}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def study_settings(args: argparse.Namespace) -> dict:
    """Everything that changes an edit's pixels."""
    return {
        "model": str(args.model),
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "margin": args.margin,
        "threshold": args.threshold,
        "reference_margin": editing.DEFAULT_REFERENCE_MARGIN,
        "dtype": args.dtype,
    }


def pin_settings(out_dir: Path, settings: dict) -> None:
    """Record the settings, or refuse when the cached edits were made with others."""
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != settings:
            raise InputError(f"{out_dir} holds edits made with other settings ({recorded}); use another -o")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")


def edit_case(pipe, case: Case, mode: str, settings: dict):
    """The case's edit in `mode` (a PIL image at the source's size)."""
    source = imaging.load_image(case.source_path, "source")
    reference = imaging.load_image(case.reference_path, "reference")
    hint = reference_box(case.reference_region, reference) if mode == "auto+hint" else None
    output = editing.zoomed_edit(
        pipe,
        source,
        imaging.load_mask(case.mask_path, source.size),
        reference,
        hint,
        zoom="off" if mode == "off" else "auto",
        margin=settings["margin"],
        threshold=settings["threshold"],
        reference_margin=settings["reference_margin"],
        keep_shape=case.kind.keep_shape,
        num_inference_steps=settings["steps"],
        guidance_scale=settings["guidance"],
        generator=torch.Generator("cpu").manual_seed(settings["seed"]),
    )
    return output.images[0]


def zoom_geometry(mask: np.ndarray, settings: dict) -> dict:
    """How auto zoom treats a case's mask (pure geometry): whether any region is zoomed, and the
    gain in model pixels per source pixel of its least-zoomed region (1: not zoomed)."""
    height, width = mask.shape
    plans = editing.plan_regions(mask, zoom="auto", margin=settings["margin"], threshold=settings["threshold"])
    return {
        "mask_fraction": float(mask.mean()),
        "zoomed": any(plan.zoomed for plan in plans),
        "zoom_gain": min(max(width, height) / max(editing.box_size(plan.crop_box)) for plan in plans),
    }


def run_study(pipe, cases: list[Case], modes: list[str], out_dir: Path, settings: dict, progress: bool = True) -> dict:
    """Make the missing edits, score every case in every mode, summarise."""
    rows = []
    for case in tqdm(cases, desc="cases", disable=not progress, file=sys.stderr):
        source = imaging.load_image(case.source_path, "source")
        mask = imaging.binary_mask(imaging.load_mask(case.mask_path, source.size))
        truth = np.asarray(imaging.load_image(case.gt_path, "ground truth"))
        box = mask_box(mask.astype(bool))
        row = {"track": case.track_id, "case": case.name, "mask_box": list(box), **zoom_geometry(mask, settings)}
        for mode in modes:
            path = out_dir / "edits" / mode / case.track_id / f"{case.name}.png"
            if not path.is_file():
                imaging.save_image(edit_case(pipe, case, mode, settings), path, force=True)
            scores = metrics.box_scores(np.asarray(imaging.load_image(path, "edit")), truth, box)
            row.update({f"{key}_{mode}": value for key, value in scores.items()})
        rows.append(row)
    return {"settings": settings, "modes": modes, "summary": summarize(rows, modes), "cases": rows}


def summarize(rows: list[dict], modes: list[str]) -> dict:
    """Per mode: mean box PSNR/SSIM; against `off` (when run): paired mean differences with a
    normal-approximation 95% interval, and the cases where the mode scores higher."""
    summary = {}
    for mode in modes:
        entry = {
            "cases": len(rows),
            "psnr_box": statistics.fmean(row[f"psnr_box_{mode}"] for row in rows),
            "ssim_box": statistics.fmean(row[f"ssim_box_{mode}"] for row in rows),
        }
        if mode != "off" and "off" in modes:
            for metric in ("psnr_box", "ssim_box"):
                differences = [row[f"{metric}_{mode}"] - row[f"{metric}_off"] for row in rows]
                mean = statistics.fmean(differences)
                spread = statistics.stdev(differences) if len(differences) > 1 else 0.0
                half_width = 1.96 * spread / math.sqrt(len(differences))
                entry[f"delta_{metric}"] = mean
                entry[f"delta_{metric}_ci95"] = [mean - half_width, mean + half_width]
                entry[f"wins_{metric}"] = sum(difference > 0 for difference in differences)
        summary[mode] = entry
    summary["zoomed_cases"] = sum(row["zoomed"] for row in rows)
    gains = [row["zoom_gain"] for row in rows if row["zoomed"]]
    summary["median_zoom_gain"] = statistics.median(gains) if gains else None
    return summary


def markdown(study: dict) -> str:
    summary, modes = study["summary"], study["modes"]
    lines = [
        "| zoom | cases | PSNR, mask box (dB) | SSIM, mask box | Δ PSNR vs off (95% CI) | Δ SSIM vs off (95% CI) | PSNR wins |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode in modes:
        entry = summary[mode]
        cells = [mode, str(entry["cases"]), f"{entry['psnr_box']:.2f}", f"{entry['ssim_box']:.4f}"]
        if "delta_psnr_box" in entry:
            cells += [
                _delta(entry["delta_psnr_box"], entry["delta_psnr_box_ci95"], 2),
                _delta(entry["delta_ssim_box"], entry["delta_ssim_box_ci95"], 4),
                f"{entry['wins_psnr_box']}/{entry['cases']}",
            ]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    gain = summary["median_zoom_gain"]
    settings = study["settings"]
    lines.append("")
    lines.append(
        f"Auto zoom-in zoomed {summary['zoomed_cases']} of {summary[modes[0]]['cases']} cases"
        + (f" (median ×{gain:.2f} model pixels per source pixel)" if gain else "")
        + f"; margin {settings['margin']}, threshold {settings['threshold']}, {settings['steps']} steps, "
        f"guidance {settings['guidance']}, seed {settings['seed']}, model {settings['model']}."
    )
    return "\n".join(lines) + "\n"


def _delta(mean: float, interval: list[float], digits: int) -> str:
    return f"{mean:+.{digits}f} ({interval[0]:+.{digits}f}, {interval[1]:+.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tracks = load_tracks(args.track_dir)
        cases = [case for track in tracks for case in track.cases if case.gt_path is not None][: args.limit]
        if not cases:
            raise InputError(f"no case of {args.track_dir} has a ground truth (NAME_gt.png): build an inner-ID track")
        settings = study_settings(args)
        pin_settings(args.output, settings)
        from mimicbrush.loading import load_pipeline

        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
        study = run_study(pipe, cases, args.modes, args.output, settings)
    except MimicBrushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = markdown(study)
    (args.output / "zoom_study.json").write_text(json.dumps(study, indent=1) + "\n")
    (args.output / "zoom_study.md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
