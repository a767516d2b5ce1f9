"""`bench build-inner-id`: layout, track.json, seeded masks over the subject, determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimicbrush.benchmark.inner_id import (
    InnerIdOptions,
    build_inner_id_track,
    choose_pairs,
    list_subjects,
    read_subject_classes,
)
from mimicbrush.benchmark.subject_masks import estimate_subject
from mimicbrush.benchmark.tracks import load_tracks
from mimicbrush.cli import main
from mimicbrush.errors import InputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DREAMBOOTH = SHARED / "data" / "dreambooth"
SMALL_SUBJECTS = ("dog", "cat", "teapot")
SMALL_SIDE = 192


@pytest.fixture(scope="module")
def small_dreambooth(tmp_path_factory) -> Path:
    """Three real subjects, three photos each, downscaled so the tests stay fast."""
    if not DREAMBOOTH.is_dir():
        pytest.skip("../shared/data not present")
    root = tmp_path_factory.mktemp("dreambooth")
    for subject in SMALL_SUBJECTS:
        (root / subject).mkdir()
        for photo in sorted((DREAMBOOTH / subject).glob("*.jpg"))[:3]:
            Image.open(photo).convert("RGB").resize((SMALL_SIDE, SMALL_SIDE), Image.LANCZOS).save(
                root / subject / photo.name
            )
    shutil.copyfile(DREAMBOOTH / "prompts_and_classes.txt", root / "prompts_and_classes.txt")
    return root


@pytest.fixture(scope="module")
def built(small_dreambooth, tmp_path_factory):
    out = tmp_path_factory.mktemp("track")
    track = build_inner_id_track(small_dreambooth, out, InnerIdOptions(seed=0), progress=False)
    return out, track


def test_layout_and_track_json(built, small_dreambooth):
    out, track = built
    folder = out / "PartComp" / "WithinInstance"
    assert track.folder == folder and track.track_id == "PartComp/WithinInstance"
    assert len(track.cases) == 2 * len(SMALL_SUBJECTS)  # two pairs per subject by default
    document = json.loads((folder / "track.json").read_text())
    assert document["kind"] == {"task": "part_composition", "identity": "inner_id"}
    assert document["builder"]["seed"] == 0 and document["builder"]["pairs_per_subject"] == 2
    assert {"pairs", "subject_region", "mask", "mismatched_reference", "prompt"} <= set(
        document["builder"]["procedure"]
    )
    pairs = set()
    for case, entry in zip(track.cases, document["cases"], strict=True):
        subject = entry["subject"]
        assert (
            entry["prompt"]
            == {"dog": "a photo of a dog", "cat": "a photo of a cat", "teapot": "a photo of a teapot"}[subject]
        )
        source_photo, reference_photo = entry["source_photo"], entry["reference_photo"]
        assert (
            source_photo != reference_photo and source_photo.split("/")[0] == reference_photo.split("/")[0] == subject
        )
        pairs.add(frozenset((source_photo, reference_photo)))
        # the mismatched reference is a photo of another subject, here of another class too
        other = next(e for e in document["cases"] if e["name"] == entry["mismatched_reference"])
        assert other["subject"] != subject and other["class"] != entry["class"]
        # source and ground truth are the original photo, the reference the other photo
        original = np.asarray(Image.open(small_dreambooth / source_photo).convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(case.source_path)), original)
        assert np.array_equal(np.asarray(Image.open(case.gt_path)), original)
        reference = np.asarray(Image.open(small_dreambooth / reference_photo).convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(case.reference_path)), reference)
        x0, y0, x1, y1 = case.reference_region
        assert 0 <= x0 < x1 <= SMALL_SIDE and 0 <= y0 < y1 <= SMALL_SIDE
        mask = np.asarray(Image.open(case.mask_path))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
        assert entry["mask_fraction"] == pytest.approx((mask > 128).mean(), abs=1e-4)
    assert len(pairs) == len(track.cases)  # every case from a distinct photo pair


def test_masks_lie_inside_the_estimated_subject(built):
    _, track = built
    for case in track.cases:
        source = np.asarray(Image.open(case.source_path))
        subject = estimate_subject(source, seed=0).mask
        mask = np.asarray(Image.open(case.mask_path)) > 128
        assert mask.any() and not (mask & ~subject).any()
        assert 0.1 <= mask.sum() / subject.sum() <= 0.5  # the sampled 15–40% share, within tolerance


def test_same_seed_same_track_other_seed_other_masks(built, small_dreambooth, tmp_path):
    _, track = built
    again = build_inner_id_track(small_dreambooth, tmp_path / "again", InnerIdOptions(seed=0), progress=False)
    assert (again.folder / "track.json").read_text() == (track.folder / "track.json").read_text()
    for first, second in zip(track.cases, again.cases, strict=True):
        assert first.mask_path.read_bytes() == second.mask_path.read_bytes()
    other = build_inner_id_track(small_dreambooth, tmp_path / "other", InnerIdOptions(seed=1), progress=False)
    assert json.loads((other.folder / "track.json").read_text())["builder"]["seed"] == 1
    assert [case.name for case in other.cases] != [case.name for case in track.cases] or any(
        first.mask_path.read_bytes() != second.mask_path.read_bytes()
        for first, second in zip(track.cases, other.cases, strict=True)
    )


def test_small_masks_stay_under_five_percent(small_dreambooth, tmp_path):
    track = build_inner_id_track(small_dreambooth, tmp_path, InnerIdOptions(seed=3, small_masks=True), progress=False)
    fractions = [(np.asarray(Image.open(case.mask_path)) > 128).mean() for case in track.cases]
    assert all(0 < fraction < 0.05 for fraction in fractions)
    assert track.builder["small_masks"] is True


def test_crossing_masks_hide_subject_and_background(small_dreambooth, tmp_path):
    track = build_inner_id_track(small_dreambooth, tmp_path, InnerIdOptions(seed=3, crossing_masks=True), progress=False)
    for case in track.cases:
        subject = estimate_subject(np.asarray(Image.open(case.source_path)), seed=3).mask
        mask = np.asarray(Image.open(case.mask_path)) > 128
        on_subject = (mask & subject).sum() / mask.sum()
        assert 0.2 <= on_subject <= 0.8  # neither a part of the subject nor background alone
        assert 0.1 <= mask.sum() / subject.sum() <= 0.5
    entries = json.loads((track.folder / "track.json").read_text())["cases"]
    assert track.builder["crossing_masks"] is True and {entry["mask_shape"] for entry in entries} <= {"ellipse", "box"}
    with pytest.raises(InputError, match="give one"):
        build_inner_id_track(small_dreambooth, tmp_path / "both", InnerIdOptions(small_masks=True, crossing_masks=True))


def test_existing_track_needs_force(small_dreambooth, tmp_path):
    build_inner_id_track(small_dreambooth, tmp_path, InnerIdOptions(pairs_per_subject=1), progress=False)
    with pytest.raises(InputError, match="--force"):
        build_inner_id_track(small_dreambooth, tmp_path, InnerIdOptions(pairs_per_subject=1), progress=False)
    track = build_inner_id_track(
        small_dreambooth, tmp_path, InnerIdOptions(seed=5, pairs_per_subject=1), force=True, progress=False
    )
    names = {path.name for path in track.folder.iterdir()}
    assert len(names) == 1 + 4 * len(track.cases)  # old cases gone: track.json + 4 files a case


def test_cli_build_inner_id(small_dreambooth, tmp_path, capsys):
    code = main(
        [
            "bench",
            "build-inner-id",
            str(small_dreambooth),
            "-o",
            str(tmp_path),
            "--seed",
            "2",
            "--pairs-per-subject",
            "1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.strip() == str(tmp_path / "PartComp" / "WithinInstance")
    assert "fewer than the paper's 30" in captured.err
    (track,) = load_tracks(tmp_path)
    assert len(track.cases) == len(SMALL_SUBJECTS)
    assert main(["bench", "build-inner-id", str(tmp_path / "missing"), "-o", str(tmp_path / "x")]) == 2
    assert "DreamBooth folder not found" in capsys.readouterr().err


def test_real_dreambooth_gives_at_least_30_distinct_pairs(small_dreambooth):
    subjects = list_subjects(DREAMBOOTH)
    assert len(subjects) == 30
    classes = read_subject_classes(DREAMBOOTH)
    assert classes["bear_plushie"] == "stuffed animal" and classes["dog8"] == "dog"
    pairs = choose_pairs(subjects, 2, np.random.default_rng([0, 0]))
    assert len(pairs) == 60 and len({frozenset(pair[1:]) for pair in pairs}) == 60


def test_subject_estimate_finds_the_centred_subject():
    if not DREAMBOOTH.is_dir():
        pytest.skip("../shared/data not present")
    photo = np.asarray(Image.open(DREAMBOOTH / "duck_toy" / "00.jpg").convert("RGB"))
    estimate = estimate_subject(photo, seed=0)
    assert estimate.method == "grabcut"
    assert 0.05 < estimate.mask.mean() < 0.6
    assert np.array_equal(estimate.mask, estimate_subject(photo, seed=0).mask)
