"""`bench run` / `bench compare` with a stand-in pipeline: caching, resume, reference modes,
process split, outputs and scores."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import threading
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimicbrush.benchmark.inner_id import InnerIdOptions, build_inner_id_track
from mimicbrush.benchmark.report import CSV_FIELDS, SHEET_COLUMNS, THUMBNAIL_SIDE
from mimicbrush.benchmark.runner import EditSettings, edit_path, run_benchmark
from mimicbrush.scheduling import release_scheduler
from mimicbrush.benchmark.scoring import METRIC_KEYS, CaseScorer
from mimicbrush.benchmark.tracks import load_tracks
from mimicbrush.cli import main
from mimicbrush.devices import resolve_device
from mimicbrush.errors import InputError, MimicBrushError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DREAMBOOTH = SHARED / "data" / "dreambooth"
SUBJECTS = ("dog", "cat", "clock")
SIDE = 128


class StandInPipeline:
    """Paints the masked region from the reference (resized to the source), grey without one;
    records what it was given."""

    def __init__(self, size_change: int = 0):
        self.calls = []
        self.size_change = size_change
        self.scheduler = release_scheduler()  # `bench run --scheduler` swaps it, as on the real pipeline

    def __call__(
        self,
        *,
        source_image,
        mask_image,
        reference_image,
        keep_shape,
        num_inference_steps,
        guidance_scale,
        generator,
        zoom,
    ):
        self.calls.append(
            {
                "reference": None if reference_image is None else np.asarray(reference_image).copy(),
                "keep_shape": keep_shape,
                "steps": num_inference_steps,
                "guidance": guidance_scale,
                "seed": generator.initial_seed(),
                "zoom": zoom,
                "mask_values": set(np.unique(np.asarray(mask_image)).tolist()),
            }
        )
        pixels = np.asarray(source_image).copy()
        mask = np.asarray(mask_image) > 128
        if reference_image is None:
            pixels[mask] = 128
        else:
            pixels[mask] = np.asarray(reference_image.resize(source_image.size))[mask]
        edit = Image.fromarray(pixels)
        if self.size_change:
            edit = edit.resize((edit.width + self.size_change, edit.height))
        return types.SimpleNamespace(images=[edit])


class ThreadProcessState:
    """What accelerate's PartialState offers the runner, for process `index` of `barrier.parties`,
    with each "process" a thread and `wait_for_everyone` a barrier."""

    def __init__(self, index: int, barrier: threading.Barrier):
        self.process_index = index
        self.num_processes = barrier.parties
        self.is_main_process = index == 0
        self.barrier = barrier

    def wait_for_everyone(self):
        self.barrier.wait(timeout=30)

    @contextmanager
    def split_between_processes(self, items):
        share = -(-len(items) // self.num_processes)
        yield items[self.process_index * share : (self.process_index + 1) * share]


@pytest.fixture(scope="module")
def track_root(tmp_path_factory) -> Path:
    """An inner-ID track built from real DreamBooth photos, downscaled for speed."""
    if not DREAMBOOTH.is_dir():
        pytest.skip("../shared/data not present")
    photos = tmp_path_factory.mktemp("dreambooth")
    for subject in SUBJECTS:
        (photos / subject).mkdir()
        for photo in sorted((DREAMBOOTH / subject).glob("*.jpg"))[:2]:
            Image.open(photo).convert("RGB").resize((SIDE, SIDE), Image.LANCZOS).save(photos / subject / photo.name)
    root = tmp_path_factory.mktemp("bench")
    build_inner_id_track(photos, root, InnerIdOptions(seed=0), progress=False)
    return root


@pytest.fixture
def scorer() -> CaseScorer:
    return CaseScorer.load(None, None, None)


def run(track_root, out_dir, pipeline, scorer, **settings) -> dict:
    limit = settings.pop("limit", None)
    return run_benchmark(
        load_tracks(track_root),
        pipeline,
        out_dir,
        EditSettings(model="stand-in", **settings),
        scorer,
        limit=limit,
        progress=False,
    )


def test_run_writes_edits_and_reports(track_root, tmp_path, scorer):
    pipeline = StandInPipeline()
    summary = run(track_root, tmp_path, pipeline, scorer)
    (track,) = load_tracks(track_root)
    assert len(pipeline.calls) == len(track.cases) == len(SUBJECTS)
    call = pipeline.calls[0]
    assert (call["steps"], call["guidance"], call["seed"], call["zoom"], call["keep_shape"]) == (
        50,
        5.0,
        1,
        "off",
        False,
    )
    assert call["mask_values"] == {0, 255}
    for case in track.cases:
        assert Image.open(edit_path(tmp_path, case)).size == (SIDE, SIDE)
    assert not [path for path in (tmp_path / "edits").rglob("*") if path.name.startswith(".")]  # no temp files left

    with open(tmp_path / "cases.csv") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == CSV_FIELDS and len(rows) == len(track.cases)
    assert all(row["ssim_image"] and row["psnr_box"] and not row["dino_i"] for row in rows)

    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == summary
    means = summary["tracks"]["PartComp/WithinInstance"]["means"]
    assert set(means) == set(METRIC_KEYS)
    assert 0 < means["ssim_box"] < means["ssim_image"] < 1  # the edit changed only the mask's box
    assert means["psnr_box"] < means["psnr_image"]
    assert means["lpips_image"] is None and "lpips" in summary["scoring"]["skipped"]
    assert summary["settings"]["reference_mode"] == "true"
    assert "whole image" in summary["scopes"]["image"] and "bounding box" in summary["scopes"]["mask box"]

    table = (tmp_path / "summary.md").read_text()
    assert "| MimicBrush (paper) | PartComp/WithinInstance | true |  | 0.700 | 17.54 | 0.280 |" in table
    assert "SSIM box" in table and "DINO-I" not in table  # columns without values are left out
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.width == THUMBNAIL_SIDE * len(SHEET_COLUMNS) and sheet.height > THUMBNAIL_SIDE * len(track.cases)


def test_rerun_resumes_and_refuses_other_settings(track_root, tmp_path, scorer):
    first = StandInPipeline()
    run(track_root, tmp_path, first, scorer, limit=2)
    assert len(first.calls) == 2
    again = StandInPipeline()
    run(track_root, tmp_path, again, scorer)
    assert len(again.calls) == len(SUBJECTS) - 2  # only the missing edits
    (track,) = load_tracks(track_root)
    edit_path(tmp_path, track.cases[0]).unlink()
    resumed = StandInPipeline()
    summary = run(track_root, tmp_path, resumed, scorer)
    assert len(resumed.calls) == 1 and summary["tracks"]["PartComp/WithinInstance"]["cases"] == len(SUBJECTS)
    with pytest.raises(InputError, match=r"other settings \(steps 50 -> 20\)"):
        run(track_root, tmp_path, StandInPipeline(), scorer, steps=20)
    with pytest.raises(InputError, match=r"other settings \(scheduler 'ddim' -> 'unipc'\)"):
        run(track_root, tmp_path, StandInPipeline(), scorer, scheduler="unipc")


def test_runs_from_before_the_scheduler_setting_count_as_ddim(track_root, tmp_path, scorer):
    import json

    run(track_root, tmp_path, StandInPipeline(), scorer, limit=1)
    recorded = json.loads((tmp_path / "run.json").read_text())
    assert recorded["scheduler"] == "ddim"
    del recorded["scheduler"]
    (tmp_path / "run.json").write_text(json.dumps(recorded))
    run(track_root, tmp_path, StandInPipeline(), scorer, limit=1)  # no "other settings" error
    with pytest.raises(InputError, match="--scheduler must be one of ddim"):
        EditSettings(model="x", scheduler="lms")


def test_reference_modes(track_root, tmp_path, scorer):
    (track,) = load_tracks(track_root)
    summaries, pipelines = {}, {}
    for mode in ("true", "mismatched", "none"):
        pipelines[mode] = StandInPipeline()
        summaries[mode] = run(track_root, tmp_path / mode, pipelines[mode], scorer, reference_mode=mode)
    for case, true_call, mismatched_call, none_call in zip(
        track.cases, pipelines["true"].calls, pipelines["mismatched"].calls, pipelines["none"].calls, strict=True
    ):
        assert np.array_equal(true_call["reference"], np.asarray(Image.open(case.reference_path)))
        assert np.array_equal(mismatched_call["reference"], np.asarray(Image.open(case.mismatched_reference_path)))
        assert case.mismatched_reference.split("_")[0] != case.name.split("_")[0]  # another subject
        assert none_call["reference"] is None
    means = {mode: summary["tracks"]["PartComp/WithinInstance"]["means"] for mode, summary in summaries.items()}
    assert len({round(means[mode]["psnr_box"], 6) for mode in means}) == 3
    assert summaries["mismatched"]["settings"]["reference_mode"] == "mismatched"
    with pytest.raises(InputError, match="reference-mode"):
        EditSettings(model="x", reference_mode="wrong")


def test_texture_transfer_tracks_keep_the_shape(track_root, tmp_path, scorer):
    source = track_root / "PartComp" / "WithinInstance"
    target = tmp_path / "bench" / "TextureTrans" / "CrossInstance"
    target.mkdir(parents=True)
    for path in source.glob("*.png"):
        if not path.name.endswith("_gt.png"):
            shutil.copyfile(path, target / path.name)
    pipeline = StandInPipeline()
    summary = run(tmp_path / "bench", tmp_path / "out", pipeline, scorer)
    assert pipeline.calls and all(call["keep_shape"] for call in pipeline.calls)
    means = summary["tracks"]["TextureTrans/CrossInstance"]["means"]
    assert means["ssim_image"] is None  # inter-ID: no ground truth, so no pixel metrics
    assert "TextureTrans/CrossInstance" in (tmp_path / "out" / "summary.md").read_text()


def test_edits_are_split_between_processes_and_the_main_one_scores(track_root, tmp_path, scorer):
    barrier = threading.Barrier(2)
    pipelines = [StandInPipeline(), StandInPipeline()]
    results = {}

    def process(index: int) -> None:
        results[index] = run_benchmark(
            load_tracks(track_root),
            pipelines[index],
            tmp_path,
            EditSettings(model="stand-in"),
            scorer if index == 0 else None,
            state=ThreadProcessState(index, barrier),
            progress=False,
        )

    threads = [threading.Thread(target=process, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results[1] is None  # only the main process scores
    assert [len(pipeline.calls) for pipeline in pipelines] == [2, 1]  # 3 cases split 2 + 1
    assert results[0]["tracks"]["PartComp/WithinInstance"]["cases"] == len(SUBJECTS)
    assert (tmp_path / "summary.json").is_file()


def test_mismatched_mode_needs_a_second_case_before_any_edit(track_root, tmp_path, scorer):
    folder = tmp_path / "bench" / "PartComp" / "CrossInstance"
    folder.mkdir(parents=True)
    for path in (track_root / "PartComp" / "WithinInstance").glob("dog_*.png"):
        shutil.copyfile(path, folder / path.name)
    pipeline = StandInPipeline()
    with pytest.raises(InputError, match="no mismatched reference"):
        run(tmp_path / "bench", tmp_path / "out", pipeline, scorer, reference_mode="mismatched")
    assert pipeline.calls == []


def test_wrong_sized_edit_is_an_error(track_root, tmp_path, scorer):
    with pytest.raises(MimicBrushError, match="returned"):
        run(track_root, tmp_path, StandInPipeline(size_change=3), scorer)


@pytest.fixture
def stand_in_loader(monkeypatch):
    """`mimicbrush.loading.load_pipeline` replaced by the stand-in, recording its arguments."""
    loaded = {}

    def load_pipeline(model, device="auto", dtype="auto"):
        loaded.update(model=model, device=device, dtype=dtype, pipeline=StandInPipeline())
        return loaded["pipeline"]

    module = types.ModuleType("mimicbrush.loading")
    module.load_pipeline = load_pipeline
    monkeypatch.setitem(sys.modules, "mimicbrush.loading", module)
    return loaded


def test_cli_run_uses_and_pins_the_scheduler(track_root, tmp_path, stand_in_loader):
    import json

    common = ["--model", "m", "--dino-model", "none", "--clip-model", "none", "--lpips-net", "none", "--limit", "1"]
    assert main(["bench", "run", str(track_root), "-o", str(tmp_path), "--scheduler", "unipc", *common]) == 0
    assert type(stand_in_loader["pipeline"].scheduler).__name__ == "UniPCMultistepScheduler"
    assert json.loads((tmp_path / "run.json").read_text())["scheduler"] == "unipc"


def test_cli_run_and_compare(track_root, tmp_path, capsys, stand_in_loader):
    common = ["--model", "some/model", "--dino-model", "none", "--clip-model", "none", "--lpips-net", "none"]
    assert main(["bench", "run", str(track_root), "-o", str(tmp_path / "true"), "--steps", "3", *common]) == 0
    captured = capsys.readouterr()
    loaded = {key: stand_in_loader[key] for key in ("model", "device", "dtype")}
    # `auto` resolved once, so that the scoring networks get the same device (tests/test_devices.py)
    assert loaded == {"model": "some/model", "device": str(resolve_device("auto")), "dtype": "auto"}
    assert (
        captured.out.startswith("| run | track |") and "| true | PartComp/WithinInstance | true | 3 |" in captured.out
    )
    assert "LPIPS skipped (--lpips-net none)" in captured.err
    assert (
        main(
            [
                "bench",
                "run",
                str(track_root),
                "-o",
                str(tmp_path / "none"),
                "--steps",
                "3",
                "--reference-mode",
                "none",
                "--limit",
                "2",
                *common,
            ]
        )
        == 0
    )
    capsys.readouterr()

    assert (
        main(["bench", "compare", str(tmp_path / "true" / "summary.json"), str(tmp_path / "none" / "summary.json")])
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| run | track | reference | cases | SSIM | PSNR | LPIPS |")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| MimicBrush (paper)", "| true", "| none"]
    assert table[4].split(" | ")[2:4] == ["none", "2"]


def test_cli_errors_are_one_line(track_root, tmp_path, capsys, stand_in_loader):
    assert main(["bench", "run", str(tmp_path / "missing"), "--model", "m", "-o", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: track folder not found: {tmp_path / 'missing'}"
    assert main(["bench", "run", str(track_root), "--model", "m", "-o", str(tmp_path / "o"), "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["bench", "compare", str(tmp_path / "bad.json")]) == 2
    assert "is not a `mimicbrush bench run` summary.json" in capsys.readouterr().err
    assert main(["bench", "compare", str(tmp_path / "absent.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
