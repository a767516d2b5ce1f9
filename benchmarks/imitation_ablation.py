"""Does a model imitate its reference? Compare `bench run` outputs made with the true reference,
a mismatched one (another subject's photo) and none, case by case, inside the mask's box.

    mimicbrush bench build-inner-id ../shared/data/dreambooth -o track
    for mode in true mismatched none; do
        mimicbrush bench run track --model M -o runs/$mode --reference-mode $mode --dino-model none --clip-model none
    done
    python benchmarks/imitation_ablation.py runs/true runs/mismatched runs/none -o ablation.md

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
    args = parser.parse_args(argv)
    runs = {"true": read_run(args.true_run)}
    for folder in args.other_runs:
        settings = json.loads((folder / "run.json").read_text())
        runs[settings.get("reference_mode", folder.name)] = read_run(folder)
    other = {mode: run for mode, run in runs.items() if mode != "true"}
    summary, cases = compare(runs["true"], other)
    if args.output:
        args.output.write_text(markdown(summary, cases, runs))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
