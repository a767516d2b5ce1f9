"""`mimicbrush data preview CONFIG -o DIR`."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mimicbrush.cli import main

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_training_config(root, data_section):
    """A training YAML: the trainer's own keys plus the data section under test."""
    path = root / "configs" / "train.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"seed": 0, "model": "not read by the preview", "data": data_section}))
    return path


@pytest.fixture
def synthetic_config(tmp_path):
    rng = np.random.default_rng(0)
    clip = tmp_path / "frames" / "clip"
    clip.mkdir(parents=True)
    texture = np.kron(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    for index in range(5):
        Image.fromarray(np.roll(texture, 3 * index, axis=0)).save(clip / f"{index:05d}.png")
    stills = tmp_path / "stills"
    stills.mkdir()
    Image.fromarray(texture).save(stills / "still.jpg")
    return write_training_config(tmp_path, {
        "resolution": 64,
        "samples_per_epoch": 10,
        "cache_dir": "../cache",
        "video": {"roots": ["../frames"], "ssim_band": [-1.0, 1.0]},
        "static": {"datasets": [{"images": "../stills"}], "mask_kinds": {"segment": 1, "box": 1}},
    })


def test_preview_writes_sheet_samples_and_summary(synthetic_config, tmp_path, capsys):
    out = tmp_path / "preview"
    assert main(["data", "preview", str(synthetic_config), "-o", str(out), "--n", "3", "--seed", "4"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0] == str(out / "contact_sheet.png")
    assert all(Path(p).is_file() for p in printed)
    names = {Path(p).name for p in printed}
    assert {f"sample_{i:03d}_{kind}.png" for i in range(3) for kind in ("source", "mask", "reference")} <= names
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.shape[1] == 3 * 256 and sheet.shape[0] > 3 * 256  # 64 px panels shown 4x, plus captions
    mask = np.asarray(Image.open(out / "sample_000_mask.png"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    summary = json.loads((out / "samples.json").read_text())
    assert [record["index"] for record in summary] == [0, 1, 2]
    assert (tmp_path / "cache" / "ssim").is_dir()  # cache_dir resolved against the config's folder


@pytest.mark.parametrize(
    "data_section, message",
    [
        ({"video": {"roots": ["../nowhere"]}}, "data.video.roots[0]: folder not found"),
        ({"video": {"roots": ["."], "colour": 1}}, "data.video.colour: unknown key"),
        ({"video": {"roots": ["."], "ssim_band": [0.999, 1.0], "max_tries": 2}}, "no frame pair with SSIM"),
    ],
)
def test_preview_errors_are_one_line(tmp_path, capsys, data_section, message):
    (tmp_path / "configs" / "clip").mkdir(parents=True)
    for index in range(2):
        Image.fromarray(np.full((8, 8, 3), index * 200, np.uint8)).save(tmp_path / "configs" / "clip" / f"{index}.png")
    config = write_training_config(tmp_path, {"cache_dir": None, **data_section})
    assert main(["data", "preview", str(config), "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error


def test_preview_needs_a_config_with_a_data_section(tmp_path, capsys):
    assert main(["data", "preview", str(tmp_path / "missing.yaml"), "-o", str(tmp_path)]) == 2
    assert "config file not found" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text("seed: 1\n")
    assert main(["data", "preview", str(other), "-o", str(tmp_path)]) == 2
    assert "no 'data:' section" in capsys.readouterr().err


def test_preview_on_the_real_data(tmp_path, capsys):
    if not SHARED_DATA.is_dir():
        pytest.skip("real-data preview: ../shared/data not present")
    config = write_training_config(tmp_path, {
        "resolution": 64,
        "samples_per_epoch": 100,
        "cache_dir": None,
        "video": {"roots": [str(SHARED_DATA / "video"), str(SHARED_DATA / "video_mp4")]},
        "static": {"datasets": [{"images": str(SHARED_DATA / "bsds500" / "images"),
                                 "segments": str(SHARED_DATA / "bsds500" / "segmentation")}]},
    })
    assert main(["data", "preview", str(config), "-o", str(tmp_path / "out"), "--n", "4"]) == 0
    assert len(capsys.readouterr().out.split()) == 1 + 4 * 3 + 1
