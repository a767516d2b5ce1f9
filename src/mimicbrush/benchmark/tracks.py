"""Benchmark tracks on disk: the release's folder layout plus our `track.json`.

A track folder holds `NAME_source.png`, `NAME_source_mask.png`, `NAME_reference.png` per case
(the release's runner reads exactly these) and, in ours, `NAME_gt.png` (inner-ID ground truth)
and `track.json` (kind, per-case prompt / reference region / mismatched reference, builder).
A benchmark root holds up to four such folders: `PartComp/{CrossInstance,WithinInstance}` and
`TextureTrans/{CrossInstance,WithinInstance}`. docs/benchmark.md documents the JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

TRACK_FILE = "track.json"
TRACK_FORMAT = 1
TASK_FOLDERS = {"part_composition": "PartComp", "texture_transfer": "TextureTrans"}
IDENTITY_FOLDERS = {"inter_id": "CrossInstance", "inner_id": "WithinInstance"}
CASE_FILE_SUFFIXES = ("_source.png", "_source_mask.png", "_reference.png", "_gt.png")

Box = tuple[int, int, int, int]
# A case's annotated reference region: a box in reference pixels, a mask file, or None (whole image).
ReferenceRegion = Box | Path | None


@dataclass(frozen=True)
class TrackKind:
    task: str  # "part_composition" | "texture_transfer"
    identity: str  # "inter_id" | "inner_id"

    def __post_init__(self):
        if self.task not in TASK_FOLDERS or self.identity not in IDENTITY_FOLDERS:
            raise InputError(
                f"unknown track kind {self.task!r}/{self.identity!r} "
                f"(task: {', '.join(TASK_FOLDERS)}; identity: {', '.join(IDENTITY_FOLDERS)})"
            )

    @property
    def track_id(self) -> str:
        """The release's relative folder, e.g. `PartComp/WithinInstance`."""
        return f"{TASK_FOLDERS[self.task]}/{IDENTITY_FOLDERS[self.identity]}"

    @property
    def keep_shape(self) -> bool:
        """Texture transfer keeps the source's shape through the depth branch (paper)."""
        return self.task == "texture_transfer"

    @classmethod
    def from_folder_names(cls, folder: Path) -> TrackKind | None:
        tasks = {name: task for task, name in TASK_FOLDERS.items()}
        identities = {name: identity for identity, name in IDENTITY_FOLDERS.items()}
        if folder.parent.name in tasks and folder.name in identities:
            return cls(tasks[folder.parent.name], identities[folder.name])
        return None

    def to_json(self) -> dict:
        return {"task": self.task, "identity": self.identity}


@dataclass(frozen=True)
class Case:
    name: str
    folder: Path
    kind: TrackKind
    prompt: str | None = None
    reference_region: ReferenceRegion = None
    mismatched_reference: str | None = None  # name of another case whose reference is used

    @property
    def track_id(self) -> str:
        return self.kind.track_id

    @property
    def source_path(self) -> Path:
        return self.folder / f"{self.name}_source.png"

    @property
    def mask_path(self) -> Path:
        return self.folder / f"{self.name}_source_mask.png"

    @property
    def reference_path(self) -> Path:
        return self.folder / f"{self.name}_reference.png"

    @property
    def gt_path(self) -> Path | None:
        path = self.folder / f"{self.name}_gt.png"
        return path if path.is_file() else None

    @property
    def mismatched_reference_path(self) -> Path | None:
        if self.mismatched_reference is None:
            return None
        return self.folder / f"{self.mismatched_reference}_reference.png"


@dataclass(frozen=True)
class Track:
    folder: Path
    kind: TrackKind
    cases: tuple[Case, ...]
    builder: dict | None = None  # the builder's seed and procedure, when we built it

    @property
    def track_id(self) -> str:
        return self.kind.track_id


def load_tracks(path: str | os.PathLike) -> list[Track]:
    """Every track under a benchmark root, or the one track when `path` is a track folder."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"track folder not found: {path}")
    subfolders = [
        path / task / identity
        for task in TASK_FOLDERS.values()
        for identity in IDENTITY_FOLDERS.values()
        if (path / task / identity).is_dir()
    ]
    if subfolders:
        return [load_track(folder) for folder in subfolders]
    return [load_track(path)]


def load_track(folder: str | os.PathLike) -> Track:
    """One track folder: cases from `track.json` when present, otherwise from the file names."""
    folder = Path(folder)
    track_file = folder / TRACK_FILE
    if track_file.is_file():
        track = _track_from_json(folder, track_file)
    else:
        track = _track_from_files(folder)
    if not track.cases:
        raise InputError(f"no cases in {folder} (expected NAME_source.png files)")
    for case in track.cases:
        for required in (case.source_path, case.mask_path, case.reference_path):
            if not required.is_file():
                raise InputError(f"case {case.name!r} of {folder} lacks {required.name}")
    return track


def _track_from_files(folder: Path) -> Track:
    kind = TrackKind.from_folder_names(folder)
    if kind is None:
        raise InputError(
            f"cannot tell the kind of track {folder}: it has no {TRACK_FILE} and is not named "
            "PartComp/… or TextureTrans/… + CrossInstance or WithinInstance"
        )
    names = sorted(path.name[: -len("_source.png")] for path in folder.glob("*_source.png"))
    # Without annotations, the mismatched reference is the next case's (in name order).
    cases = tuple(
        Case(
            name=name,
            folder=folder,
            kind=kind,
            mismatched_reference=names[(index + 1) % len(names)] if len(names) > 1 else None,
        )
        for index, name in enumerate(names)
    )
    return Track(folder=folder, kind=kind, cases=cases)


def _track_from_json(folder: Path, track_file: Path) -> Track:
    try:
        document = json.loads(track_file.read_text())
        if document.get("format") != TRACK_FORMAT:
            raise ValueError(f"format {document.get('format')!r}, this version reads {TRACK_FORMAT}")
        kind = TrackKind(document["kind"]["task"], document["kind"]["identity"])
        entries = document["cases"]
        cases = tuple(_case_from_json(folder, kind, entry) for entry in entries)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{track_file} is not a valid track file ({type(error).__name__}: {error})") from None
    names = [case.name for case in cases]
    if len(set(names)) != len(names):
        raise InputError(f"{track_file} lists a case name twice")
    for case in cases:
        if case.mismatched_reference is not None and (
            case.mismatched_reference not in names or case.mismatched_reference == case.name
        ):
            raise InputError(
                f"{track_file}: case {case.name!r} names mismatched reference "
                f"{case.mismatched_reference!r}, which is not another case of the track"
            )
    return Track(folder=folder, kind=kind, cases=cases, builder=document.get("builder"))


def _case_from_json(folder: Path, kind: TrackKind, entry: dict) -> Case:
    return Case(
        name=str(entry["name"]),
        folder=folder,
        kind=kind,
        prompt=entry.get("prompt"),
        reference_region=_region_from_json(folder, entry.get("reference_region")),
        mismatched_reference=entry.get("mismatched_reference"),
    )


def _region_from_json(folder: Path, region: dict | None) -> ReferenceRegion:
    if region is None:
        return None
    if "box" in region:
        x0, y0, x1, y1 = (int(value) for value in region["box"])
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"empty reference box {region['box']}")
        return (x0, y0, x1, y1)
    if "mask" in region:
        return folder / str(region["mask"])
    raise ValueError(f"a reference region needs 'box' or 'mask', got {sorted(region)}")


def region_to_json(region: ReferenceRegion) -> dict | None:
    if region is None:
        return None
    if isinstance(region, Path):
        return {"mask": region.name}
    return {"box": [int(value) for value in region]}


def write_track_file(folder: Path, kind: TrackKind, cases: list[dict], builder: dict) -> Path:
    """Write `track.json` atomically (the track is complete once this file exists)."""
    document = {"format": TRACK_FORMAT, "kind": kind.to_json(), "builder": builder, "cases": cases}
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{TRACK_FILE}.", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        json.dump(document, file, indent=1)
        file.write("\n")
    os.replace(temporary, folder / TRACK_FILE)
    return folder / TRACK_FILE
