"""A script of benchmarks/ loaded by its path, for the tests of what it builds and measures."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py as a module of its own, registered as `benchmark_NAME` (its dataclasses
    look their module up in sys.modules; the prefix keeps it apart from the script's own imports of
    its siblings, such as gpu_check's `import bench_inference`)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
