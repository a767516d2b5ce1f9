"""`mimicbrush data preview CONFIG -o DIR`: look at the training pairs a config produces."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect the self-supervised training data",
                                   description="Inspect the self-supervised training data.")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    preview = actions.add_parser(
        "preview", help="write a contact sheet of training pairs",
        description="Sample training pairs from the `data:` section of a training config and write "
                    "contact_sheet.png (rows: source | mask overlay | reference, keypoint matches "
                    "drawn), per-sample PNGs and samples.json to DIR. Prints the written paths.")
    preview.add_argument("config", type=Path, help="training config (YAML); only its data: section is read")
    preview.add_argument("-o", "--output-dir", type=Path, required=True, metavar="DIR", help="output folder")
    preview.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    preview.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    preview.add_argument("--epoch", type=int, default=0, help="epoch to sample from (default 0)")
    preview.set_defaults(func=run_preview)


def run_preview(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.dataset import build_dataset
    from ..data.preview import write_preview
    from ..errors import InputError

    if args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    if args.seed < 0 or args.epoch < 0:
        raise InputError("--seed and --epoch must not be negative")
    dataset = build_dataset(load_data_config(args.config), args.seed)
    dataset.set_epoch(args.epoch)
    count = min(args.n, len(dataset))
    # the context closes (and clears) the bar before an error line is printed
    with tqdm(total=count, desc="sampling", unit="pair", leave=False) as progress:

        def samples():
            for index in range(count):
                yield index, dataset.sample_pair(index, with_debug=True)
                progress.update()

        written = write_preview(samples(), args.output_dir)
    for path in written:
        print(path)
    return 0


def load_data_config(config_path: Path):
    """The validated `data:` section of a training YAML; other top-level keys are not checked here."""
    from ..data.config import DataConfig
    from ..errors import ConfigError
    from ..training.config import read_yaml  # the trainer's reader: same YAML rules (1e-5 is a number)

    document = read_yaml(Path(config_path))
    if "data" not in document:
        raise ConfigError(f"{config_path}: no 'data:' section")
    return DataConfig.from_dict(document["data"], base_dir=Path(config_path).resolve().parent)
