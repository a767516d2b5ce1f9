"""`mimicbrush train CONFIG`: train (or fine-tune) a MimicBrush model from a YAML config."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


class _TrainParser(argparse.ArgumentParser):
    """Lets KEY=VALUE overrides follow options (`CONFIG --max-steps 5 optim.lr=1e-4`): plain
    argparse ends the positionals at the first option."""

    _parsing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._parsing:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train or fine-tune a model from a YAML config",
        description="Train a MimicBrush model as a YAML config describes (schema: docs/training.md). "
                    "Runs on one process as is; for several GPUs or nodes start it with "
                    "`accelerate launch -m mimicbrush train ...`. Prints the exported model folder.")
    parser.__class__ = _TrainParser
    parser.add_argument("config", type=Path, help="training config (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override a config value by its dotted path, e.g. optim.lr=1e-4 train.batch_size=4")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CKPT",
                        help="continue from a checkpoint folder, or from the run's latest checkpoint when no "
                             "folder is given (starting fresh if there is none yet)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="same as train.max_steps=N")
    parser.add_argument("--output-dir", type=Path, metavar="DIR",
                        help="run folder (checkpoints, logs, samples, model); default: the config's output_dir")
    parser.add_argument("--export", nargs="?", const="latest", metavar="CKPT",
                        help="do not train: export a checkpoint (default: the latest) to "
                             "OUTPUT_DIR/model-step-N and print its path")
    parser.add_argument("--measure-imitation", metavar="MODEL",
                        help="do not train: measure the config's imitation metric (imitation:, docs/training.md) "
                             "on MODEL (a model folder or hub id; 'bundled' for the bundled demo model) and print "
                             "it as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..training import export_checkpoint, load_train_config, train

    overrides = list(args.overrides)
    resume = _give_back_override(args.resume, overrides)
    export = _give_back_override(args.export, overrides)
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError(f"--max-steps must be at least 1, got {args.max_steps}")
    if resume is not None and export is not None:
        raise ConfigError("--resume and --export do not go together")
    config = load_train_config(args.config, overrides, max_steps=args.max_steps, output_dir=args.output_dir)
    if args.measure_imitation is not None:
        return _measure(args.measure_imitation, config)
    path = export_checkpoint(config, export) if export is not None else train(config, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, one process prints
        print(path)
    return 0


def _give_back_override(value: str | None, overrides: list[str]) -> str | None:
    """`--resume optim.lr=1` hands the override to --resume as its CKPT: put it back among the
    overrides and take the latest checkpoint."""
    if value is not None and "=" in value and not Path(value).exists():
        overrides.insert(0, value)
        return "latest"
    return value


def _measure(model: str, config) -> int:
    import json

    from ..errors import ConfigError
    from ..loading import default_model
    from ..training.imitation import measure_model

    if config.imitation.data is None:
        raise ConfigError(f"--measure-imitation: {config.config_path} has no imitation.data section")
    results = measure_model(str(default_model()) if model == "bundled" else model, config.imitation)
    print(json.dumps(results, indent=1))
    return 0
