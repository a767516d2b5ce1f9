"""Does a run imitate on photos it never saw, checkpoint by checkpoint? For each chosen step,
export the run's checkpoint, `bench run` it on each inner-ID track with each reference mode, and
summarise with imitation_ablation.py's comparison (true reference against the others, inside the
mask's box). Fixed models (the shipped one, another run's export) may be added as rows.

    python benchmarks/imitation_checkpoints.py --run runs/demo-model --at 600 1200 2400 \
        --model shipped=src/mimicbrush/assets/demo-model \
        --track select=track-seed1 --track crossing=track-crossing \
        --modes true mismatched none -o eval

Every `bench run` keeps its own folder (OUT/NAME/TRACK/MODE) and resumes, so a killed evaluation
continues where it stopped. Writes OUT/summary.json ({model: {track: summary}}) and prints a
markdown table: mean PSNR in the box per mode, the true reference's gain over each other mode,
and its win share.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imitation_ablation import compare, read_run  # noqa: E402


def export_step(run: Path, step: int) -> Path:
    """The run's export of its checkpoint at `step` (made once; `mimicbrush train --export`)."""
    target = run / f"model-step-{step:08d}"
    if not (target / "model_index.json").is_file():
        checkpoint = run / "checkpoints" / f"step-{step:08d}"
        if not checkpoint.is_dir():
            raise SystemExit(f"error: {checkpoint} does not exist (yet)")
        subprocess.run(["mimicbrush", "train", str(run / "config.yaml"), "--export", str(checkpoint)],
                       check=True, stdout=subprocess.DEVNULL)
    return target


def bench(model: Path, track: Path, mode: str, out: Path, limit: int, steps: int) -> dict:
    if not (out / "cases.csv").is_file() or len(read_run(out)) < limit:
        subprocess.run(["mimicbrush", "bench", "run", str(track), "--model", str(model), "-o", str(out),
                        "--reference-mode", mode, "--steps", str(steps), "--limit", str(limit),
                        "--dino-model", "none", "--clip-model", "none"],
                       check=True, stdout=subprocess.DEVNULL)
    return read_run(out)


def pairs(values: list[str], what: str) -> dict[str, Path]:
    result = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: {what} takes NAME=PATH, got {value!r}")
        result[name] = Path(path)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a training run folder (config.yaml, checkpoints/)")
    parser.add_argument("--at", type=int, nargs="*", default=[], help="steps of --run to evaluate")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="a fixed model row")
    parser.add_argument("--track", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--modes", nargs="+", default=["true", "mismatched", "none"])
    parser.add_argument("--limit", type=int, default=24, help="first N cases of each track")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps per edit")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    if "true" not in args.modes:
        raise SystemExit("error: --modes must include true")
    models = pairs(args.model, "--model")
    if args.at and args.run is None:
        raise SystemExit("error: --at needs --run")
    tracks = pairs(args.track, "--track")
    summary_path = args.output / "summary.json"
    summaries = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    rows = [(name, lambda path=path: path) for name, path in models.items()]
    rows += [(f"step {step}", lambda step=step: export_step(args.run, step)) for step in args.at]
    for name, model in rows:
        for track_name, track in tracks.items():
            runs = {mode: bench(model(), track, mode, args.output / name.replace(" ", "-") / track_name / mode,
                                args.limit, args.steps) for mode in args.modes}
            summary, _ = compare(runs.pop("true"), runs)
            summaries.setdefault(name, {})[track_name] = summary
            args.output.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(summaries, indent=1) + "\n")
            print(json.dumps({"model": name, "track": track_name, **summary}), flush=True)
    print(table(summaries, [mode for mode in args.modes if mode != "true"]))


def table(summaries: dict, others: list[str]) -> str:
    lines = ["| model | track | true | " + " | ".join(others) + " | " +
             " | ".join(f"true − {mode} (wins)" for mode in others) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in others * 2) + " |"]
    for name, by_track in summaries.items():
        for track, summary in by_track.items():
            means = summary["mean"]
            gains = [f"{summary['gain_of_true_reference'][mode]['psnr_box']:+.2f} dB "
                     f"({summary['true_reference_wins'][mode]['psnr_box']:.0%})" for mode in others]
            lines.append(f"| {name} | {track} | {means['true']['psnr_box']:.2f} | " +
                         " | ".join(f"{means[mode]['psnr_box']:.2f}" for mode in others) + " | " +
                         " | ".join(gains) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
