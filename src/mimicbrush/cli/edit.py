"""`mimicbrush edit`: one edit from files to a file, or a batch of them from a manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__, edit_options, editing, imaging, samplers
from ..errors import InputError
from . import options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit",
        help="repaint the masked region of SOURCE by imitating REFERENCE",
        description="Repaint the masked region of SOURCE by imitating the matching part of the reference. "
        "With --batch, every edit of a manifest (docs/editing.md) with one model load.",
    )
    parser.add_argument("source", nargs="?", help="source image (not with --batch)")
    parser.add_argument("--mask", help="mask image (> 128 = edit) or a box x0,y0,x1,y1 (not with --batch)")
    parser.add_argument("--reference", action="append",
                        help="reference image (required unless --no-reference); repeat it to imitate several "
                        "references together")
    parser.add_argument("-o", "--output", required=True,
                        help="output image (.png, .jpg or .webp); with --batch the output folder")
    parser.add_argument("--batch", metavar="MANIFEST.jsonl",
                        help="edit every row of this JSON-lines manifest (one object per line: source, mask or box, "
                        "reference, optional output, seed and options); resumable, rows split over the processes "
                        "of `accelerate launch -m mimicbrush edit --batch ...`")
    parser.add_argument("--model", help="release-layout folder, mimicbrush folder, or hub id")
    parser.add_argument("--keep-shape", action="store_true", help="depth shape control (texture transfer)")
    parser.add_argument("--steps", type=int, default=edit_options.DEFAULT_STEPS,
                        help=f"scheduler steps (default {edit_options.DEFAULT_STEPS})")
    options.add_scheduler_argument(parser)
    parser.add_argument("--guidance", type=float, default=edit_options.DEFAULT_GUIDANCE,
                        help=f"guidance scale (default {edit_options.DEFAULT_GUIDANCE})")
    parser.add_argument("--seed", type=int, help=f"random seed, 0 to {edit_options.MAX_SEED} "
                        "(default: a random one, printed and stored)")
    options.add_device_arguments(parser)
    parser.add_argument("--no-reference", action="store_true",
                        help="the unconditional branch alone (the 'no reference' ablation)")
    options.add_editing_arguments(parser)  # --zoom, --zoom-margin, --zoom-threshold, --reference-box
    parser.add_argument("--offload", default="none", choices=["none", "model", "sequential"],
                        help="keep weights in CPU memory and stream them to the GPU (lower peak memory)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the U-Nets (CUDA graphs on GPU; falls back to eager if it fails)")
    parser.add_argument("--faithful", action="store_true",
                        help="the release's compute pattern (same result, slower; for measurement)")
    parser.add_argument("--depth-out", help="also write the depth preview here (with --keep-shape)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite existing output files (with --batch: redo rows whose output exists)")
    parser.set_defaults(func=run)


def zoom_options(args: argparse.Namespace) -> dict:
    """The pipeline's zoom keywords from the editing options."""
    chosen = options.editing_options(args)
    return {"zoom": chosen["zoom"], "zoom_margin": chosen["margin"], "zoom_threshold": chosen["threshold"]}


def check_edit_options(args: argparse.Namespace) -> None:
    """The checks one edit's options need before any loading (also each batch row's)."""
    edit_options.check_steps(args.steps)
    edit_options.check_guidance(args.guidance)
    edit_options.check_seed(args.seed)
    references = args.reference or []
    if not references and not args.no_reference:
        raise InputError("--reference is required (or pass --no-reference for the unconditional ablation)")
    boxes = args.reference_box or []
    if boxes and not args.no_reference and len(boxes) != len(references):
        raise InputError(f"--reference-box was given {len(boxes)} times for {len(references)} references: "
                         "give it once per --reference, paired in order, or not at all")
    if args.depth_out and not args.keep_shape:
        raise InputError("--depth-out needs --keep-shape (without shape control there is no depth map)")


def edit_inputs(args: argparse.Namespace) -> dict:
    """The pipeline's image arguments, loaded (so a bad file fails before the model loads). One
    reference is passed alone, several as a list; the mask follows the source's EXIF orientation
    (imaging.load_mask)."""
    source, mask = imaging.load_source_and_mask(args.source, args.mask)
    boxes = args.reference_box or None
    if args.no_reference:
        # a reference box without a reference is refused by the pipeline, as before
        return dict(source_image=source, mask_image=mask, reference_image=None,
                    reference_box=boxes[0] if boxes and len(boxes) == 1 else boxes)
    references = [imaging.load_image(path, "reference image") for path in args.reference]
    if len(references) == 1:
        return dict(source_image=source, mask_image=mask, reference_image=references[0],
                    reference_box=boxes[0] if boxes else None)
    return dict(source_image=source, mask_image=mask, reference_image=references, reference_box=boxes)


def make_edit(pipe, args: argparse.Namespace, seed: int, inputs: dict | None = None):
    """The pipeline's output for one edit with these options."""
    result = pipe(
        **(inputs or edit_inputs(args)),
        keep_shape=args.keep_shape,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=edit_options.generator(seed),
        faithful=args.faithful,
        **zoom_options(args),
    )
    for line in editing.describe_regions(result) if hasattr(result, "regions") else []:
        print(line, file=sys.stderr)
    return result


def edit_metadata(args: argparse.Namespace, seed: int, pipe) -> dict:
    """What the output's metadata records of an edit."""
    references = 0 if args.no_reference else len(args.reference or [])
    return {
        "mimicbrush": __version__,
        "model": str(args.model or "bundled demo model"),
        "seed": seed,
        "steps": args.steps,
        "scheduler": args.scheduler,
        "guidance": args.guidance,
        "keep_shape": args.keep_shape,
        "no_reference": args.no_reference,
        "zoom": args.zoom,
        **({"references": references} if references > 1 else {}),
        **({"reference_box": "; ".join(args.reference_box)} if args.reference_box else {}),
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
    }


def new_seed(args: argparse.Namespace) -> int:
    return edit_options.edit_seed(args.seed)


def run(args: argparse.Namespace) -> int:
    if args.batch is not None:
        return run_batch(args)
    if args.source is None or args.mask is None:
        raise InputError("give SOURCE and --mask (or --batch MANIFEST.jsonl for a batch of edits)")
    from ..loading import BUNDLED_MODEL_NOTICE, load_pipeline

    outputs = [Path(args.output)] + ([Path(args.depth_out)] if args.depth_out else [])
    for path in outputs:  # fail before minutes of loading, not after
        if path.exists() and not args.force:
            raise InputError(f"{path} already exists (pass --force to overwrite)")
    check_edit_options(args)
    inputs = edit_inputs(args)

    seed = new_seed(args)
    if args.seed is None:
        print(f"seed: {seed}", file=sys.stderr)
    if args.model is None:
        print(BUNDLED_MODEL_NOTICE, file=sys.stderr)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, offload=args.offload, compiled=args.compile)
    samplers.use_sampler(pipe, args.scheduler)
    result = make_edit(pipe, args, seed, inputs)
    metadata = edit_metadata(args, seed, pipe)
    written = [imaging.save_image(result.images[0], args.output, metadata=metadata, force=args.force)]
    if args.depth_out:
        written.append(imaging.save_image(result.depth_images[0], args.depth_out, force=args.force))
    for path in written:
        print(path)
    return 0


def run_batch(args: argparse.Namespace) -> int:
    """`edit --batch MANIFEST -o OUT_DIR`: every row, one model load; exit 2 if any row failed."""
    from ..batch import read_manifest, run_batch as run_rows
    from ..loading import BUNDLED_MODEL_NOTICE, load_pipeline
    from ..sharding import launch_state, process_device

    if args.source is not None or args.mask is not None:
        raise InputError("with --batch, SOURCE and --mask come from the manifest's rows, not the command line")
    if args.depth_out:
        raise InputError("--depth-out is for a single edit, not --batch")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"with --batch, -o names a folder, and {out_dir} is a file")
    rows, failed = read_manifest(args.batch, out_dir)

    def row_args(row) -> argparse.Namespace:
        return argparse.Namespace(**{**vars(args), **row.settings, "output": str(row.output)})

    checked = []
    for row in rows:  # option errors fail their row now, not after the model loads
        try:
            check_edit_options(row_args(row))
            checked.append(row)
        except InputError as error:
            failed[row.line] = str(error)
    state = launch_state(args.device)
    if state.is_main_process:
        for line, message in sorted(failed.items()):
            print(f"error: line {line}: {message}", file=sys.stderr)
        if args.model is None:
            print(BUNDLED_MODEL_NOTICE, file=sys.stderr)
    pipe = load_pipeline(args.model, device=process_device(state, args.device), dtype=args.dtype, offload=args.offload, compiled=args.compile)
    samplers.use_sampler(pipe, args.scheduler)  # the command line's for every row
    pipe.set_progress_bar_config(disable=True)  # one bar over the rows

    def edit_row(row) -> Path:
        options = row_args(row)
        seed = new_seed(options)
        result = make_edit(pipe, options, seed)
        return imaging.save_image(result.images[0], row.output, metadata=edit_metadata(options, seed, pipe),
                                  force=args.force)

    summary = run_rows(checked, edit_row, state, force=args.force, failed=failed)
    if state.is_main_process:
        print(f"batch: {summary.describe()}", file=sys.stderr)
    return 2 if summary.failed else 0
