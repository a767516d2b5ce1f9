"""zoomed_edit end to end on the tiny random pipeline, and the zoom study script on a tiny track."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_pipeline

from mimicbrush import editing

STEPS = 2
ZOOM_STUDY = Path(__file__).parent.parent / "benchmarks" / "zoom_study.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are slower with several threads on shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (131, 197, 3), dtype=np.uint8)  # odd sizes
    reference = rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)
    mask = np.zeros((131, 197), bool)
    mask[0:9, 188:197] = True  # top-right corner
    mask[60:72, 90:99] = True  # centre
    return source, mask, reference


def seeded(**kwargs):
    return {"num_inference_steps": STEPS, "generator": torch.Generator().manual_seed(0), **kwargs}


def test_zoomed_edit_keeps_the_source_outside_the_feathered_band(pipe, scene):
    source, mask, reference = scene
    output = editing.zoomed_edit(pipe, source, mask, reference, **seeded(keep_shape=True))
    edited = np.asarray(output.images[0])
    assert edited.shape == source.shape
    outside = ~editing.feather_band(mask)
    assert np.array_equal(edited[outside], source[outside])
    assert np.abs(edited[mask].astype(int) - source[mask]).mean() > 5  # the regions were repainted
    assert [region.zoomed for region in output.regions] == [True, True]
    for region, model_image, depth in zip(output.regions, output.model_images, output.depth_images):
        crop_width, crop_height = editing.box_size(region.crop_box)
        assert model_image.size == (pipe.resolution, pipe.resolution)
        assert depth.size == (crop_width, crop_height)  # the depth of what the model saw
        assert region.scale == pipe.resolution / max(crop_width, crop_height) > region.release_scale


def test_each_region_is_edited_as_if_alone(pipe, scene):
    source, mask, reference = scene
    both = np.asarray(editing.zoomed_edit(pipe, source, mask, reference, **seeded()).images[0])
    centre_only = mask.copy()
    centre_only[0:9, 188:197] = False
    alone = np.asarray(editing.zoomed_edit(pipe, source, centre_only, reference, **seeded()).images[0])
    band = editing.feather_band(centre_only)
    assert np.array_equal(both[band], alone[band])


def test_zoom_off_is_bit_identical_to_the_pipeline(pipe, scene):
    source, mask, reference = scene
    wrapped = editing.zoomed_edit(pipe, source, mask, reference, zoom="off", **seeded())
    direct = pipe(source_image=source, mask_image=mask, reference_image=reference, **seeded())
    assert np.array_equal(np.asarray(wrapped.images[0]), np.asarray(direct.images[0]))
    assert np.array_equal(np.asarray(wrapped.model_images[0]), np.asarray(direct.model_images[0]))


def test_reference_hint_changes_only_what_the_reference_offers(pipe, scene):
    source, mask, reference = scene
    whole = editing.zoomed_edit(pipe, source, mask, reference, **seeded())
    hinted = editing.zoomed_edit(pipe, source, mask, reference, "5,5,30,40", **seeded())
    cropped = editing.zoomed_edit(pipe, source, mask, reference[1:44, 1:34], **seeded())
    assert hinted.reference_box == (1, 1, 34, 44)  # context ceil(0.1 × 35) = 4
    assert np.array_equal(np.asarray(hinted.images[0]), np.asarray(cropped.images[0]))
    assert not np.array_equal(np.asarray(hinted.images[0]), np.asarray(whole.images[0]))


# ---------------------------------------------------------------------------------------------
# benchmarks/zoom_study.py


def load_zoom_study():
    spec = importlib.util.spec_from_file_location("zoom_study", ZOOM_STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_small_mask_track(root: Path) -> Path:
    """Two inner-ID cases in the release's file layout, one small mask each."""
    folder = root / "PartComp" / "WithinInstance"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for index, (y, x) in enumerate([(40, 50), (10, 100)]):
        name = f"subject_{index}"
        source = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        mask = np.zeros((96, 128), np.uint8)
        mask[y : y + 12, x : x + 14] = 255
        Image.fromarray(source).save(folder / f"{name}_source.png")
        Image.fromarray(source).save(folder / f"{name}_gt.png")
        Image.fromarray(mask).save(folder / f"{name}_source_mask.png")
        Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)).save(folder / f"{name}_reference.png")
    return root


def test_zoom_study_end_to_end(tmp_path, pipe, capsys):
    pipe.save_pretrained(tmp_path / "model")
    tracks = write_small_mask_track(tmp_path / "tracks")
    out = tmp_path / "study"
    zoom_study = load_zoom_study()
    argv = [str(tracks), "--model", str(tmp_path / "model"), "-o", str(out), "--steps", "1",
            "--device", "cpu", "--modes", "off,auto,auto+hint"]
    assert zoom_study.main(argv) == 0
    table = capsys.readouterr().out
    study = json.loads((out / "zoom_study.json").read_text())
    assert (out / "zoom_study.md").read_text() == table
    assert table.startswith("| zoom | cases |") and "zoomed 2 of 2 cases" in table
    assert [row["case"] for row in study["cases"]] == ["subject_0", "subject_1"]
    for row in study["cases"]:
        assert row["zoomed"] and row["zoom_gain"] > 1
        assert all(np.isfinite(row[f"{metric}_{mode}"]) for metric in ("psnr_box", "ssim_box")
                   for mode in ("off", "auto", "auto+hint"))
    summary = study["summary"]
    assert summary["auto"]["cases"] == 2 and summary["auto"]["wins_psnr_box"] in (0, 1, 2)
    assert "delta_psnr_box" not in summary["off"]
    # a rerun reuses the cached edits; other settings are refused
    edit = out / "edits" / "auto" / "PartComp" / "WithinInstance" / "subject_0.png"
    written = edit.stat().st_mtime_ns
    assert zoom_study.main(argv) == 0 and edit.stat().st_mtime_ns == written
    assert zoom_study.main(argv + ["--seed", "2"]) == 2
    assert "other settings" in capsys.readouterr().err
