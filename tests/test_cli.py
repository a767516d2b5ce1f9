"""The `mimicbrush` command line: edit end to end on a tiny model, and its error contract."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mimicbrush.cli import main
from mimicbrush.scheduling import release_scheduler
from tiny_models import tiny_pipeline


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(1)
    source = tmp_path / "source.png"
    reference = tmp_path / "reference.jpg"
    mask = tmp_path / "mask.png"
    Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(source)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(reference)
    mask_array = np.zeros((36, 48), np.uint8)
    mask_array[8:20, 10:30] = 255
    Image.fromarray(mask_array).save(mask)
    return source, mask, reference


def test_edit_writes_png_with_metadata_and_depth(model, files, tmp_path, capsys):
    source, mask, reference = files
    out, depth = tmp_path / "out.png", tmp_path / "depth.png"
    code = main(["edit", str(source), "--mask", str(mask), "--reference", str(reference), "-o", str(out),
                 "--model", str(model), "--steps", "2", "--seed", "3", "--keep-shape", "--depth-out", str(depth)])
    assert code == 0
    assert capsys.readouterr().out.split() == [str(out), str(depth)]
    image = Image.open(out)
    assert image.size == (48, 36)
    assert image.text["seed"] == "3" and image.text["steps"] == "2" and image.text["keep_shape"] == "True"
    assert Image.open(depth).size == (48, 36)


def test_edit_refuses_to_overwrite_without_force(model, files, tmp_path, capsys):
    source, mask, reference = files
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    args = ["edit", str(source), "--mask", str(mask), "--reference", str(reference), "-o", str(out),
            "--model", str(model), "--steps", "1", "--seed", "0"]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(args + ["--force"]) == 0
    assert Image.open(out).size == (48, 36)


def test_random_seed_is_printed_and_stored(model, files, tmp_path, capsys):
    source, _, reference = files
    out = tmp_path / "boxed.png"
    assert main(["edit", str(source), "--mask", "5,5,20,20", "--no-reference", "-o", str(out),
                 "--model", str(model), "--steps", "1"]) == 0
    printed = capsys.readouterr().err
    seed = Image.open(out).text["seed"]
    assert f"seed: {seed}" in printed


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--mask": "0,0,1000,10"}, "outside"),
        ({"--reference": "missing.png"}, "not found"),
        ({"--model": "/no/such/model"}, "not found"),
        ({"--steps": "0"}, "steps"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(model, files, tmp_path, change, message):
    source, mask, reference = files
    options = {"--mask": str(mask), "--reference": str(reference), "-o": str(tmp_path / "o.png"),
               "--model": str(model), "--steps": "1"}
    options.update(change)
    argv = [sys.executable, "-m", "mimicbrush", "edit", str(source)] + [x for kv in options.items() for x in kv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_scheduler_is_used_and_stored(model, files, tmp_path, capsys):
    source, mask, reference = files
    outputs = {}
    for name in ("ddim", "dpm++-karras"):
        outputs[name] = tmp_path / f"{name}.png"
        assert main(["edit", str(source), "--mask", str(mask), "--reference", str(reference), "-o",
                     str(outputs[name]), "--model", str(model), "--steps", "2", "--seed", "0", "--scheduler", name]) == 0
        assert Image.open(outputs[name]).text["scheduler"] == name
    default = tmp_path / "default.png"
    assert main(["edit", str(source), "--mask", str(mask), "--reference", str(reference), "-o", str(default),
                 "--model", str(model), "--steps", "2", "--seed", "0"]) == 0
    assert Image.open(default).text["scheduler"] == "ddim"
    assert np.array_equal(np.asarray(Image.open(default)), np.asarray(Image.open(outputs["ddim"])))
    assert not np.array_equal(np.asarray(Image.open(default)), np.asarray(Image.open(outputs["dpm++-karras"])))


def test_scheduler_that_cannot_serve_the_model_is_one_line_and_exit_2(files, tmp_path):
    sample_model = tmp_path / "sample-model"
    pipe = tiny_pipeline()
    pipe.scheduler = release_scheduler("sample")  # a clean-image predictor, like the bundled model
    pipe.save_pretrained(sample_model, safe_serialization=True)
    source, mask, reference = files
    argv = [sys.executable, "-m", "mimicbrush", "edit", str(source), "--mask", str(mask), "--reference",
            str(reference), "-o", str(tmp_path / "o.png"), "--model", str(sample_model), "--steps", "1",
            "--scheduler", "euler-a"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [line for line in result.stderr.splitlines() if "euler-a" in line]
    assert "scheduler euler-a does not support prediction type 'sample'" in error_lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "o.png").exists()


def test_edit_help_names_the_schedulers_and_their_unet_calls():
    result = subprocess.run([sys.executable, "-m", "mimicbrush", "edit", "--help"], capture_output=True, text=True)
    text = " ".join(result.stdout.split())
    assert "ddim, dpm++, dpm++-karras, unipc, euler, euler-a: N U-Net calls; heun: 2N-1 U-Net calls" in text


def test_empty_mask_file_is_refused(model, files, tmp_path, capsys):
    source, _, reference = files
    empty = tmp_path / "empty_mask.png"
    Image.new("L", (48, 36)).save(empty)
    assert main(["edit", str(source), "--mask", str(empty), "--reference", str(reference),
                 "-o", str(tmp_path / "x.png"), "--model", str(model)]) == 2
    assert "empty" in capsys.readouterr().err


def test_help_lists_the_contract_commands():
    result = subprocess.run([sys.executable, "-m", "mimicbrush", "--help"], capture_output=True, text=True)
    for command in ("edit", "convert", "data"):
        assert command in result.stdout


def test_demo_runs_the_bundled_examples(model, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--model", str(model), "--steps", "1"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-1] == str(out / "demo.png")
    edits = sorted(out.glob("*_edit.png"))
    assert [path.name for path in edits] == [
        "coffee-brick_edit.png", "coffee-gravel_edit.png", "motorcycle-headlight_edit.png", "motorcycle-tank_edit.png"
    ]
    source = np.asarray(Image.open(out / "coffee-brick_source.png"))
    edit = np.asarray(Image.open(out / "coffee-brick_edit.png"))
    assert edit.shape == source.shape
    np.testing.assert_array_equal(edit[:, :150], source[:, :150])  # far left of the cup: untouched
    # every example is also edited with another example's reference, shown beside it
    assert len(sorted(out.glob("*_edit-mismatched.png"))) == 4
    mismatched = np.asarray(Image.open(out / "motorcycle-tank_mismatched-reference.png"))
    assert not np.array_equal(mismatched, np.asarray(Image.open(out / "motorcycle-tank_reference.png")))
    sheet = Image.open(out / "demo.png")
    assert sheet.height == 4 * 192 and sheet.width > 6 * 150
    assert main(["demo", "-o", str(out), "--model", str(model), "--steps", "1"]) == 2  # no silent overwrite
