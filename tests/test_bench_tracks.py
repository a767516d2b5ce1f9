"""Reading tracks: the release's folder layout, a root or one subfolder, and our track.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimicbrush.benchmark.tracks import TRACK_FORMAT, TrackKind, load_track, load_tracks
from mimicbrush.errors import InputError


def write_case(folder: Path, name: str, ground_truth: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.full((40, 48, 3), 100, np.uint8))
    mask = np.zeros((40, 48), np.uint8)
    mask[10:20, 10:30] = 255
    image.save(folder / f"{name}_source.png")
    Image.fromarray(mask).save(folder / f"{name}_source_mask.png")
    image.save(folder / f"{name}_reference.png")
    if ground_truth:
        image.save(folder / f"{name}_gt.png")


def write_track_json(folder: Path, cases: list[dict], kind=("part_composition", "inner_id"), **extra) -> None:
    document = {"format": TRACK_FORMAT, "kind": {"task": kind[0], "identity": kind[1]}, "builder": None, "cases": cases}
    document.update(extra)
    (folder / "track.json").write_text(json.dumps(document))


def test_release_root_yields_each_track_with_its_kind(tmp_path):
    for name in ("a", "b", "c"):
        write_case(tmp_path / "PartComp" / "CrossInstance", name)
    write_case(tmp_path / "TextureTrans" / "WithinInstance", "x")
    write_case(tmp_path / "TextureTrans" / "WithinInstance", "y")
    tracks = load_tracks(tmp_path)
    assert [track.track_id for track in tracks] == ["PartComp/CrossInstance", "TextureTrans/WithinInstance"]
    part, texture = tracks
    assert part.kind == TrackKind("part_composition", "inter_id") and not part.kind.keep_shape
    assert texture.kind == TrackKind("texture_transfer", "inner_id") and texture.kind.keep_shape
    assert [case.name for case in part.cases] == ["a", "b", "c"]
    # Without annotations the mismatched reference is the next case's, in name order.
    assert [case.mismatched_reference for case in part.cases] == ["b", "c", "a"]
    assert part.cases[2].mismatched_reference_path == tmp_path / "PartComp/CrossInstance/a_reference.png"
    assert all(case.prompt is None and case.reference_region is None and case.gt_path is None for case in part.cases)


def test_one_subfolder_is_one_track(tmp_path):
    folder = tmp_path / "TextureTrans" / "CrossInstance"
    write_case(folder, "only", ground_truth=True)
    (track,) = load_tracks(folder)
    assert track.track_id == "TextureTrans/CrossInstance"
    (case,) = track.cases
    assert case.mismatched_reference is None  # a single case has no other reference
    assert case.gt_path == folder / "only_gt.png"
    assert case.mask_path.name == "only_source_mask.png"


def test_track_json_gives_kind_prompts_regions_and_mismatches(tmp_path):
    folder = tmp_path / "anywhere"
    for name in ("one", "two"):
        write_case(folder, name, ground_truth=True)
    write_track_json(
        folder,
        [
            {
                "name": "one",
                "prompt": "a red shoe",
                "reference_region": {"box": [1, 2, 30, 40]},
                "mismatched_reference": "two",
            },
            {"name": "two", "reference_region": {"mask": "two_region.png"}, "extra": "ignored"},
        ],
        kind=("texture_transfer", "inter_id"),
    )
    track = load_track(folder)
    assert track.track_id == "TextureTrans/CrossInstance"
    one, two = track.cases
    assert (one.prompt, one.reference_region, one.mismatched_reference) == ("a red shoe", (1, 2, 30, 40), "two")
    assert (two.prompt, two.reference_region, two.mismatched_reference) == (None, folder / "two_region.png", None)


@pytest.mark.parametrize(
    "cases, message",
    [
        ([{"name": "one", "mismatched_reference": "ghost"}], "not another case"),
        ([{"name": "one", "mismatched_reference": "one"}], "not another case"),
        ([{"name": "one"}, {"name": "one"}], "twice"),
        ([{"name": "one", "reference_region": {"box": [5, 5, 5, 9]}}], "not a valid track file"),
        ([{"name": "one", "reference_region": {"circle": 3}}], "not a valid track file"),
        ([{"prompt": "no name"}], "not a valid track file"),
        ([{"name": "missing"}], "lacks missing_source.png"),
        ([], "no cases"),
    ],
)
def test_bad_track_json_is_a_one_line_input_error(tmp_path, cases, message):
    write_case(tmp_path, "one")
    write_track_json(tmp_path, cases)
    with pytest.raises(InputError, match=message) as error:
        load_track(tmp_path)
    assert "\n" not in str(error.value)


def test_unknown_format_kind_or_layout_is_refused(tmp_path):
    write_case(tmp_path, "one")
    with pytest.raises(InputError, match="cannot tell the kind"):
        load_tracks(tmp_path)
    write_track_json(tmp_path, [{"name": "one"}], kind=("part_composition", "inter_id"), format=99)
    with pytest.raises(InputError, match="format 99"):
        load_track(tmp_path)
    write_track_json(tmp_path, [{"name": "one"}], kind=("inpainting", "inter_id"))
    with pytest.raises(InputError, match="unknown track kind"):
        load_track(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_tracks(tmp_path / "nowhere")


def test_missing_case_files_are_named(tmp_path):
    folder = tmp_path / "PartComp" / "WithinInstance"
    write_case(folder, "one")
    (folder / "one_reference.png").unlink()
    with pytest.raises(InputError, match="lacks one_reference.png"):
        load_tracks(tmp_path)
