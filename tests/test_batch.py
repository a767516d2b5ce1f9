"""`mimicbrush edit --batch`: the manifest, resume, bad rows, per-row options, one model load."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mimicbrush import batch
from mimicbrush.cli import main
from tiny_models import saved_tiny_pipeline


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return saved_tiny_pipeline(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def folder(tmp_path):
    """Images beside a manifest folder: photos/a.png, photos/b.png, refs/r1.jpg, refs/r2.jpg, mask.png."""
    rng = np.random.default_rng(2)
    (tmp_path / "photos").mkdir()
    (tmp_path / "refs").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{name}.png")
    for name in ("r1", "r2"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "refs" / f"{name}.jpg")
    mask = np.zeros((36, 48), np.uint8)
    mask[8:20, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path


def write_manifest(path, rows):
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return path


def run(model, manifest, out, *options):
    return main(["edit", "--batch", str(manifest), "-o", str(out), "--model", str(model), "--steps", "1",
                 "--seed", "0", *options])


GOOD = [
    {"source": "photos/a.png", "mask": "mask.png", "reference": "refs/r1.jpg"},
    {"source": "photos/b.png", "box": [5, 5, 30, 25], "reference": ["refs/r1.jpg", "refs/r2.jpg"],
     "output": "two-refs.png", "seed": 7, "steps": 2},
]


def test_rows_are_edited_with_their_options(model, folder, tmp_path, capsys):
    manifest = write_manifest(folder / "edits.jsonl", GOOD)
    out = tmp_path / "out"
    assert run(model, manifest, out) == 0
    first, second = out / "0001-a.png", out / "two-refs.png"
    assert capsys.readouterr().out.split() == [str(first), str(second)]
    assert Image.open(first).size == (48, 36)
    meta = Image.open(second).text
    assert meta["seed"] == "7" and meta["steps"] == "2" and meta["references"] == "2"
    assert Image.open(first).text["seed"] == "0" and Image.open(first).text["steps"] == "1"


def test_a_row_equals_the_single_edit(model, folder, tmp_path):
    manifest = write_manifest(folder / "edits.jsonl", GOOD[1:])
    assert run(model, manifest, tmp_path / "out") == 0
    single = tmp_path / "single.png"
    assert main(["edit", str(folder / "photos/b.png"), "--mask", "5,5,30,25", "--reference", str(folder / "refs/r1.jpg"),
                 "--reference", str(folder / "refs/r2.jpg"), "-o", str(single), "--model", str(model),
                 "--steps", "2", "--seed", "7"]) == 0
    assert np.array_equal(np.asarray(Image.open(single)), np.asarray(Image.open(tmp_path / "out" / "two-refs.png")))


def test_resume_skips_existing_outputs_unless_force(model, folder, tmp_path, capsys):
    manifest = write_manifest(folder / "edits.jsonl", GOOD)
    out = tmp_path / "out"
    out.mkdir()
    (out / "0001-a.png").write_bytes(b"precious")
    assert run(model, manifest, out) == 0
    captured = capsys.readouterr()
    assert (out / "0001-a.png").read_bytes() == b"precious"
    assert captured.out.split() == [str(out / "two-refs.png")]
    assert "1 written, 1 skipped" in captured.err
    assert run(model, manifest, out, "--force") == 0
    assert Image.open(out / "0001-a.png").size == (48, 36)


def test_bad_rows_are_reported_by_line_and_the_rest_go_on(model, folder, tmp_path, capsys):
    rows = [
        GOOD[0],
        "{not json",
        {"source": "photos/missing.png", "box": "1,1,5,5", "reference": "refs/r1.jpg"},
        {"source": "photos/b.png", "box": "1,1,5,5", "reference": "refs/r1.jpg", "model": "other"},
        {"source": "photos/b.png", "box": "1,1,5,5", "reference": "refs/r1.jpg", "stepz": 3},
        {"source": "photos/b.png", "mask": "mask.png", "box": "1,1,5,5", "reference": "refs/r1.jpg"},
        {"source": "photos/b.png", "box": "1,1,5,5", "reference": ["refs/r1.jpg", "refs/r2.jpg"],
         "reference_box": ["0,0,9,9"]},
        {"source": "photos/b.png", "box": "1,1,5,5", "reference": "refs/r1.jpg", "output": "../escape.png"},
        {"source": "photos/b.png", "box": "1,1,5,5", "reference": "refs/r1.jpg", "output": "0001-a.png"},
        "",
        {"source": "photos/b.png", "box": "1,1,5,5", "reference": "refs/r2.jpg"},
    ]
    manifest = write_manifest(folder / "edits.jsonl", rows)
    out = tmp_path / "out"
    assert run(model, manifest, out) == 2
    err = capsys.readouterr().err
    for line, message in [(2, "not valid JSON"), (3, "not found"), (4, "command line's alone"),
                          (5, "did you mean 'steps'"), (6, "exactly one of mask"), (7, "once per --reference"),
                          (8, "inside the output folder"), (9, "also line 1's")]:
        assert f"line {line}: " in err and message in err.split(f"line {line}: ")[1].splitlines()[0], line
    assert "2 written, 0 skipped (output already there), 8 failed (lines 2, 3, 4, 5, 6, 7, 8, 9)" in err
    assert sorted(path.name for path in out.iterdir()) == ["0001-a.png", "0011-b.png"]


def test_command_line_errors(model, folder, tmp_path, capsys):
    manifest = write_manifest(folder / "edits.jsonl", GOOD)
    assert main(["edit", str(folder / "photos/a.png"), "--batch", str(manifest), "-o", str(tmp_path)]) == 2
    assert "come from the manifest" in capsys.readouterr().err
    assert main(["edit", "--batch", str(folder / "none.jsonl"), "-o", str(tmp_path)]) == 2
    assert "manifest not found" in capsys.readouterr().err
    (tmp_path / "file.png").write_bytes(b"x")
    assert main(["edit", "--batch", str(manifest), "-o", str(tmp_path / "file.png")]) == 2
    assert "names a folder" in capsys.readouterr().err


def test_manifest_paths_resolve_against_the_manifest(folder, tmp_path):
    manifest = write_manifest(folder / "edits.jsonl", GOOD)
    rows, errors = batch.read_manifest(manifest, tmp_path / "out")
    assert errors == {}
    assert rows[0].settings["source"] == str(folder / "photos" / "a.png")
    assert rows[0].settings["mask"] == str(folder / "mask.png")
    assert rows[1].settings["mask"] == "5,5,30,25"
    assert rows[1].settings["reference"] == [str(folder / "refs" / "r1.jpg"), str(folder / "refs" / "r2.jpg")]
    assert rows[1].output == tmp_path / "out" / "two-refs.png"


def test_model_loads_once(model, folder, tmp_path, monkeypatch):
    import mimicbrush.loading as loading

    loads = []
    original = loading.load_pipeline
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: loads.append(1) or original(*a, **k))
    manifest = write_manifest(folder / "edits.jsonl", GOOD)
    assert run(model, manifest, tmp_path / "out") == 0
    assert loads == [1]


def test_two_cpu_processes_split_the_rows(model, folder, tmp_path):
    """Launched as two processes without a GPU (torchrun, as `accelerate launch` does), each row is
    edited once, by one of them, as one process edits it; the main process alone prints the
    summary. (Accelerate left alone treats CPU processes as unrelated: each did every row.)"""
    rows = GOOD + [{"source": "photos/a.png", "box": "2,2,20,20", "reference": "refs/r2.jpg", "seed": s}
                   for s in range(3)]
    manifest = write_manifest(folder / "edits.jsonl", rows)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "mimicbrush", "edit", "--batch", str(manifest), "-o", str(tmp_path / "two"),
               "--model", str(model), "--steps", "1", "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "error:" not in launched.stderr
    assert launched.stderr.count("batch: 5 written") == 1
    written = sorted(line for line in launched.stdout.split() if line.endswith(".png"))
    assert len(written) == len(set(written)) == 5  # each row once

    assert run(model, manifest, tmp_path / "one") == 0
    for path in (tmp_path / "one").iterdir():
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(tmp_path / "two" / path.name)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
