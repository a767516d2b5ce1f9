"""How long ComfyUI takes to import the custom_nodes pack, against torch's import in the same process.

Each repeat is a fresh `--python` process (a ComfyUI venv, the pack's requirements installed)
that imports torch, as ComfyUI has before it reads custom_nodes/, then this repository's
__init__.py as upstream ComfyUI imports a pack folder (its path as the module name). Reports the
seconds of each, the pack's share of torch's import, and which heavy modules the pack's import
pulled in (none expected: a model loads when the Load node runs). JSON on stdout and in -o FILE.

    python benchmarks/comfyui_pack_import.py --python /work/comfy-install/venv/bin/python --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("diffusers", "transformers", "huggingface_hub", "accelerate", "gradio")

ONE_IMPORT = r'''
import importlib.util, json, sys, time
folder = sys.argv[1]
started = time.perf_counter()
import torch
torch_done = time.perf_counter()
name = folder.replace(".", "_x_")
spec = importlib.util.spec_from_file_location(name, folder + "/__init__.py")
pack = importlib.util.module_from_spec(spec)
sys.modules[name] = pack
spec.loader.exec_module(pack)
pack_done = time.perf_counter()
print(json.dumps({"torch_s": torch_done - started, "pack_s": pack_done - torch_done, "nodes": sorted(pack.NODE_CLASS_MAPPINGS),
                  "heavy": [module for module in sys.argv[2].split(",") if module in sys.modules]}))
'''


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", required=True, help="python of a ComfyUI venv with the pack's requirements")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--output")
    args = parser.parse_args(argv)
    env = {**os.environ}
    env.pop("PYTHONPATH", None)  # the folder must find the package itself
    runs = []
    for _ in range(args.repeats):
        done = subprocess.run([args.python, "-c", ONE_IMPORT, str(REPO), ",".join(HEAVY)], env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    pack = [run["pack_s"] for run in runs]
    torch_import = [run["torch_s"] for run in runs]
    report = {
        "repeats": args.repeats, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "pack_s_median": round(statistics.median(pack), 3), "pack_s": [round(value, 3) for value in pack],
        "torch_s_median": round(statistics.median(torch_import), 3),
        "pack_share_of_torch_import_median": round(statistics.median(p / t for p, t in zip(pack, torch_import)), 3),
        "nodes": runs[0]["nodes"], "heavy_modules_imported": sorted({m for run in runs for m in run["heavy"]}),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
