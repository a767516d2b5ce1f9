"""ComfyUI's own install path, in a real ComfyUI: the pack put into custom_nodes/mimicbrush/ as
ComfyUI-Manager and `comfy node install` put it, its requirements.txt installed as the Manager
installs it, then the server started on it.

Needs MIMICBRUSH_COMFYUI_PYTHON, the python of a ComfyUI venv made by ../shared/comfyui/setup.sh
WITHOUT this project (the requirements step must install what the pack needs); a venv with
mimicbrush installed skips the fresh install and runs only the "installed too" case. The
Manager's and the registry's servers cannot be reached here, so their steps are simulated:
  - the clone: this working tree's files (tracked and not ignored) copied into custom_nodes/mimicbrush
    (benchmarks/load_comfyui.py's install_pack);
  - the requirements: `python -m pip install LINE` for each line of requirements.txt, in that
    folder, as the Manager runs it. This installs into the venv (needs the package registry).
Then: the nodes are listed and the log says which copy of mimicbrush won; example workflows run
through POST /prompt equal `mimicbrush edit` run by the same Python on the folder's copy; torch
and torchvision are unchanged by the requirements. "Installed too": the package also installed
(pip, with its entry point, into a folder on PYTHONPATH, leaving the venv as it is): the fork
imports it through the entry point, the folder then adds the same node classes, and the log says
the installed package won. Figures go to stdout (pytest -s) and to MIMICBRUSH_COMFYUI_REPORT.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark
from test_comfyui_real import (EDIT_NODE, PYTHON, cli_edit, drive, get, running_comfyui, saved, server_env,
                               workflow)

REPO = Path(__file__).resolve().parents[1]
NODES = {"MimicBrushLoad", "MimicBrushEdit"}
WORKFLOWS = ["motorcycle-tank", "coffee-brick"]  # part composition; texture transfer with its depth preview

pytestmark = pytest.mark.skipif(
    not PYTHON, reason="no real ComfyUI: set MIMICBRUSH_COMFYUI_PYTHON to the python of a venv made by "
    "../shared/comfyui/setup.sh (without this project for the fresh install)")


def has_mimicbrush(env: dict) -> bool:
    return subprocess.run([PYTHON, "-c", "import mimicbrush"], env=env, capture_output=True).returncode == 0


def load_queue_benchmark():
    """benchmarks/load_comfyui.py: its way of putting the pack into custom_nodes/, and the queue."""
    return load_benchmark("load_comfyui")


def frozen(env: dict) -> dict[str, str]:
    lines = subprocess.run([PYTHON, "-m", "pip", "freeze", "--all"], env=env, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


def manager_installs_requirements(folder: Path, env: dict) -> list[str]:
    """ComfyUI-Manager's step: one `pip install LINE` per requirement line, in the pack's folder."""
    log = []
    for line in (folder / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            done = subprocess.run([PYTHON, "-m", "pip", "install", line], cwd=folder, env=env, capture_output=True,
                                  text=True, timeout=900)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            log += [text for text in done.stdout.splitlines() if text.startswith("Successfully installed")]
    return log


def run_workflows(server: dict, cli_env: dict, tmp_path: Path) -> dict:
    """Each example workflow through POST /prompt, compared with `mimicbrush edit`; seconds each."""
    subprocess.run([PYTHON, "-m", "mimicbrush.comfyui.workflows", str(server["work"] / "input")], check=True,
                   env=cli_env, capture_output=True, timeout=300)
    plan = [{"name": name, "prompt": workflow(name), "watch": EDIT_NODE} for name in WORKFLOWS]
    records = {record["name"]: record for record in drive(server, plan)}
    for name in WORKFLOWS:
        record = records[name]
        assert record["status"] == "success" and record["events"] == ["execution_success"], record
        expected, expected_depth = cli_edit({**server, "env": cli_env}, workflow(name), tmp_path / f"{name}.png")
        np.testing.assert_array_equal(saved(server, record, "6"), expected, err_msg=name)
        if expected_depth is not None:
            np.testing.assert_array_equal(saved(server, record, "7"), expected_depth, err_msg=name)
    return {name: round(records[name]["seconds"], 2) for name in WORKFLOWS}


def listed_nodes(server: dict) -> set[str]:
    return {name for name in get(f"{server['base']}/object_info", timeout=60) if name.startswith("MimicBrush")}


def report(figures: dict) -> None:
    print(json.dumps(figures, indent=2))
    if os.environ.get("MIMICBRUSH_COMFYUI_REPORT"):
        path = Path(os.environ["MIMICBRUSH_COMFYUI_REPORT"])
        previous = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**previous, **figures}, indent=2) + "\n")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> tuple[Path, Path]:
    """A ComfyUI work folder with the pack cloned into custom_nodes/mimicbrush."""
    work = tmp_path_factory.mktemp("comfyui-install")
    return work, load_queue_benchmark().install_pack(work)


def test_manager_install_into_custom_nodes(work, tmp_path):
    work, folder = work
    env = server_env(work)
    env.pop("PYTHONPATH", None)  # ComfyUI's Python as it is: the pack must find the package itself
    if has_mimicbrush(env):
        pytest.skip("mimicbrush is installed in MIMICBRUSH_COMFYUI_PYTHON's venv: the fresh install needs a "
                    "ComfyUI venv without it (setup.sh without PROJECT_DIR)")
    before = frozen(env)
    started = time.perf_counter()
    installed = manager_installs_requirements(folder, env)
    requirements_seconds = time.perf_counter() - started
    after = frozen(env)
    assert {name: after.get(name) for name in ("torch", "torchvision")} == \
        {name: before.get(name) for name in ("torch", "torchvision")}  # ComfyUI's torch, untouched
    assert not has_mimicbrush(env)  # the requirements install dependencies, not the package
    changed = {name: [before.get(name), after.get(name)] for name in sorted(set(before) | set(after))
               if before.get(name) != after.get(name)}

    with running_comfyui(PYTHON, work, env) as server:
        assert listed_nodes(server) == NODES
        own = (folder / "src" / "mimicbrush").resolve()
        assert f"MimicBrush nodes: mimicbrush 0.1.0 from this folder ({own})" in server["log"].read_text()
        seconds = run_workflows(server, {**env, "PYTHONPATH": str(folder / "src")}, tmp_path)
    report({"custom_nodes_fresh": {
        "requirements_install_s": round(requirements_seconds, 1), "pip_installed": installed,
        "packages_changed_by_requirements": changed, "server_start_s": round(server["start_seconds"], 1),
        "workflow_s": seconds}})


def test_installed_too_registers_the_nodes_once(work, tmp_path):
    work, folder = work
    env = server_env(work)
    env.pop("PYTHONPATH", None)
    if has_mimicbrush(env):
        site = None  # installed in the venv already
    else:
        site = work / "installed-too"  # `pip install` of the package, entry point and all, beside the venv
        subprocess.run([PYTHON, "-m", "pip", "install", "--no-deps", "--target", str(site), str(REPO)], env=env,
                       check=True, capture_output=True, timeout=900)
        env["PYTHONPATH"] = str(site)
    installed_at = subprocess.run([PYTHON, "-c", "import mimicbrush, pathlib; "
                                   "print(pathlib.Path(mimicbrush.__file__).resolve().parent)"],
                                  env=env, capture_output=True, text=True, check=True).stdout.strip()
    with running_comfyui(PYTHON, work, env) as server:
        assert listed_nodes(server) == NODES
        log = server["log"].read_text()
        assert f"installed in ComfyUI's Python ({installed_at}) is used, not this folder's copy" in log
        said = [line for line in log.splitlines() if "MimicBrush nodes:" in line]
        assert said and all("is used, not this folder's copy" in line for line in said)  # the fork imports
        # custom_nodes/ at start-up and again in the prompt worker's thread: the same answer each time
        seconds = run_workflows(server, env, tmp_path)
    report({"custom_nodes_and_installed": {"installed_at": "venv" if site is None else "PYTHONPATH",
                                           "server_start_s": round(server["start_seconds"], 1),
                                           "workflow_s": seconds}})


def test_the_queue_benchmark_on_a_short_queue(tmp_path):
    """benchmarks/load_comfyui.py end to end on 6 prompts (docs/reliability.md has the 50-prompt run)."""
    output = tmp_path / "load-comfyui.json"
    status = load_queue_benchmark().main(["--python", PYTHON, "--prompts", "6", "--steps", "2", "--long-steps", "300",
                                    "--work", str(tmp_path / "work"), "-o", str(output)])
    figures = json.loads(output.read_text())
    assert figures["interrupted"] == [3] and figures["succeeded"] == 5 and figures["model_loads"] == 1, figures
    assert status == 0, figures["targets_met"]
