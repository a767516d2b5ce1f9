"""Plot the trainer's imitation metric (samples seen → gain and win per timestep) of one or more
runs, from their `imitation.json` (docs/training.md, `imitation:`).

    python benchmarks/imitation_curve.py runs/demo-model [runs/other ...] -o curve.png [--until-step N]

Several runs are drawn in one figure, labelled by folder name (or `--labels`); a run continued
from another's checkpoint carries the earlier entries with it. Also prints the table as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_history(run: Path) -> list[dict]:
    path = run / "imitation.json" if run.is_dir() else run
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (was the run trained with an imitation: section?)")
    return json.loads(path.read_text())


def plot(histories: dict[str, list[dict]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timesteps = sorted({key for history in histories.values() for entry in history for key in entry
                        if key.startswith("t")}, key=lambda key: int(key[1:]))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, history in histories.items():
        for index, timestep in enumerate(timesteps):
            samples = [entry["samples"] for entry in history if timestep in entry]
            style = dict(color=f"C{index}", linestyle=["-", "--", ":", "-."][list(histories).index(label) % 4])
            axes[0].plot(samples, [100 * entry[timestep]["gain"] for entry in history if timestep in entry],
                         label=f"{label} {timestep}", **style)
            axes[1].plot(samples, [100 * entry[timestep]["win"] for entry in history if timestep in entry], **style)
    axes[0].set(xlabel="training samples", ylabel="gain of the true reference (%)", title="masked error reduction")
    axes[1].set(xlabel="training samples", ylabel="win rate (%)", title="pairs where the true reference wins")
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[0].axhline(0, color="grey", linewidth=0.8)
    axes[1].axhline(50, color="grey", linewidth=0.8)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(output, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or imitation.json files)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the plot (PNG)")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: folder names)")
    parser.add_argument("--until-step", type=int, metavar="N",
                        help="only the entries up to step N (to compare a longer run with shorter ones)")
    args = parser.parse_args(argv)
    labels = args.labels or [run.name if run.is_dir() else run.parent.name for run in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit("error: give one label per run")
    histories = {label: [entry for entry in read_history(run) if args.until_step is None or entry["step"] <= args.until_step]
                 for label, run in zip(labels, args.runs, strict=True)}
    plot(histories, args.output)
    json.dump(histories, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
