"""benchmarks/bench_schedulers.py end to end on the tiny model, and its recommendation rule."""

import importlib.util
import json
from pathlib import Path

import pytest

from tiny_models import tiny_pipeline

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "bench_schedulers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_schedulers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_end_to_end_on_the_tiny_model(bench, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib: pip install -e '.[bench]'")
    tiny_pipeline().save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["-o", str(out), "--model", str(tmp_path / "model"), "--steps", "2,3", "--schedulers", "dpm++,heun",
            "--limit", "1", "--repeats", "2"]
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((out / "bench_schedulers.json").read_text())
    pairs = [(row["scheduler"], row["steps"], row["unet_calls"]) for row in report["rows"]]
    assert pairs == [("ddim", 50, 50), ("dpm++", 2, 2), ("dpm++", 3, 3), ("heun", 2, 3), ("heun", 3, 5)]
    reference = report["rows"][0]
    assert reference["time_vs_ddim50"] == 1.0 and reference["psnr_box_min"] == 100.0  # itself: the PSNR cap
    assert all(row["seconds_median"] > 0 and 0 < row["ssim_box_min"] <= 1 for row in report["rows"])
    assert report["cases"] == ["motorcycle-headlight"] and report["prediction_type"] == "epsilon"
    table = (out / "bench_schedulers.md").read_text()
    assert table.count("\n") == 2 + len(pairs) and "(the reference)" in table
    assert (out / "bench_schedulers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recommendation_is_the_fewest_calls_whose_worst_case_agrees(bench):
    def row(scheduler, steps, calls, worst, seconds):
        return {"scheduler": scheduler, "steps": steps, "unet_calls": calls, "psnr_box_min": worst,
                "seconds_median": seconds}

    rows = [row("ddim", 50, 50, 100.0, 10.0), row("ddim", 20, 20, 31.0, 4.0), row("dpm++", 12, 12, 30.5, 3.0),
            row("unipc", 12, 12, 32.0, 2.9), row("dpm++", 8, 8, 29.9, 2.0), row("heun", 8, 15, 35.0, 3.5)]
    assert bench.recommend(rows, 30.0) is rows[3]  # 8 calls do not agree; of the 12-call pair, the faster
    assert bench.recommend(rows, 40.0) is None  # DDIM-50 itself is never the answer


def test_unsupported_scheduler_is_one_line_and_exit_2(bench, tmp_path, capsys):
    from mimicbrush.scheduling import release_scheduler

    pipe = tiny_pipeline()
    pipe.scheduler = release_scheduler("sample")
    pipe.save_pretrained(tmp_path / "model")
    argv = ["-o", str(tmp_path / "out"), "--model", str(tmp_path / "model"), "--schedulers", "euler-a", "--limit", "1"]
    assert bench.main(argv) == 2
    assert "euler-a does not support prediction type 'sample'" in capsys.readouterr().err
