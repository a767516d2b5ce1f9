"""Batch edits from a JSON-lines manifest: one model load, resumable, split over processes.

Each line of the manifest is one edit (docs/editing.md has the format). `read_manifest` turns the
lines into `BatchRow`s, each holding the settings that override the command line's for that edit,
or into an error for its line; `run_batch` makes this process's share of the rows whose output is
missing (the same split and resume as `bench run`: sharding.py), so a bad row is reported with its
line number and the others go on, and an interrupted run loses at most the row in flight (every
output is written atomically).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from . import imaging
from .config_reader import Section, type_name
from .errors import ConfigError, InputError, MimicBrushError
from .sharding import pending_items, process_share

OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# the per-edit options a row may set, as (key, kind); each overrides the command line's option
# of the same name
ROW_OPTIONS = (
    ("keep_shape", "boolean"),
    ("steps", "integer"),
    ("guidance", "number"),
    ("seed", "integer"),
    ("no_reference", "boolean"),
    ("zoom", "zoom"),
    ("zoom_margin", "number"),
    ("zoom_threshold", "number"),
    ("faithful", "boolean"),
)
# one model serves every row, so these are the command line's alone
COMMAND_LINE_ONLY = ("model", "device", "dtype", "offload", "compile")


@dataclass(frozen=True)
class BatchRow:
    """One edit of the manifest: its line (1-based), its output file (inside the output folder)
    and the settings it sets, by the command line's option names (source, mask, reference,
    reference_box, and any of ROW_OPTIONS)."""

    line: int
    output: Path
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchSummary:
    """What a run did, over every process: rows written now, rows skipped (output already there)
    and failed rows (line -> message, with the manifest's unusable lines)."""

    written: int = 0
    skipped: int = 0
    failed: dict[int, str] = field(default_factory=dict)

    def describe(self) -> str:
        text = f"{self.written} written, {self.skipped} skipped (output already there), {len(self.failed)} failed"
        if self.failed:
            text += f" (line{'s' if len(self.failed) > 1 else ''} {', '.join(str(line) for line in sorted(self.failed))})"
        return text


def read_manifest(manifest: str | Path, out_dir: str | Path) -> tuple[list[BatchRow], dict[int, str]]:
    """The manifest's edits, and an error message per unusable line. Blank lines are skipped.
    Relative paths in a row are relative to the manifest's folder."""
    manifest, out_dir = Path(manifest), Path(out_dir)
    if not manifest.is_file():
        raise InputError(f"manifest not found: {manifest}")
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as error:
        raise InputError(f"manifest {manifest} cannot be read: {error}") from None
    rows, errors, owners = [], {}, {}
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            row = _read_row(number, text, manifest.parent, out_dir)
            if row.output in owners:
                raise InputError(f"output {row.output.name!r} is also line {owners[row.output]}'s")
        except (MimicBrushError, ValueError) as error:
            errors[number] = str(error)
            continue
        owners[row.output] = number
        rows.append(row)
    if not rows and not errors:
        raise InputError(f"manifest {manifest} has no rows (one JSON object per line)")
    return rows, errors


def _read_row(number: int, text: str, base_dir: Path, out_dir: Path) -> BatchRow:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(raw, dict):
        raise InputError(f"expected a JSON object, got {type_name(raw)}")
    for key in COMMAND_LINE_ONLY:
        if key in raw:
            raise InputError(f"{key}: the model, device and dtype are the command line's alone (remove it from the row)")
    row = Section(raw, "", base_dir)
    source = row.path("source", None)
    settings: dict[str, Any] = {"source": str(source), "mask": _mask(row)}
    if "reference" in raw:
        settings["reference"] = [str(path) for path in row.path_list("reference")]
        if not settings["reference"]:
            raise ConfigError("reference: expected a path or a list of paths, got an empty list")
    if "reference_box" in raw:
        boxes = row.take("reference_box", None)
        boxes = boxes if isinstance(boxes, list) else [boxes]
        if not all(isinstance(box, str) for box in boxes):
            raise ConfigError(f"reference_box: expected 'x0,y0,x1,y1' or a list of them, got {raw['reference_box']!r}")
        settings["reference_box"] = boxes
    for key, kind in ROW_OPTIONS:
        if key in raw:
            settings[key] = _option(row, key, kind)
    for key in ("reference", "reference_box", *(key for key, _ in ROW_OPTIONS)):
        row.take(key, None)  # known keys, for finish()'s "did you mean"
    output = row.string("output", f"{number:04d}-{source.stem}.png")
    row.finish()
    return BatchRow(number, out_dir / _output_name(output), settings)


def _mask(row: Section) -> str:
    """The row's mask: an image (a path) or a box, from exactly one of `mask` and `box`."""
    mask, box = row.take("mask", None), row.take("box", None)
    if (mask is None) == (box is None):
        raise ConfigError("give exactly one of mask (an image or a box) and box (x0,y0,x1,y1)")
    if box is not None:
        if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            box = ",".join(str(value) for value in box)
        if not isinstance(box, str):
            raise ConfigError(f"box: expected 'x0,y0,x1,y1' or a list of four numbers, got {type_name(box)}")
        imaging.parse_box(box)  # the form now; the bounds once the source is open
        return box
    if isinstance(mask, str) and imaging.looks_like_box(mask):
        return mask
    return str(row.path("mask", None))


def _option(row: Section, key: str, kind: str):
    if kind == "boolean":
        return row.boolean(key, None)
    if kind == "integer":
        return row.integer(key, None)
    if kind == "number":
        return row.number(key, None)
    return row.choice(key, None, ("off", "auto"))


def _output_name(name: str) -> PurePosixPath:
    """A file name (or a path with folders) inside the output folder, with an image extension."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise ConfigError(f"output: {name!r} must be a name inside the output folder (no '..', not absolute)")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"output: {name!r} must end in .png, .jpg or .webp")
    return path


def run_batch(
    rows: list[BatchRow],
    edit_row: Callable[[BatchRow], Path],
    state,
    *,
    force: bool = False,
    progress: bool = True,
    failed: dict[int, str] | None = None,
) -> BatchSummary:
    """Make this process's share of the rows whose output is missing (every row with `force`).

    edit_row makes and writes one row's edit and returns the path written; a MimicBrushError it
    raises fails that row only: the row is reported on stderr with its line number and the rest
    go on. Any other exception is a bug and stops the run. `failed`: rows already known to be
    unusable (read_manifest's errors), counted in the summary. Returns the summary over every
    process (every process gets it).
    """
    summary = BatchSummary(skipped=len(rows) - len(pending_items(rows, lambda row: row.output, force)))
    mine: dict[int, str] = {}
    written = 0
    for row in process_share(rows, lambda row: row.output, state, force=force, desc="batch edits", progress=progress):
        try:
            path = edit_row(row)
        except MimicBrushError as error:
            mine[row.line] = str(error)
            tqdm.write(f"error: line {row.line}: {error}", file=sys.stderr)
            continue
        written += 1
        tqdm.write(str(path), file=sys.stdout)
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        counts = gather_object([(written, mine)])
    else:
        counts = [(written, mine)]
    summary.written = sum(count for count, _ in counts)
    summary.failed = {**(failed or {}), **{line: message for _, errors in counts for line, message in errors.items()}}
    return summary
