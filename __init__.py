"""MimicBrush's ComfyUI nodes as a custom_nodes pack: this repository cloned (or linked) into
ComfyUI/custom_nodes/mimicbrush/ by ComfyUI-Manager, `comfy node install` or git (docs/comfyui.md).

ComfyUI runs this file under a module name of its own: upstream ComfyUI derives it from the
folder's path, the pip-installable fork (and older ComfyUIs) use the folder's name, "mimicbrush",
which is also the package's name. So this file is never the package: it finds the real one, puts
it under its own name and exports its nodes. Which copy, in this order:
  1. a mimicbrush package already imported (the fork imports an installed one through its
     entry point before it imports custom_nodes/) is used as it is;
  2. else one installed in ComfyUI's Python (pip) is imported, the same as `mimicbrush edit` runs;
  3. else this folder's own src/mimicbrush is imported from its file location, with no sys.path
     entry, which could shadow other packs' modules.
The log says which one won. The dependencies come from requirements.txt (ComfyUI-Manager installs
it; torch is ComfyUI's and is left alone). Nothing is loaded or downloaded here: a model loads when
the Load node runs.
"""

import importlib.metadata
import importlib.util
import logging
import re
import sys
from pathlib import Path

PACKAGE = "mimicbrush"
FOLDER = Path(__file__).resolve().parent
OWN_COPY = FOLDER / "src" / PACKAGE
TORCH_TESTED_FROM = (2, 11)  # pyproject.toml's torch bound (a test keeps them equal)

_logger = logging.getLogger("mimicbrush.comfyui")


def _requirement_names() -> list[str]:
    lines = (FOLDER / "requirements.txt").read_text().splitlines()
    return [re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line).group() for line in lines if line.strip()
            and not line.lstrip().startswith("#")]


def _check_requirements() -> None:
    """One clear line instead of a traceback when requirements.txt was never installed."""
    missing = []
    for name in _requirement_names():
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise ImportError(f"MimicBrush nodes: {', '.join(missing)} missing from ComfyUI's Python: run "
                          f"`python -m pip install -r requirements.txt` in {FOLDER} with ComfyUI's Python "
                          "(ComfyUI-Manager does this when it installs the pack)")


def _warn_on_old_torch() -> None:
    """The requirements leave ComfyUI's torch as it is: say so once if it is older than tested."""
    try:
        torch_version = tuple(int(part) for part in importlib.metadata.version("torch").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return
    if torch_version < TORCH_TESTED_FROM:
        _logger.warning("MimicBrush nodes: tested with torch >= %d.%d; this ComfyUI has torch %s, left as it "
                        "is (torch belongs to ComfyUI)", *TORCH_TESTED_FROM, importlib.metadata.version("torch"))


def _installed_spec():
    """The spec of a mimicbrush installed in this Python, or None. Asks the import system's finders
    directly: sys.modules may hold this file under the package's name."""
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec(PACKAGE, None) if find_spec else None
        if spec is not None and spec.origin and Path(spec.origin).resolve() != Path(__file__).resolve():
            return spec
    return None


def _import_package(this_module):
    """The mimicbrush package, and how it was found (for the log)."""
    imported = sys.modules.get(PACKAGE)
    if imported is not None and imported is not this_module:
        return imported, "already imported"
    spec = _installed_spec()
    how = "installed in ComfyUI's Python"
    if spec is None:
        _check_requirements()
        _warn_on_old_torch()
        spec = importlib.util.spec_from_file_location(PACKAGE, OWN_COPY / "__init__.py",
                                                      submodule_search_locations=[str(OWN_COPY)])
        how = "this folder's copy"
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    # Submodules imported before ComfyUI put this file in the package's place (the fork's entry
    # point) belong to the package again, as an import would have bound them.
    for name, module in list(sys.modules.items()):
        parent, _, child = name.rpartition(".")
        if parent == PACKAGE and module is not None:
            package.__dict__.setdefault(child, module)
    return package, how


def _export_nodes():
    package, how = _import_package(sys.modules[__name__])
    nodes = importlib.import_module(f"{PACKAGE}.comfyui")
    where = Path(package.__file__).resolve().parent
    if where == OWN_COPY:  # an editable install of this very folder counts as the folder's copy
        _logger.info("MimicBrush nodes: mimicbrush %s from this folder (%s)", package.__version__, where)
    else:
        _logger.info("MimicBrush nodes: mimicbrush %s %s (%s) is used, not this folder's copy (%s); "
                     "`pip uninstall mimicbrush` to use the folder's", package.__version__, how, where, OWN_COPY)
    return nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = _export_nodes()
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
