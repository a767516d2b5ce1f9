"""`mimicbrush edit`: one edit from files to a file."""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from .. import __version__, editing, imaging, samplers
from ..errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit",
        help="repaint the masked region of SOURCE by imitating REFERENCE",
        description="Repaint the masked region of SOURCE by imitating the matching part of the reference.",
    )
    parser.add_argument("source", help="source image")
    parser.add_argument("--mask", required=True, help="mask image (> 128 = edit) or a box x0,y0,x1,y1")
    parser.add_argument("--reference", help="reference image (required unless --no-reference)")
    parser.add_argument("-o", "--output", required=True, help="output image (.png, .jpg or .webp)")
    parser.add_argument("--model", help="release-layout folder, mimicbrush folder, or hub id")
    parser.add_argument("--keep-shape", action="store_true", help="depth shape control (texture transfer)")
    parser.add_argument("--steps", type=int, default=50, help="scheduler steps (default 50)")
    samplers.add_argument(parser)  # --scheduler
    parser.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default 5.0)")
    parser.add_argument("--seed", type=int, help="random seed (default: a random one, printed and stored)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--no-reference", action="store_true",
                        help="the unconditional branch alone (the 'no reference' ablation)")
    editing.add_arguments(parser)  # --zoom, --zoom-margin, --zoom-threshold, --reference-box
    parser.add_argument("--offload", default="none", choices=["none", "model", "sequential"],
                        help="keep weights in CPU memory and stream them to the GPU (lower peak memory)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the U-Nets (CUDA graphs on GPU; falls back to eager if it fails)")
    parser.add_argument("--faithful", action="store_true",
                        help="the release's compute pattern (same result, slower; for measurement)")
    parser.add_argument("--depth-out", help="also write the depth preview here (with --keep-shape)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.set_defaults(func=run)


def zoom_options(args: argparse.Namespace) -> dict:
    """The pipeline's zoom/hint keywords from editing's command-line options."""
    options = editing.options_from_args(args)
    return {"zoom": options["zoom"], "reference_box": options["reference_box"],
            "zoom_margin": options["margin"], "zoom_threshold": options["threshold"]}


def run(args: argparse.Namespace) -> int:
    import torch

    from ..loading import load_pipeline

    outputs = [Path(args.output)] + ([Path(args.depth_out)] if args.depth_out else [])
    for path in outputs:  # fail before minutes of loading, not after
        if path.exists() and not args.force:
            raise InputError(f"{path} already exists (pass --force to overwrite)")
    if args.reference is None and not args.no_reference:
        raise InputError("--reference is required (or pass --no-reference for the unconditional ablation)")
    if args.depth_out and not args.keep_shape:
        raise InputError("--depth-out needs --keep-shape (without shape control there is no depth map)")
    source = imaging.load_image(args.source, "source image")
    mask = imaging.load_mask(args.mask, source.size)
    reference = None if args.no_reference else imaging.load_image(args.reference, "reference image")

    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if args.seed is None:
        print(f"seed: {seed}", file=sys.stderr)
    if args.model is None:
        print("model: the bundled demo model (pass --model for another)", file=sys.stderr)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, offload=args.offload, compiled=args.compile)
    samplers.use_sampler(pipe, args.scheduler)
    result = pipe(
        source_image=source,
        mask_image=mask,
        reference_image=reference,
        keep_shape=args.keep_shape,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
        faithful=args.faithful,
        **zoom_options(args),
    )
    for line in editing.describe_regions(result) if hasattr(result, "regions") else []:
        print(line, file=sys.stderr)
    metadata = {
        "mimicbrush": __version__,
        "model": str(args.model or "bundled demo model"),
        "seed": seed,
        "steps": args.steps,
        "scheduler": args.scheduler,
        "guidance": args.guidance,
        "keep_shape": args.keep_shape,
        "no_reference": args.no_reference,
        "zoom": args.zoom,
        **({"reference_box": args.reference_box} if args.reference_box else {}),
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
    }
    written = [imaging.save_image(result.images[0], args.output, metadata=metadata, force=args.force)]
    if args.depth_out:
        written.append(imaging.save_image(result.depth_images[0], args.depth_out, force=args.force))
    for path in written:
        print(path)
    return 0
