"""Benchmark outputs: per-case CSV, summary JSON, markdown table and contact sheet.

`markdown_table` also serves `bench compare`: one row per (run, track), with the paper's
reported numbers as a reference row for the tracks the paper reports.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from .. import imaging
from ..errors import InputError
from ..fileio import write_atomic
from .paper import PAPER_LABEL, PAPER_RESULTS
from .scoring import METRIC_KEYS, METRICS, SCOPES
from .tracks import Case, Track

SUMMARY_FORMAT = 1
SUMMARY_KIND = "mimicbrush-bench-summary"
CSV_FIELDS = ("track", "case", "reference_mode", "edit", "mask_fraction") + METRIC_KEYS
THUMBNAIL_SIDE = 160
CAPTION_HEIGHT = 16
SHEET_COLUMNS = ("source", "mask", "reference given", "edit", "ground truth")
BACKGROUND = (40, 40, 40)


def case_row(case: Case, edit: Path, reference_mode: str, scores: dict) -> dict:
    return {
        "track": case.track_id,
        "case": case.name,
        "reference_mode": reference_mode,
        "edit": edit.as_posix(),
        **scores,
    }


def summarize(rows: list[dict], tracks: list[Track], settings, scoring: dict, limit: int | None) -> dict:
    """Per-track means of every metric over the cases that have it (`counts` says how many)."""
    summary_tracks = {}
    for track in tracks:
        track_rows = [row for row in rows if row["track"] == track.track_id]
        if not track_rows:
            continue  # cut off by --limit
        values = {key: [row[key] for row in track_rows if row[key] is not None] for key in METRIC_KEYS}
        summary_tracks[track.track_id] = {
            "kind": track.kind.to_json(),
            "cases": len(track_rows),
            "means": {key: statistics.fmean(found) if found else None for key, found in values.items()},
            "counts": {key: len(found) for key, found in values.items()},
        }
    return {
        "format": SUMMARY_FORMAT,
        "kind": SUMMARY_KIND,
        "settings": asdict(settings),
        "limit": limit,
        "scoring": scoring,
        "scopes": SCOPES,
        "metrics": {
            metric.key: {"label": metric.label, "scope": metric.scope, "higher_is_better": metric.higher_is_better}
            for metric in METRICS
        },
        "tracks": summary_tracks,
    }


def load_summary(path: str | Path) -> dict:
    path = Path(path)
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    if not isinstance(summary, dict) or summary.get("kind") != SUMMARY_KIND:
        raise InputError(f"{path} is not a `mimicbrush bench run` summary.json")
    return summary


def run_label(path: str | Path) -> str:
    """A summary is always `summary.json`, so its folder names the run."""
    path = Path(path)
    return path.parent.name if path.name == "summary.json" and path.parent.name else path.stem


def markdown_table(runs: list[tuple[str, dict]]) -> str:
    """One markdown table: per track, the paper's row (if it reports one) then each run's row.
    Columns without any value are left out; "box" columns are inside the mask's bounding box."""
    track_ids = list(dict.fromkeys(track_id for _, summary in runs for track_id in summary["tracks"]))
    rows = []
    for track_id in track_ids:
        if track_id in PAPER_RESULTS:
            rows.append((PAPER_LABEL, track_id, "true", "", PAPER_RESULTS[track_id]))
        for label, summary in runs:
            track = summary["tracks"].get(track_id)
            if track is not None:
                mode = summary["settings"]["reference_mode"]
                rows.append((label, track_id, mode, str(track["cases"]), track["means"]))
    metrics = [metric for metric in METRICS if any(values.get(metric.key) is not None for *_, values in rows)]
    header = ["run", "track", "reference", "cases"] + [metric.label for metric in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, track_id, mode, cases, values in rows:
        cells = [label, track_id, mode, cases] + [_format(values.get(metric.key), metric.digits) for metric in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class SheetRow:
    case: str
    source: Path
    mask: Path
    reference: Path | None  # what the model was given (None: the no-reference ablation)
    edit: Path
    ground_truth: Path | None


def contact_sheet(rows: list[SheetRow]) -> Image.Image:
    """source | mask | reference given | edit | ground truth, one case per row, captioned."""
    width = THUMBNAIL_SIDE * len(SHEET_COLUMNS)
    row_height = CAPTION_HEIGHT + THUMBNAIL_SIDE
    sheet = Image.new("RGB", (width, CAPTION_HEIGHT + row_height * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(SHEET_COLUMNS):
        draw.text((column * THUMBNAIL_SIDE + 4, 2), title, fill="white")
    for index, row in enumerate(rows):
        top = CAPTION_HEIGHT + index * row_height
        draw.text((4, top + 2), row.case, fill="yellow")
        for column, path in enumerate((row.source, row.mask, row.reference, row.edit, row.ground_truth)):
            sheet.paste(_thumbnail(path), (column * THUMBNAIL_SIDE, top + CAPTION_HEIGHT))
    return sheet


def _thumbnail(path: Path | None) -> Image.Image:
    tile = Image.new("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE), BACKGROUND)
    if path is None:
        ImageDraw.Draw(tile).text((THUMBNAIL_SIDE // 2 - 12, THUMBNAIL_SIDE // 2 - 6), "none", fill="gray")
        return tile
    with Image.open(path) as image:
        image = ImageOps.contain(image.convert("RGB"), (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    tile.paste(image, ((THUMBNAIL_SIDE - image.width) // 2, (THUMBNAIL_SIDE - image.height) // 2))
    return tile


def write_reports(out_dir: Path, rows: list[dict], summary: dict, sheet_rows: list[SheetRow]) -> None:
    """cases.csv, summary.json, summary.md and contact_sheet.png in `out_dir`."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in CSV_FIELDS})
    write_atomic(out_dir / "cases.csv", table.getvalue())
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    write_atomic(out_dir / "summary.md", markdown_table([(out_dir.name, summary)]))
    imaging.save_image(contact_sheet(sheet_rows), out_dir / "contact_sheet.png", force=True)
