"""Outputs: atomic writes that survive SIGKILL, no overwrite without --force, permissions that
follow the umask, and metadata enough to reproduce an edit (docs/reliability.md)."""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest
from PIL import Image
from test_train_support import one_thread  # noqa: F401 (a fixture)
from tiny_models import tiny_pipeline

from mimicbrush import imaging
from mimicbrush.cli import main
from mimicbrush.errors import InputError

WRITE_KILLS = 20


def _noise_image(seed: int) -> Image.Image:
    # noise: a PNG of ~800 kB, so the file write is not instantaneous
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))


def test_a_write_killed_at_any_moment_leaves_the_old_or_the_new_file(tmp_path):
    target = tmp_path / "edit.png"
    versions = [_noise_image(0), _noise_image(1)]
    imaging.save_image(versions[0], target)
    expected = [np.asarray(version) for version in versions]
    rng = random.Random(0)
    for _ in range(WRITE_KILLS):
        child = os.fork()
        if child == 0:  # keep overwriting the target until killed
            real_fsync = os.fsync
            # a slow disk: the complete temp file waits 50 ms for its rename, so kills land there too
            os.fsync = lambda descriptor, real_fsync=real_fsync: (time.sleep(0.05), real_fsync(descriptor))
            try:
                while True:
                    for version in versions:
                        imaging.save_image(version, target, force=True)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.05, 0.5))  # a few writes (~0.1 s each), then a kill anywhere in one
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        with Image.open(target) as written:
            pixels = np.asarray(written.convert("RGB"))
        assert any(np.array_equal(pixels, version) for version in expected)
    leftovers = [path.name for path in tmp_path.iterdir() if path.name != "edit.png"]
    assert all(name.startswith(".edit.png.") and name.endswith(".tmp") for name in leftovers)
    assert len(leftovers) <= WRITE_KILLS  # hidden temp files, one at most per kill
    print(f"{WRITE_KILLS} kills while writing, {len(leftovers)} of them between creating the temp file and the rename")


def test_a_failed_rename_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        imaging.save_image(Image.new("RGB", (4, 4)), target, force=True)
    assert target.read_bytes() == b"precious"
    assert [path.name for path in tmp_path.iterdir()] == ["out.png"]


def test_a_file_that_appears_during_the_write_is_not_overwritten(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    real_link = os.link

    def another_writer_first(source, destination):
        target.write_bytes(b"written by someone else meanwhile")
        real_link(source, destination)

    monkeypatch.setattr(os, "link", another_writer_first)
    with pytest.raises(InputError, match="already exists"):
        imaging.save_image(Image.new("RGB", (4, 4)), target)
    assert target.read_bytes() == b"written by someone else meanwhile"
    assert [path.name for path in tmp_path.iterdir()] == ["out.png"]


def test_outputs_follow_the_umask_and_refuse_folders(tmp_path):
    previous = os.umask(0o022)
    try:
        path = imaging.save_image(Image.new("RGB", (4, 4)), tmp_path / "out.png")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        imaging.save_image(Image.new("RGB", (4, 4)), tmp_path / "folder.png", force=True)


def test_jpeg_output_keeps_the_metadata_in_exif(tmp_path):
    path = imaging.save_image(Image.new("RGB", (4, 4)), tmp_path / "out.jpg", metadata={"seed": 5, "steps": 9})
    assert Image.open(path).getexif()[0x010E] == "seed=5; steps=9"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.usefixtures("one_thread")
def test_an_edit_is_reproduced_from_its_png_metadata(model, tmp_path, capsys):
    rng = np.random.default_rng(3)
    source, reference = tmp_path / "source.png", tmp_path / "reference.png"
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(source)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(reference)
    first = tmp_path / "first.png"
    assert main(["edit", str(source), "--mask", "4,4,20,20", "--reference", str(reference), "-o", str(first),
                 "--model", str(model), "--steps", "2", "--guidance", "3.5", "--keep-shape"]) == 0
    recorded = Image.open(first).text
    assert {"model", "seed", "steps", "guidance", "keep_shape", "no_reference", "dtype"} <= set(recorded)
    again = tmp_path / "again.png"
    argv = ["edit", str(source), "--mask", "4,4,20,20", "--reference", str(reference), "-o", str(again),
            "--model", recorded["model"], "--seed", recorded["seed"], "--steps", recorded["steps"],
            "--guidance", recorded["guidance"], "--dtype", {"float32": "fp32"}[recorded["dtype"]]]
    argv += ["--keep-shape"] if recorded["keep_shape"] == "True" else []
    assert main(argv) == 0
    capsys.readouterr()
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
