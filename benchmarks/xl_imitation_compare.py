"""Does the XL backbone learn to imitate? Train the tiny 1.5 and tiny XL configs on the demo
model's data and held-out imitation pairs, side by side, and tabulate the trainer's imitation
metric at every measured step (issue #22, step 6).

    python benchmarks/xl_imitation_compare.py -o runs/xl-compare --steps 600 [KEY=VALUE ...]
    python benchmarks/xl_imitation_compare.py -o runs/xl-compare --table-only     # while they train

Each arm's config is the recipe (`--recipe`, default `configs/demo-model.yaml`) with the U-Nets
of its backbone config (`configs/train-tiny.yaml`, `configs/train-tiny-xl.yaml`; the XL arm also
trains its `pooled_proj`), then the settings this script fixes for both (steps, imitation and
checkpoint every `--every` steps, no sample edits) and the `KEY=VALUE` overrides given, the same for
both. So the arms differ in their U-Nets alone. `--take sections` instead gives each backbone config
the recipe's `data:` and `imitation:` sections only; the tiny configs' random-weight AutoencoderKL
then carries too little of a picture for either arm to imitate (docs/training.md, "Does the XL
backbone learn to imitate?"). The composed configs are written to OUT/<arm>.yaml and both runs are
started at once, one intra-op thread each (`mimicbrush train OUT/<arm>.yaml --resume`, logs in
OUT/<arm>.log): running the script again resumes both from their latest checkpoints.

When both have finished (or with `--table-only`, from what they have measured so far) it writes
OUT/comparison.json and OUT/comparison.md (per step: each arm's gain at every timestep and win at
each, the XL/1.5 ratio of the gains at `--target-timestep` and whether the issue's target holds
there: XL's gain above zero and at least half the 1.5 arm's) and OUT/comparison.png
(imitation_curve.py's plot of both runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imitation_curve import plot, read_history  # noqa: E402

from mimicbrush.fileio import write_atomic  # noqa: E402
from mimicbrush.training.config import apply_overrides, parse_train_config, read_yaml  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
ARMS = {"sd15": REPOSITORY / "configs" / "train-tiny.yaml", "xl": REPOSITORY / "configs" / "train-tiny-xl.yaml"}
SECTIONS = ("data", "imitation")
UNETS = ("unet", "reference_unet")


def compose(backbone_config: Path, recipe_config: Path, mode: str, output_dir: Path, settings: list[str]) -> dict:
    """One arm's config, `settings` applied; its relative paths keep their meaning through
    `relative_to`. mode "sections": the backbone config with the recipe's data and imitation
    sections; "unets": the recipe config with the backbone config's U-Nets."""
    if backbone_config.resolve().parent != recipe_config.resolve().parent:
        raise SystemExit(f"error: {backbone_config} and {recipe_config} must lie in one folder (their relative "
                         "paths are read against one relative_to)")
    backbone = read_yaml(backbone_config)
    recipe = read_yaml(recipe_config)  # YAML anchors (the shared augmentation) are resolved here
    for key in SECTIONS:
        if key not in recipe:
            raise SystemExit(f"error: {recipe_config} has no {key}: section")
    if mode == "sections":
        document = {**backbone, **{key: recipe[key] for key in SECTIONS}}
    else:
        document = recipe
        model = document["model"] = dict(recipe["model"])
        for role in UNETS:
            model.pop(role, None)
            if role in backbone["model"]:
                model[role] = backbone["model"][role]
        # the one role a backbone adds: the XL arm trains its pooled projection, as train-tiny-xl.yaml does
        own, trainable = backbone.get("train", {}).get("trainable", []), document["train"].get("trainable")
        if trainable is not None and "pooled_proj" in own and "pooled_proj" not in trainable:
            document["train"] = {**document["train"], "trainable": [*trainable, "pooled_proj"]}
    document = {"relative_to": str(backbone_config.resolve().parent), **document, "output_dir": str(output_dir)}
    document = apply_overrides(document, settings)
    parse_train_config(document, backbone_config)  # a bad override fails here, before either run starts
    return document


def launch(configs: dict[str, Path], output: Path) -> None:
    """Both runs at once, one intra-op thread each; waits for both."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    processes = {}
    for arm, config in configs.items():
        log = open(output / f"{arm}.log", "a")  # noqa: SIM115 (kept open while the run writes to it)
        processes[arm] = (subprocess.Popen([sys.executable, "-m", "mimicbrush", "train", str(config), "--resume"],
                                           stdout=log, stderr=subprocess.STDOUT, env=environment), log)
        print(f"{arm}: started (pid {processes[arm][0].pid}), log {output / f'{arm}.log'}", file=sys.stderr)
    failed = []
    for arm, (process, log) in processes.items():
        if process.wait() != 0:
            failed.append(f"{arm} (exit {process.returncode}; see {log.name})")
        log.close()
    if failed:
        raise SystemExit(f"error: run failed: {', '.join(failed)}")


def comparison(histories: dict[str, list[dict]], target_timestep: str) -> list[dict]:
    """One row per step that every arm measured."""
    by_step = {arm: {entry["step"]: entry for entry in history} for arm, history in histories.items()}
    steps = sorted(set.intersection(*(set(entries) for entries in by_step.values())))
    rows = []
    for step in steps:
        entries = {arm: by_step[arm][step] for arm in histories}
        row = {"step": step, "samples": entries["sd15"]["samples"]}
        for arm, entry in entries.items():
            row[arm] = {timestep: {"gain": values["gain"], "win": values["win"]}
                        for timestep, values in entry.items() if timestep.startswith("t")}
        base, xl = row["sd15"][target_timestep]["gain"], row["xl"][target_timestep]["gain"]
        # the target compares with a 1.5 arm that imitates; where its gain is not positive it is moot
        row["xl_to_sd15_gain"] = xl / base if base > 0 else None
        row["target_met"] = (xl > 0 and xl >= 0.5 * base) if base > 0 else None
        rows.append(row)
    return rows


def markdown(rows: list[dict], target_timestep: str) -> str:
    timesteps = list(rows[0]["sd15"]) if rows else []
    gains = " / ".join(timesteps)
    lines = [f"| step (samples) | 1.5: gain {gains} | 1.5: win {gains} | XL: gain {gains} | XL: win {gains} "
             f"| XL / 1.5 gain at {target_timestep} | target met |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        cells = [f"{row['step']:,} ({row['samples']:,})"]
        for arm in ("sd15", "xl"):
            cells.append(" / ".join(f"{100 * row[arm][t]['gain']:+.1f}" for t in timesteps) + " %")
            cells.append(" / ".join(f"{100 * row[arm][t]['win']:.0f}" for t in timesteps) + " %")
        ratio = row["xl_to_sd15_gain"]
        cells.append("–" if ratio is None else f"{ratio:.2f}")
        cells.append({True: "yes", False: "**no**", None: "– (1.5 gain ≤ 0)"}[row["target_met"]])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(output: Path, target_timestep: str) -> list[dict]:
    histories = {arm: read_history(output / arm) for arm in ARMS}
    rows = comparison(histories, target_timestep)
    write_atomic(output / "comparison.json", json.dumps(
        {"target_timestep": target_timestep, "rows": rows,
         "configs": {arm: str(output / f"{arm}.yaml") for arm in ARMS}}, indent=1))
    write_atomic(output / "comparison.md", markdown(rows, target_timestep))
    plot({"1.5": histories["sd15"], "XL": histories["xl"]}, output / "comparison.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="overrides applied to both arms")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder of both runs and the table")
    parser.add_argument("--recipe", type=Path, default=REPOSITORY / "configs" / "demo-model.yaml",
                        help="the config whose data: and imitation: sections both arms take (default demo-model.yaml)")
    parser.add_argument("--take", choices=("unets", "sections"), default="unets",
                        help="unets: the whole recipe with each backbone config's U-Nets (default); "
                             "sections: each backbone config with the recipe's data and imitation sections")
    parser.add_argument("--steps", type=int, default=600, help="training steps of each arm (default 600)")
    parser.add_argument("--every", type=int, default=100, help="imitation metric and checkpoint every N steps")
    parser.add_argument("--target-timestep", default="t800", help="where the target is checked (default t800)")
    parser.add_argument("--table-only", action="store_true", help="only tabulate what the runs measured so far")
    args = parser.parse_args(argv)
    output = args.output.resolve()
    if not args.table_only:
        fixed = [f"train.max_steps={args.steps}", f"imitation.every_steps={args.every}",
                 f"checkpoint.every_steps={args.every}", "validation.every_steps=0"]
        configs = {}
        for arm, backbone_config in ARMS.items():
            document = compose(backbone_config, args.recipe, args.take, output / arm, fixed + args.settings)
            origin = (f"{backbone_config.name} with {args.recipe.name}'s data and imitation sections"
                      if args.take == "sections" else f"{args.recipe.name} with the U-Nets of {backbone_config.name}")
            configs[arm] = write_atomic(output / f"{arm}.yaml", f"# {origin}\n" + _dump(document))
        launch(configs, output)
    rows = write_table(output, args.target_timestep)
    sys.stdout.write(markdown(rows, args.target_timestep))
    return 0


def _dump(document: dict) -> str:
    import yaml

    return yaml.safe_dump(document, sort_keys=False)


if __name__ == "__main__":
    sys.exit(main())
