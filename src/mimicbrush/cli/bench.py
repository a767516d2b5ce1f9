"""`mimicbrush bench`: build the inner-ID track, run a benchmark, compare runs (docs/benchmark.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..benchmark.defaults import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_DINO_MODEL,
    DEFAULT_LPIPS_NET,
    PAPER_GUIDANCE,
    PAPER_SEED,
    PAPER_STEPS,
    REFERENCE_MODES,
)
from .. import samplers
from ..errors import InputError
from . import options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark: build the inner-ID track, run a model on tracks, compare runs",
        description="The paper's benchmark (part composition / texture transfer, inter-ID / inner-ID).",
    )
    commands = parser.add_subparsers(dest="bench_command", metavar="COMMAND")
    commands.required = True
    _register_build_inner_id(commands)
    _register_run(commands)
    _register_compare(commands)


def _register_build_inner_id(commands) -> None:
    parser = commands.add_parser(
        "build-inner-id",
        help="build the part-composition inner-ID track from DreamBooth photos",
        description="Write TRACK_DIR/PartComp/WithinInstance/: pairs of photos of one subject, the "
        "source masked over part of the subject by a seeded procedure, the original as ground truth.",
    )
    parser.add_argument("dreambooth_dir", type=Path, metavar="DREAMBOOTH_DIR", help="one folder of photos per subject")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="TRACK_DIR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs-per-subject", type=int, default=2)
    parser.add_argument("--small-masks", action="store_true", help="masks under 5%% of the image (zoom-in study)")
    parser.add_argument("--crossing-masks", action="store_true",
                        help="ellipses and boxes over the subject's edge, half subject, half background")
    parser.add_argument("--force", action="store_true", help="replace a track already there")
    parser.set_defaults(func=_build_inner_id)


def _register_run(commands) -> None:
    parser = commands.add_parser(
        "run",
        help="edit every case of a track (cached, resumable), score, write reports",
        description="TRACK_DIR is a benchmark root (PartComp/…, TextureTrans/…) or one track folder. "
        "Writes OUT_DIR/edits/, cases.csv, summary.json, summary.md, contact_sheet.png and prints "
        "the table. Several GPUs: `accelerate launch -m mimicbrush bench run …`.",
    )
    parser.add_argument("track_dir", type=Path, metavar="TRACK_DIR")
    parser.add_argument("--model", required=True, metavar="PATH_OR_ID")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    parser.add_argument("--steps", type=int, default=PAPER_STEPS)
    options.add_scheduler_argument(parser)
    parser.add_argument("--guidance", type=float, default=PAPER_GUIDANCE)
    parser.add_argument("--seed", type=int, default=PAPER_SEED, help="the same seed for every case (paper: 1)")
    parser.add_argument(
        "--reference-mode",
        choices=REFERENCE_MODES,
        default="true",
        help="mismatched: another subject's reference; none: no reference; flipped: the true reference "
             "mirrored left-right (ablations)",
    )
    parser.add_argument("--zoom", choices=("off", "auto"), default="off")
    options.add_device_arguments(parser)
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N cases")
    parser.add_argument(
        "--dino-model",
        default=DEFAULT_DINO_MODEL,
        metavar="PATH_OR_ID|none",
        help=f"DINOv2 for DINO-I (default {DEFAULT_DINO_MODEL})",
    )
    parser.add_argument(
        "--clip-model",
        default=DEFAULT_CLIP_MODEL,
        metavar="PATH_OR_ID|none",
        help=f"CLIP for CLIP-I and CLIP-T (default {DEFAULT_CLIP_MODEL})",
    )
    parser.add_argument(
        "--lpips-net",
        default=DEFAULT_LPIPS_NET,
        metavar="alex|vgg|squeeze|none",
        help="LPIPS backbone; needs the optional `lpips` package, else reported as skipped",
    )
    parser.set_defaults(func=_run)


def _register_compare(commands) -> None:
    parser = commands.add_parser(
        "compare",
        help="print one markdown table of several runs, with the paper's numbers",
        description="Each SUMMARY is a summary.json written by `bench run`.",
    )
    parser.add_argument("summaries", nargs="+", type=Path, metavar="SUMMARY")
    parser.set_defaults(func=_compare)


def _build_inner_id(args: argparse.Namespace) -> int:
    from ..benchmark.inner_id import PAPER_CASE_COUNT, InnerIdOptions, build_inner_id_track

    options = InnerIdOptions(seed=args.seed, pairs_per_subject=args.pairs_per_subject, small_masks=args.small_masks,
                             crossing_masks=args.crossing_masks)
    track = build_inner_id_track(args.dreambooth_dir, args.output, options, force=args.force)
    if len(track.cases) < PAPER_CASE_COUNT:
        print(f"note: {len(track.cases)} cases, fewer than the paper's {PAPER_CASE_COUNT}", file=sys.stderr)
    print(track.folder)
    return 0


def _run(args: argparse.Namespace) -> int:
    from ..benchmark.report import markdown_table
    from ..benchmark.runner import EditSettings, run_benchmark
    from ..benchmark.scoring import CaseScorer
    from ..benchmark.tracks import load_tracks
    from ..devices import resolve_device
    from ..loading import load_pipeline
    from ..sharding import launch_state, process_device

    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    tracks = load_tracks(args.track_dir)
    settings = EditSettings(
        model=str(args.model),
        steps=args.steps,
        scheduler=args.scheduler,
        guidance=args.guidance,
        seed=args.seed,
        reference_mode=args.reference_mode,
        zoom=args.zoom,
        dtype=args.dtype,
    )
    state = launch_state(args.device)
    device = str(resolve_device(process_device(state, args.device)))  # the pipeline's and the scorers'
    scorer = None
    if state.is_main_process:  # load the metric networks first: fail before hours of edits
        scorer = CaseScorer.load(
            _unless_none(args.dino_model),
            _unless_none(args.clip_model),
            _unless_none(args.lpips_net),
            device=device,
        )
        for reason in dict.fromkeys(scorer.skipped.values()):  # CLIP-I and CLIP-T share one
            print(f"note: {reason}", file=sys.stderr)
    pipeline = load_pipeline(args.model, device=device, dtype=args.dtype)
    samplers.use_sampler(pipeline, args.scheduler)
    summary = run_benchmark(tracks, pipeline, args.output, settings, scorer, limit=args.limit, state=state)
    if summary is not None:
        print(markdown_table([(args.output.name, summary)]), end="")
        print(f"wrote {args.output}/summary.json, cases.csv, summary.md, contact_sheet.png", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from ..benchmark.report import load_summary, markdown_table, run_label

    runs = [(run_label(path), load_summary(path)) for path in args.summaries]
    print(markdown_table(runs), end="")
    return 0


def _unless_none(value: str) -> str | None:
    return None if value.strip().lower() == "none" else value
