"""`mimicbrush` command line. Each subcommand lives in its own module with `register(subparsers)`.

Errors the user can fix are printed as one line on stderr with a non-zero exit; results go to
stdout, progress bars to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import MimicBrushError

# subcommand name -> module (imported lazily so `mimicbrush --help` stays fast)
SUBCOMMANDS = {
    "edit": "edit",
    "demo": "demo",
    "convert": "convert",
    "train": "train",
    "data": "data",
    "bench": "bench",
    "app": "app",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimicbrush",
        description="Zero-shot image editing with reference imitation (MimicBrush).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as error:
            if error.name and error.name.startswith(__name__):
                continue  # subcommand not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MimicBrushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
