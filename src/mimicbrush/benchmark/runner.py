"""Run a benchmark: make every edit (cached, resumable, split across processes), then score.

The pipeline is any callable with MimicBrushPipeline's call signature, so tests can pass a
stand-in. Each edit is written atomically to `OUT_DIR/edits/<track id>/NAME.png`; a rerun
makes only the missing ones. `OUT_DIR/run.json` pins the settings the cached edits were made
with, so a rerun with other settings cannot mix them.
With several processes (`accelerate launch`), each makes its share of the edits and the main
process scores them all and writes the reports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .. import imaging, samplers
from ..errors import InputError, MimicBrushError
from ..fileio import write_atomic
from ..sharding import process_share
from . import report
from .defaults import PAPER_GUIDANCE, PAPER_SEED, PAPER_STEPS, REFERENCE_MODES
from .scoring import CaseScorer
from .tracks import Case, Track

RUN_FILE = "run.json"


@dataclass(frozen=True)
class EditSettings:
    """Everything that changes an edit's pixels (paper defaults: seed 1, 50 DDIM steps, guidance 5)."""

    model: str
    steps: int = PAPER_STEPS
    scheduler: str = samplers.DEFAULT_SAMPLER  # a name in samplers.SAMPLERS; the caller sets the pipeline's
    guidance: float = PAPER_GUIDANCE
    seed: int = PAPER_SEED
    reference_mode: str = "true"
    zoom: str = "off"
    dtype: str = "auto"

    def __post_init__(self):
        if self.reference_mode not in REFERENCE_MODES:
            raise InputError(f"--reference-mode must be one of {', '.join(REFERENCE_MODES)}")
        if self.scheduler not in samplers.SAMPLERS:
            raise InputError(f"--scheduler must be one of {', '.join(samplers.SAMPLERS)}")


def edit_path(out_dir: Path, case: Case) -> Path:
    return out_dir / "edits" / case.track_id / f"{case.name}.png"


def reference_path_for(case: Case, mode: str) -> Path | None:
    """The reference the model gets: the case's own (also for `flipped`, mirrored when loaded),
    its mismatched one, or none (ablations)."""
    if mode == "none":
        return None
    if mode == "mismatched":
        if case.mismatched_reference_path is None:
            raise InputError(f"case {case.name!r} has no mismatched reference (its track has a single case)")
        return case.mismatched_reference_path
    return case.reference_path


def make_edit(pipeline: Callable[..., Any], case: Case, settings: EditSettings) -> Image.Image:
    source = imaging.load_image(case.source_path, "source")
    mask = imaging.load_mask(case.mask_path, source.size)
    binary = Image.fromarray(imaging.binary_mask(mask) * 255, "L")
    reference_path = reference_path_for(case, settings.reference_mode)
    reference = None if reference_path is None else imaging.load_image(reference_path, "reference")
    if settings.reference_mode == "flipped":  # copying co-located pixels cannot pass this one
        reference = ImageOps.mirror(reference)
    output = pipeline(
        source_image=source,
        mask_image=binary,
        reference_image=reference,
        keep_shape=case.kind.keep_shape,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        generator=torch.Generator("cpu").manual_seed(settings.seed),
        zoom=settings.zoom,
    )
    edit = output.images[0]
    if edit.size != source.size:
        raise MimicBrushError(f"the pipeline returned {edit.size} for the {source.size} source of {case.name!r}")
    return edit.convert("RGB")


def pin_settings(out_dir: Path, settings: EditSettings) -> None:
    """Record the settings in run.json, or refuse when the cached edits were made with others."""
    run_file = out_dir / RUN_FILE
    wanted = asdict(settings)
    if run_file.is_file():
        # runs from before --scheduler existed were made with the release's DDIM
        recorded = {"scheduler": samplers.DEFAULT_SAMPLER, **json.loads(run_file.read_text())}
        changed = {key: (recorded.get(key), value) for key, value in wanted.items() if recorded.get(key) != value}
        if changed:
            details = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise InputError(f"{out_dir} holds edits made with other settings ({details}); use another -o")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_file, json.dumps(wanted, indent=1) + "\n")


def generate_edits(
    cases: list[Case],
    pipeline: Callable[..., Any],
    out_dir: Path,
    settings: EditSettings,
    state: PartialState,
    progress: bool = True,
) -> None:
    """Make this process's share of the missing edits."""
    metadata = {"mimicbrush-bench": json.dumps(asdict(settings))}
    for case in process_share(cases, lambda case: edit_path(out_dir, case), state, desc="edits", progress=progress):
        imaging.save_image(make_edit(pipeline, case, settings), edit_path(out_dir, case), metadata=metadata, force=True)


def run_benchmark(
    tracks: list[Track],
    pipeline: Callable[..., Any],
    out_dir: str | Path,
    settings: EditSettings,
    scorer: CaseScorer | None,
    *,
    limit: int | None = None,
    state: PartialState | None = None,
    progress: bool = True,
) -> dict | None:
    """Edit, score and report. Returns the summary on the main process, None on the others
    (which need no scorer)."""
    out_dir = Path(out_dir)
    state = state or PartialState()
    cases = [case for track in tracks for case in track.cases][:limit]
    for case in cases:  # a missing mismatched reference fails now, not after hours of edits
        reference_path_for(case, settings.reference_mode)
    if state.is_main_process:
        pin_settings(out_dir, settings)
    state.wait_for_everyone()
    generate_edits(cases, pipeline, out_dir, settings, state, progress)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    rows = []
    for case in tqdm(cases, desc="scoring", disable=not progress):
        edit = imaging.load_image(edit_path(out_dir, case), "edit")
        relative_path = edit_path(out_dir, case).relative_to(out_dir)
        rows.append(report.case_row(case, relative_path, settings.reference_mode, scorer.score(case, edit)))
    summary = report.summarize(rows, tracks, settings, scorer.describe(), limit)
    sheet = [
        report.SheetRow(
            case.name,
            case.source_path,
            case.mask_path,
            reference_path_for(case, settings.reference_mode),
            edit_path(out_dir, case),
            case.gt_path,
        )
        for case in cases
    ]
    report.write_reports(out_dir, rows, summary, sheet)
    return summary
