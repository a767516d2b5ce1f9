"""The repository as a ComfyUI custom_nodes pack (docs/comfyui.md, "Installing"): requirements.txt
in step with pyproject.toml, and the root __init__.py imported as ComfyUI imports a pack folder.

ComfyUI's loaders are reproduced from what their sources do (read, not copied): upstream ComfyUI
(nodes.py, load_custom_node) imports a pack folder's __init__.py with
importlib.util.spec_from_file_location under its path with every "." replaced by "_x_", after
putting the new module in sys.modules under that name; the pip-installable fork
(comfy/nodes/vanilla_node_importing.py) and older upstream ComfyUIs do the same under the folder's
name, and the fork first imports installed packs from the `comfyui.custom_nodes` entry point. The
real-ComfyUI run of this is tests/test_comfyui_install_real.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
COMFYUI_OWNED = {"torch", "torchvision"}  # ComfyUI's: never installed or upgraded by the pack


def requirement_lines() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_requirements_are_the_base_dependencies_without_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = [line for line in project["dependencies"] if Requirement(line).name not in COMFYUI_OWNED]
    assert requirement_lines() == base  # same requirements, same order: edit both together
    assert any(Requirement(line).name == "torch" for line in project["dependencies"])  # only here
    extras = {Requirement(line).name for lines in project["optional-dependencies"].values() for line in lines}
    assert not extras & {Requirement(line).name for line in requirement_lines()} - {
        Requirement(line).name for line in base}
    for line in requirement_lines():
        # ComfyUI-Manager runs `pip install LINE` for each line (its newer resolver refuses options,
        # paths and editables): plain requirement specifiers only, no inline comments
        assert not line.startswith("-") and "/" not in line and "\\" not in line and "#" not in line, line
        assert Requirement(line).url is None and not Requirement(line).extras


def test_torch_bound_of_the_pack_is_pyprojects():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (torch,) = [Requirement(line) for line in project["dependencies"] if Requirement(line).name == "torch"]
    (bound,) = [spec.version for spec in torch.specifier if spec.operator == ">="]
    declared = re.search(r"^TORCH_TESTED_FROM = \((\d+), (\d+)\)", (REPO / "__init__.py").read_text(), re.M)
    assert declared and bound == f"{declared[1]}.{declared[2]}"


# ComfyUI's ways of importing a pack folder, run by one Python, each scenario from a clean slate:
# what the previous one imported of mimicbrush is dropped (torch, imported by ComfyUI before any
# pack, stays). "fresh" hides the installed mimicbrush (editable finder, sys.path entry) as a
# Python without it would be.
LOADERS = r'''
import importlib, importlib.machinery, importlib.metadata, importlib.util, io, json, logging, sys
from pathlib import Path

import torch

log = io.StringIO()
logging.basicConfig(level=logging.INFO, stream=log, format="%(message)s")

def import_folder(folder, name):
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, as both loaders do
    spec.loader.exec_module(module)
    return module

def upstream(folder):  # today's upstream: the folder's path, dots replaced
    return import_folder(folder, str(folder).replace(".", "_x_"))

def by_folder_name(folder):  # the pip-installable fork, older upstream ComfyUIs
    return import_folder(folder, folder.name)

def hide_installed():
    sys.meta_path[:] = [finder for finder in sys.meta_path
                        if finder is importlib.machinery.PathFinder or not finder.find_spec("mimicbrush", None)]
    sys.path[:] = [entry for entry in sys.path if not (Path(entry or ".") / "mimicbrush").is_dir()]
    importlib.invalidate_caches()
    assert importlib.util.find_spec("mimicbrush") is None

def run(scenario, folder):
    if scenario.startswith("fresh"):
        hide_installed()
    if scenario == "fresh-old-torch":  # what an older ComfyUI's torch reports
        real_version = importlib.metadata.version
        importlib.metadata.version = lambda name: "2.4.1" if name == "torch" else real_version(name)
    path_before = list(sys.path)
    result = {}
    try:
        if scenario == "installed-entry-point-then-folder":
            entry_point = importlib.import_module("mimicbrush.comfyui")  # the fork: entry points first
            pack = by_folder_name(folder)
            result["same_mappings"] = pack.NODE_CLASS_MAPPINGS is entry_point.NODE_CLASS_MAPPINGS
            result["submodule_bound"] = sys.modules["mimicbrush"].comfyui is entry_point
        elif scenario.endswith("by-folder-name"):
            pack = by_folder_name(folder)
        else:
            pack = upstream(folder)
    except ImportError as error:
        result["import_error"] = str(error)
        result["left_behind"] = sorted(name for name in sys.modules if name.split(".")[0] == "mimicbrush")
        return result
    package = sys.modules["mimicbrush"]
    result.update(
        nodes=sorted(pack.NODE_CLASS_MAPPINGS), display=sorted(pack.NODE_DISPLAY_NAME_MAPPINGS.values()),
        package_is_the_pack=package is pack, package_path=list(package.__path__),
        sys_path_unchanged=sys.path == path_before,
        heavy=sorted(name for name in ("diffusers", "huggingface_hub", "gradio", "comfy") if name in sys.modules),
        same_as_package=pack.NODE_CLASS_MAPPINGS is importlib.import_module("mimicbrush.comfyui").NODE_CLASS_MAPPINGS,
        # where the modules a saved model's model_index.json names, not imported yet, come from
        models_file=importlib.util.find_spec("mimicbrush.models.image_encoder").origin)
    return result

results = {}
path, meta_path, version = list(sys.path), list(sys.meta_path), importlib.metadata.version
for scenario, folder in json.loads(sys.argv[1]):
    results[scenario] = run(scenario, Path(folder))
    results[scenario]["log"] = log.getvalue()
    log.seek(0), log.truncate()
    for name in [name for name in sys.modules if name.split(".")[0] == "mimicbrush" or "custom_nodes" in name]:
        del sys.modules[name]
    sys.path[:], sys.meta_path[:] = path, meta_path
    importlib.metadata.version = version
    importlib.invalidate_caches()
print(json.dumps(results))
'''

SCENARIOS = ["fresh-upstream", "fresh-by-folder-name", "installed-upstream", "installed-entry-point-then-folder"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict:
    """Each scenario's result. The pack folder is custom_nodes/mimicbrush/ as a clone has it (the
    files an import reads; the bundled model's weights left out), under a path with a dot, which
    upstream's module name replaces; "missing-requirement" is a copy whose requirements.txt names
    a package that is not installed."""
    root = tmp_path_factory.mktemp("comfy")
    folder = root / "ComfyUI.checkout" / "custom_nodes" / "mimicbrush"
    folder.mkdir(parents=True)
    for name in ("__init__.py", "requirements.txt", "pyproject.toml"):
        shutil.copy(REPO / name, folder / name)
    shutil.copytree(REPO / "src" / "mimicbrush", folder / "src" / "mimicbrush",
                    ignore=shutil.ignore_patterns("assets", "__pycache__"))
    broken = root / "broken" / "custom_nodes" / "mimicbrush"
    shutil.copytree(folder, broken)
    with open(broken / "requirements.txt", "a") as requirements:
        requirements.write("mimicbrush-absent-dependency>=1\n")
    plan = [(scenario, str(folder)) for scenario in SCENARIOS + ["fresh-old-torch"]]
    plan += [("fresh-missing-requirement", str(broken))]
    result = subprocess.run([sys.executable, "-c", LOADERS, json.dumps(plan)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"folder": folder, **json.loads(result.stdout.strip().splitlines()[-1])}


NODES = ["MimicBrushEdit", "MimicBrushLoad"]


@pytest.mark.parametrize("scenario", ["fresh-upstream", "fresh-by-folder-name"])
def test_a_fresh_folder_imports_its_own_copy_under_the_package_name(loaded, scenario):
    result = loaded[scenario]
    own = str(loaded["folder"] / "src" / "mimicbrush")
    assert result["nodes"] == NODES and result["display"] == ["Load MimicBrush", "MimicBrush Edit"]
    assert result["package_path"] == [own] and not result["package_is_the_pack"]  # the name is the package's
    assert result["same_as_package"] and result["sys_path_unchanged"] and result["heavy"] == []
    assert result["models_file"].startswith(own)
    assert f"mimicbrush 0.1.0 from this folder ({own})" in result["log"]


@pytest.mark.parametrize("scenario", ["installed-upstream", "installed-entry-point-then-folder"])
def test_an_installed_package_wins_and_the_log_says_so(loaded, scenario):
    import mimicbrush

    installed = str(Path(mimicbrush.__file__).resolve().parent)
    result = loaded[scenario]
    assert result["nodes"] == NODES and result["same_as_package"] and result["sys_path_unchanged"]
    assert result["package_path"] == [installed] and result["models_file"].startswith(installed)
    assert f"installed in ComfyUI's Python ({installed}) is used, not this folder's copy" in result["log"]
    if scenario == "installed-entry-point-then-folder":  # registered once: the folder adds the same classes
        assert result["same_mappings"] and result["submodule_bound"]


def test_missing_requirements_are_one_clear_line(loaded):
    result = loaded["fresh-missing-requirement"]
    assert result["import_error"].startswith("MimicBrush nodes: mimicbrush-absent-dependency missing from "
                                             "ComfyUI's Python: run `python -m pip install -r requirements.txt`")
    assert result["left_behind"] == []


def test_an_older_torch_is_left_alone_with_a_warning(loaded):
    result = loaded["fresh-old-torch"]
    assert result["nodes"] == NODES
    assert ("MimicBrush nodes: tested with torch >= 2.11; this ComfyUI has torch 2.4.1, left as it is"
            in result["log"])
    assert "tested with torch" not in loaded["fresh-upstream"]["log"]
