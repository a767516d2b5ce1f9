"""The edit's options as command-line flags, shared by `edit`, `demo` and `bench run`.

Names, defaults and checks come from mimicbrush.edit_options (one place for every front end);
this module only spells them as argparse options.
"""

from __future__ import annotations

import argparse

from .. import edit_options, editing, samplers


def sampler_help() -> str:
    """The scheduler names, grouped by their U-Net calls for N steps."""
    groups: dict[str, list[str]] = {}
    for sampler in samplers.SAMPLERS.values():
        groups.setdefault(sampler.calls_for_steps, []).append(sampler.name)
    return "; ".join(f"{', '.join(names)}: {calls} U-Net calls" for calls, names in groups.items())


def add_scheduler_argument(parser: argparse.ArgumentParser) -> None:
    """--scheduler NAME, for the commands that edit (edit, demo, bench run)."""
    parser.add_argument(
        "--scheduler", default=edit_options.DEFAULT_SCHEDULER, choices=list(edit_options.SCHEDULERS), metavar="NAME",
        help=f"sampler ({sampler_help()} for --steps N); default {edit_options.DEFAULT_SCHEDULER}, the release's. "
        "One that cannot serve the model's prediction type is refused (docs/performance.md)",
    )


def add_device_arguments(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """--device and --dtype, for every command that loads a model (mimicbrush.devices: the rule)."""
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA, else Apple's MPS, else the CPU), cpu, cuda, cuda:N or mps (default auto)")
    if dtype:
        parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                            help="auto: fp16 on CUDA and MPS, fp32 on the CPU (where fp16 is slow)")


def add_editing_arguments(parser: argparse.ArgumentParser) -> None:
    """--zoom, --zoom-margin, --zoom-threshold, --reference-box (`edit`)."""
    parser.add_argument(
        "--zoom", choices=edit_options.ZOOM_MODES, default=edit_options.DEFAULT_ZOOM,
        help="auto: edit small masked regions on a crop around each, at the model's full resolution "
        "(default off: the release's behaviour)",
    )
    parser.add_argument(
        "--zoom-margin", type=float, default=editing.DEFAULT_ZOOM_MARGIN, metavar="M",
        help=f"context around a zoomed region on each side, × its long side (default {editing.DEFAULT_ZOOM_MARGIN})",
    )
    parser.add_argument(
        "--zoom-threshold", type=float, default=editing.DEFAULT_ZOOM_THRESHOLD, metavar="F",
        help=f"zoom regions whose box covers less than this share of the image (default {editing.DEFAULT_ZOOM_THRESHOLD})",
    )
    parser.add_argument(
        "--reference-box", metavar="x0,y0,x1,y1", action="append",
        help="restrict what the reference offers: it is cropped to this box (plus a little context); "
        "with several --reference, once per reference, paired in order",
    )


def editing_options(args: argparse.Namespace) -> dict:
    """zoomed_edit's keyword arguments from the options add_editing_arguments defined (one
    --reference-box: its box; several: their list, one per reference)."""
    boxes = args.reference_box
    return {
        "zoom": args.zoom,
        "margin": args.zoom_margin,
        "threshold": args.zoom_threshold,
        "reference_box": boxes[0] if isinstance(boxes, list) and len(boxes) == 1 else boxes,
    }
