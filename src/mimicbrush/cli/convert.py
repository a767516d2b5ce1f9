"""`mimicbrush convert`: the release's pickle layout → our fp16 safetensors folder."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a release-layout folder to a mimicbrush folder (fp16 safetensors)",
        description="Convert the release's layout (mimicbrush.bin pickle + SD folders) into one folder "
        "per component of fp16 safetensors, loadable with --model. The input is never modified.",
    )
    parser.add_argument("release_dir", help="folder in the release's layout")
    parser.add_argument("output_dir", help="new folder to write")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "fp32", "bf16"])
    parser.add_argument("--force", action="store_true", help="replace OUTPUT_DIR if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..devices import DTYPES
    from ..model_card import MODEL_CARD_FILE, parameter_counts, release_card
    from ..pipeline import MimicBrushPipeline
    from ..weights import is_release_layout

    source, target = Path(args.release_dir).resolve(), Path(args.output_dir).resolve()
    if not is_release_layout(source):
        raise InputError(f"{source} is not a release-layout folder (no mimicbrush/mimicbrush.bin)")
    if target == source or source in target.parents or target in source.parents:
        raise InputError("OUTPUT_DIR must be outside RELEASE_DIR (the input is never modified)")
    if target.exists() and any(target.iterdir()) and not args.force:
        raise InputError(f"{target} exists and is not empty (pass --force to replace it)")

    print(f"loading {source}", file=sys.stderr)
    pipe = MimicBrushPipeline.from_pretrained(source, torch_dtype=DTYPES[args.dtype])
    target.parent.mkdir(parents=True, exist_ok=True)
    # write beside the target, then swap in: an interrupted conversion leaves no half folder
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / MODEL_CARD_FILE).write_text(release_card(source, parameter_counts(pipe)))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(target)
    return 0
