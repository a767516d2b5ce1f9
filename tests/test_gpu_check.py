"""benchmarks/gpu_check.py: its CPU rehearsal gives every section a result (so the one prepared GPU
check cannot rot between the rare GPU lendings), a failing or overrunning section is recorded while
the others go on, and bad arguments are one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parity_kit import KIT, require_kit
from benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """One rehearsal, as CI's command line runs it, where PyAV cannot be imported (the lent GPU
    machine has none)."""
    require_kit()
    root = tmp_path_factory.mktemp("gpu-check")
    (root / "no-av" / "av").mkdir(parents=True)
    (root / "no-av" / "av" / "__init__.py").write_text("raise ImportError('no PyAV on the lent GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "no-av"), str(ROOT / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(SCRIPT), "--rehearse", "-o", str(root / "out"), "--kit", str(KIT)],
                          capture_output=True, text=True, env=env, timeout=900)
    report_file = root / "out" / "gpu-check.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else None
    return done, report, root / "out"


def test_rehearsal_gives_every_section_a_result(rehearsal, gpu_check):
    done, report, _ = rehearsal
    assert report is not None, done.stderr[-3000:]
    assert list(report["sections"]) == list(gpu_check.SECTION_NAMES)
    for name, entry in report["sections"].items():
        expected = "skipped" if name == "xl" and not gpu_check.bench.sdxl_backbone_available() else "ok"
        assert entry["status"] == expected, (name, entry.get("error"), entry.get("traceback"))
        assert gpu_check.item_errors(entry.get("result", {})) == []
    if report["sections"]["xl"]["status"] == "skipped":
        assert report["sections"]["xl"]["reason"] == "no SDXL backbone in this package"
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["environment"]["rehearsal"] is True


def test_rehearsal_results_have_the_gpu_questions_fields(rehearsal):
    _, report, _ = rehearsal
    sections = {name: entry["result"] for name, entry in report["sections"].items()}

    case = sections["parity"]["cases"]["tiny_a"]
    # the rehearsal's "device" is the CPU: the same fp32 run twice must agree exactly
    assert case["fp32_device_vs_cpu"]["largest"]["max_abs"] == 0.0
    assert set(case["kit_compare"]) == {"cpu_fp32", "device_fp32"}
    assert sections["parity"]["kit_verdict_applies"] is False  # 2 steps at 64² is not the kit's case
    for half in ("fp16_vs_fp32", "bf16_vs_fp32"):
        assert 10 < case[half]["psnr_db"] <= 100 and case[half]["max_level_diff"] >= 0

    speed = sections["speed"]
    assert speed["matmul_peak"]["tflops"] > 0
    assert set(speed["modes"]) == {"faithful", "fast", "fast-t0", "compile"}
    for mode, entry in speed["modes"].items():
        assert entry["median_s_per_edit"] > 0 and entry["ratio_to_floor"] is not None, mode
        assert "process_peak_rss_gib" in entry and "peak_allocated_gib" not in entry  # no GPU figure on the CPU
    # the faithful path does more work per step than the fast one, and fast-t0 less still
    flops = {mode: speed["modes"][mode]["tflops_per_step"] for mode in ("faithful", "fast", "fast-t0")}
    assert flops["faithful"] > flops["fast"] > flops["fast-t0"] > 0
    assert speed["modes"]["compile"]["backend"] == "eager"

    assert list(sections["fewer-steps"]["schedulers"]) == ["ddim 3", "unipc 2", "euler 2"]
    assert sections["fewer-steps"]["schedulers"]["ddim 3"]["time_vs_ddim"] == 1.0
    assert sections["memory"]["modes"]["model"]["median_s_per_edit"] > 0
    assert "skipped" in sections["memory"]["modes"]["sequential"]
    batch = sections["batch"]
    assert batch["exit_status"] == 0 and batch["written"] == 2 and batch["s_per_edit_after_first"] > 0
    configurations = sections["training"]["configurations"]
    assert [(entry["batch"], entry["gradient_checkpointing"]) for entry in configurations.values()] == [
        (1, False), (2, False), (1, True), (2, True)]
    assert all(entry["outcome"] == "ran" and entry["s_per_step"] > 0 for entry in configurations.values())

    xl = sections["xl"]
    if report["sections"]["xl"]["status"] == "ok":  # the package has the SDXL backbone
        edit = xl["single_edit"]
        assert edit["output"] == {"size": [640, 480], "source_size": [640, 480], "model_image_size": [64, 64],
                                  "outside_mask_unchanged": True, "inside_mask_changed": True}
        assert edit["stages"]["unet"]["calls"] == edit["stages"]["reference_unet"]["calls"] == 3
        assert edit["stages"]["vae_decoder"]["calls"] == 1 and edit["s_per_step"] > 0
        assert xl["fast"]["ms_per_step"] > 0 and xl["unet_parameters"]["unet"] > xl["unet_parameters"]["reference_unet"]


def test_rehearsal_writes_the_markdown_tables(rehearsal, gpu_check):
    _, report, out = rehearsal
    table = (out / "gpu-check.md").read_text()
    assert table.startswith("# GPU check (CPU rehearsal")
    for name in gpu_check.SECTION_NAMES:
        assert f"| {name} | {report['sections'][name]['status']} |" in table
    rows = [line for line in table.splitlines() if line.startswith("| speed | ")]
    assert "matrix product" in rows[1] and sum("× the floor" in row for row in rows) == 4  # the peak, 4 modes
    assert "| training | batch 2, checkpointing on |" in table
    if report["sections"]["xl"]["status"] == "ok":
        assert "| xl | one edit by stage, 3 steps at 64² |" in table and "outside the mask kept" in table


def test_a_failing_section_is_recorded_and_the_others_go_on(gpu_check, tmp_path, capsys):
    """No kit: parity fails; speed stops at a 1-second cap with what it had; xl still runs."""
    status = gpu_check.main(["--rehearse", "-o", str(tmp_path / "out"), "--only", "xl,speed,parity",
                             "--kit", str(tmp_path / "no-kit"), "--cap", "speed=1"])
    assert status == 1
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["parity", "speed", "xl"]  # the check's order, whatever --only's
    assert sections["parity"]["status"] == "error" and "parity kit not found" in sections["parity"]["error"]
    assert sections["speed"]["status"] == "timed out" and "time cap of 1 s" in sections["speed"]["error"]
    assert sections["speed"]["result"]["matmul_peak"]["tflops"] > 0  # measured before the cap
    assert sections["xl"]["status"] in ("ok", "skipped")
    assert "| parity | error |" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["--only", "speed,warp"], "--only: unknown section warp"),
    (["--cap", "speed=soon"], "--cap 'speed=soon': expected SECTION=SECONDS"),
    (["--budget", "0"], "--budget: expected seconds > 0"),
])
def test_bad_arguments_are_one_line_and_exit_2(gpu_check, tmp_path, capsys, arguments, message):
    assert gpu_check.main(["--rehearse", "-o", str(tmp_path), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {message}") and error.count("\n") == 1
    assert not (tmp_path / "gpu-check.json").exists()


def test_an_earlier_report_is_kept_without_force(gpu_check, tmp_path, capsys):
    (tmp_path / "gpu-check.json").write_text("{}\n")
    assert gpu_check.main(["--rehearse", "-o", str(tmp_path), "--only", "xl"]) == 2
    assert "already exists (pass --force" in capsys.readouterr().err
    assert (tmp_path / "gpu-check.json").read_text() == "{}\n"


def test_item_errors_and_results_cut_short_reach_the_tables(gpu_check):
    """What a GPU run can leave behind: one scheduler failed, the memory section stopped mid-way."""
    import torch

    report = {"environment": gpu_check.environment(torch.device("cpu"), True), "started": "now", "command": "c",
              "sections": {
                  "fewer-steps": {"status": "error", "cap_s": 40, "seconds": 3.0, "result": {"schedulers": {
                      "ddim 50": {"scheduler": "ddim", "steps": 50, "median_s_per_edit": 0.8, "ms_per_step": 15.0,
                                  "time_vs_ddim": 1.0},
                      "eulerx 8": {"error": "InputError: unknown scheduler 'eulerx'"}}}},
                  "memory": {"status": "timed out", "cap_s": 75, "seconds": 75.0,
                             "result": {"modes": {"model": {"median_s_per_edit": 9.0}}}}}}
    assert gpu_check.item_errors(report["sections"]["fewer-steps"]["result"]) == [
        "schedulers.eulerx 8: InputError: unknown scheduler 'eulerx'"]
    table = gpu_check.markdown(report)
    assert "| fewer-steps | ddim 50 | 0.800 s / edit, 15.0 ms / step |  | 1.0 of ddim's time |" in table
    assert "| fewer-steps | eulerx 8 |  |  | error: InputError: unknown scheduler 'eulerx' |" in table
    assert "| memory | (part of the result) |  |  | not tabulated (" in table
