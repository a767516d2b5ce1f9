"""Does a model imitate its reference? Compare `bench run` outputs made with the true reference,
a mismatched one (another subject's photo) and none, case by case, inside the mask's box.

    mimicbrush bench build-inner-id ../shared/data/dreambooth -o track
    for mode in true mismatched none; do
        mimicbrush bench run track --model M -o runs/$mode --reference-mode $mode --dino-model none --clip-model none
    done
    python benchmarks/imitation_ablation.py runs/true runs/mismatched runs/none -o ablation.md

A run with `--reference-mode flipped` (the true reference mirrored left-right) may be added: its
gain over the mismatched reference shows imitation that copying co-located pixels cannot fake.
`--paste-track TRACK` adds the paste baseline: the true reference resized into the mask's tight
box and pasted inside the mask, scored like an edit. With it, `--sheet PNG` draws the first
`--sheet-cases` cases: masked source | reference | edit | mismatched reference | its edit | truth.

Writes a markdown table (per case and summary) and prints the summary as JSON: mean PSNR/SSIM in
the mask box per mode, the mean gain of the true reference over each other mode, and the share
of cases where the true reference wins.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

METRICS = ("psnr_box", "ssim_box")


def read_run(folder: Path) -> dict[str, dict[str, float]]:
    with open(folder / "cases.csv", newline="") as file:
        return {row["case"]: {key: float(row[key]) for key in METRICS} for row in csv.DictReader(file)}


def compare(true_run: dict, other_runs: dict[str, dict]) -> dict:
    cases = sorted(set(true_run).intersection(*other_runs.values()))
    if not cases:
        raise SystemExit("error: the runs share no case")
    summary = {"cases": len(cases), "mean": {}, "gain_of_true_reference": {}, "true_reference_wins": {}}
    for mode, run in {"true": true_run, **other_runs}.items():
        summary["mean"][mode] = {key: round(statistics.mean(run[c][key] for c in cases), 4) for key in METRICS}
    for mode, run in other_runs.items():
        gains = {key: [true_run[c][key] - run[c][key] for c in cases] for key in METRICS}
        summary["gain_of_true_reference"][mode] = {key: round(statistics.mean(v), 4) for key, v in gains.items()}
        summary["true_reference_wins"][mode] = {key: round(sum(g > 0 for g in v) / len(v), 3) for key, v in gains.items()}
    return summary, cases


def paste_baseline(track_dir: Path, cases: list[str]) -> dict[str, dict[str, float]]:
    """Scores of pasting each case's resized true reference into its mask (no model)."""
    import numpy as np

    from mimicbrush import imaging
    from mimicbrush.benchmark import metrics
    from mimicbrush.benchmark.regions import mask_box, tight_box
    from mimicbrush.benchmark.tracks import load_tracks

    by_name = {case.name: case for track in load_tracks(track_dir) for case in track.cases}
    scores = {}
    for name in cases:
        case = by_name[name]
        source = np.asarray(imaging.load_image(case.source_path, "source"))
        mask = imaging.binary_mask(imaging.load_mask(case.mask_path, (source.shape[1], source.shape[0]))).astype(bool)
        x0, y0, x1, y1 = tight_box(mask)
        reference = imaging.load_image(case.reference_path, "reference").resize((x1 - x0, y1 - y0))
        pasted = source.copy()
        region = pasted[y0:y1, x0:x1]
        region[mask[y0:y1, x0:x1]] = np.asarray(reference)[mask[y0:y1, x0:x1]]
        truth = np.asarray(imaging.load_image(case.gt_path, "ground truth"))
        bx0, by0, bx1, by1 = mask_box(mask)
        scores[name] = {"psnr_box": metrics.psnr(pasted[by0:by1, bx0:bx1], truth[by0:by1, bx0:bx1]),
                        "ssim_box": metrics.ssim(pasted[by0:by1, bx0:bx1], truth[by0:by1, bx0:bx1])}
    return scores


def contact_sheet(track_dir: Path, true_run: Path, mismatched_run: Path, cases: list[str], output: Path) -> None:
    import numpy as np
    from PIL import Image

    from mimicbrush import imaging
    from mimicbrush.benchmark.tracks import load_tracks
    from mimicbrush.cli.demo import contact_sheet as draw_sheet

    by_name = {case.name: case for track in load_tracks(track_dir) for case in track.cases}
    rows = []
    for name in cases:
        case = by_name[name]
        source = np.asarray(imaging.load_image(case.source_path, "source")).copy()
        source[imaging.binary_mask(imaging.load_mask(case.mask_path, (source.shape[1], source.shape[0]))) > 0] = 0
        edits = [next((run / "edits").rglob(f"{name}.png")) for run in (true_run, mismatched_run)]
        rows.append([Image.fromarray(source), imaging.load_image(case.reference_path, "reference"),
                     Image.open(edits[0]), imaging.load_image(case.mismatched_reference_path, "reference"),
                     Image.open(edits[1]), imaging.load_image(case.gt_path, "ground truth")])
    draw_sheet(rows, height=128).convert("RGB").save(output, quality=85)


def markdown(summary: dict, cases: list[str], runs: dict[str, dict]) -> str:
    modes = list(runs)
    lines = ["| case | " + " | ".join(f"PSNR box ({m})" for m in modes) + " | "
             + " | ".join(f"SSIM box ({m})" for m in modes) + " |",
             "| --- |" + " --- |" * (2 * len(modes))]
    for case in cases:
        cells = [f"{runs[m][case]['psnr_box']:.2f}" for m in modes] + [f"{runs[m][case]['ssim_box']:.3f}" for m in modes]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{summary['mean'][m]['psnr_box']:.2f}**" for m in modes) + " | "
                 + " | ".join(f"**{summary['mean'][m]['ssim_box']:.3f}**" for m in modes) + " |")
    lines.append("")
    for mode, gain in summary["gain_of_true_reference"].items():
        wins = summary["true_reference_wins"][mode]
        lines.append(f"- true vs {mode}: PSNR box {gain['psnr_box']:+.2f} dB (true wins {wins['psnr_box']:.0%} of "
                     f"cases), SSIM box {gain['ssim_box']:+.3f} (true wins {wins['ssim_box']:.0%})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("true_run", type=Path, help="bench run output with --reference-mode true")
    parser.add_argument("other_runs", type=Path, nargs="+", help="runs with mismatched / none")
    parser.add_argument("-o", "--output", type=Path, help="markdown file to write")
    parser.add_argument("--paste-track", type=Path, metavar="TRACK",
                        help="the runs' track folder: add the paste-the-reference baseline")
    parser.add_argument("--sheet", type=Path, metavar="IMAGE", help="contact sheet (needs --paste-track)")
    parser.add_argument("--sheet-cases", type=int, default=8)
    args = parser.parse_args(argv)
    runs = {"true": read_run(args.true_run)}
    for folder in args.other_runs:
        settings = json.loads((folder / "run.json").read_text())
        runs[settings.get("reference_mode", folder.name)] = read_run(folder)
    if args.paste_track is not None:
        runs["paste"] = paste_baseline(args.paste_track, sorted(runs["true"]))
    other = {mode: run for mode, run in runs.items() if mode != "true"}
    summary, cases = compare(runs["true"], other)
    if "flipped" in runs and "mismatched" in runs:  # flipped must still beat a wrong reference
        gains = [runs["flipped"][c]["psnr_box"] - runs["mismatched"][c]["psnr_box"] for c in cases]
        summary["flipped_over_mismatched"] = {"psnr_box": round(statistics.mean(gains), 4),
                                              "wins": round(sum(g > 0 for g in gains) / len(gains), 3)}
    if args.output:
        args.output.write_text(markdown(summary, cases, runs))
    if args.sheet is not None and args.paste_track is not None and "mismatched" in runs:
        mismatched_run = next(folder for folder in args.other_runs
                              if json.loads((folder / "run.json").read_text()).get("reference_mode") == "mismatched")
        contact_sheet(args.paste_track, args.true_run, mismatched_run, cases[: args.sheet_cases], args.sheet)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
