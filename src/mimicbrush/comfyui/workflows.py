"""The bundled examples (mimicbrush.examples) as ComfyUI workflows, and their input files.

    python -m mimicbrush.comfyui.workflows ComfyUI/input          # write the examples' images
    python -m mimicbrush.comfyui.workflows ComfyUI/input --workflows comfyui/workflows   # and JSON

The repository's comfyui/workflows/ holds what this writes (API format for POST /prompt,
`NAME.api.json`; UI format to drag onto the page, `NAME.json`); a test keeps them in step. The
images are not in the repository: they come from scikit-image's sample data, as `mimicbrush demo`
uses them, and this writes them into ComfyUI's input folder. Masks are black-and-white files read
by LoadImageMask's red channel (LoadImage would give an empty mask for a file without alpha).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import PIL.Image

from .. import edit_options
from ..examples import Example, bundled_examples
from ..fileio import write_atomic
from .model import BUNDLED
from .nodes import NODE_CLASS_MAPPINGS

STEPS = 20  # as `mimicbrush demo`
SEED = 0
PREFIX = "mimicbrush-"  # input file names: mimicbrush-NAME-source.png, ...


def input_name(example: Example, kind: str) -> str:
    return f"{PREFIX}{example.name}-{kind}.png"


def edit_settings(example: Example) -> dict:
    """MimicBrush Edit's widget values for an example, in INPUT_TYPES' order."""
    return {
        "keep_shape": example.keep_shape,
        "steps": STEPS,
        "scheduler": edit_options.DEFAULT_SCHEDULER,
        "guidance": edit_options.DEFAULT_GUIDANCE,
        "seed": SEED,
        "zoom": edit_options.DEFAULT_ZOOM,
        "faithful": False,
    }


def api_workflow(example: Example) -> dict:
    """The example as a prompt for POST /prompt (API format)."""
    nodes = {
        "1": {"class_type": "LoadImage", "inputs": {"image": input_name(example, "source")}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": input_name(example, "mask"), "channel": "red"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": input_name(example, "reference")}},
        "4": {"class_type": "MimicBrushLoad", "inputs": {"model": BUNDLED, "dtype": "auto", "offload": "none"}},
        "5": {"class_type": "MimicBrushEdit", "inputs": {
            "mimicbrush_model": ["4", 0], "source": ["1", 0], "mask": ["2", 0], "reference": ["3", 0],
            **edit_settings(example)}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": f"mimicbrush/{example.name}"}},
    }
    if example.keep_shape:
        nodes["7"] = {"class_type": "SaveImage",
                      "inputs": {"images": ["5", 1], "filename_prefix": f"mimicbrush/{example.name}-depth"}}
    return nodes


def ui_workflow(example: Example) -> dict:
    """The same graph in the UI's workflow format (what the page saves and loads by dragging)."""
    api = api_workflow(example)
    outputs = {"LoadImage": [("IMAGE", 0), ("MASK", 1)], "LoadImageMask": [("MASK", 0)],
               "MimicBrushLoad": [("MIMICBRUSH_MODEL", 0)], "MimicBrushEdit": [("IMAGE", 0), ("IMAGE", 1)],
               "SaveImage": []}
    output_names = {"MimicBrushEdit": ["image", "depth_preview"], "MimicBrushLoad": ["mimicbrush_model"]}
    input_types = {"mimicbrush_model": "MIMICBRUSH_MODEL", "source": "IMAGE", "mask": "MASK",
                   "reference": "IMAGE", "images": "IMAGE"}
    links, nodes = [], []
    consumers: dict[tuple[int, int], list[int]] = {}
    for node_id, node in api.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                link_id = len(links) + 1
                links.append([link_id, int(value[0]), value[1], int(node_id), name, input_types[name]])
                consumers.setdefault((int(value[0]), value[1]), []).append(link_id)
    for order, (node_id, node) in enumerate(api.items()):
        kind = node["class_type"]
        linked = [link for link in links if link[3] == int(node_id)]
        widgets = [value for value in node["inputs"].values() if not isinstance(value, list)]
        if kind in ("LoadImage", "LoadImageMask"):
            widgets.append("image")  # the upload button's value, as the page saves it
        if kind in NODE_CLASS_MAPPINGS:
            widgets = _our_widgets(kind, node["inputs"])
        names = output_names.get(kind, [])
        nodes.append({
            "id": int(node_id),
            "type": kind,
            "pos": list(LAYOUT[int(node_id)]),
            "size": [NODE_WIDTH, NODE_HEIGHTS[kind]],
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [{"name": link[4], "type": link[5], "link": link[0]} for link in linked],
            "outputs": [{"name": names[slot] if slot < len(names) else kind_type, "type": kind_type,
                         "links": consumers.get((int(node_id), slot), []), "slot_index": slot}
                        for kind_type, slot in outputs[kind]],
            "properties": {"Node name for S&R": kind},
            "widgets_values": widgets,
        })
    ui_links = [[link_id, origin, slot, target, _input_slot(api[str(target)], name), kind]
                for link_id, origin, slot, target, name, kind in links]
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": ui_links,
            "groups": [], "config": {}, "extra": {"mimicbrush_example": example.name}, "version": 0.4}


WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")

# Where each node sits on the page: image loaders in the first column, the model loader above the
# edit in the second, the Save nodes in the third. The heights are what the page gives each node
# once its image preview shows (measured with frontend 1.38.14: LoadImage 314, the edit 522), so
# no node covers another when the workflow is opened; the page only ever enlarges a saved size.
NODE_WIDTH = 315
NODE_HEIGHTS = {"LoadImage": 330, "LoadImageMask": 330, "MimicBrushLoad": 130, "MimicBrushEdit": 530,
                "SaveImage": 330}
LAYOUT = {1: (40, 40), 2: (40, 420), 3: (40, 800), 4: (400, 40), 5: (400, 220), 6: (760, 40), 7: (760, 420)}


def _our_widgets(kind: str, values: dict) -> list:
    """Our node's widget values in INPUT_TYPES' order (required, then optional; defaults where the
    example sets none), with the value the page stores after a seed ("control after generate")."""
    declared = NODE_CLASS_MAPPINGS[kind].INPUT_TYPES()
    widgets = []
    for name, spec in {**declared["required"], **declared.get("optional", {})}.items():
        if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES:
            widgets.append(values.get(name, spec[1].get("default") if len(spec) > 1 else None))
            if name == "seed":
                widgets.append("fixed")
    return widgets


def _input_slot(node: dict, name: str) -> int:
    linked = [key for key, value in node["inputs"].items() if isinstance(value, list)]
    return linked.index(name)


def write_inputs(folder: str | Path, examples: list[Example] | None = None) -> list[Path]:
    """Each example's source, mask (black and white) and reference as PNG files in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for example in examples or bundled_examples():
        for kind, array in (("source", example.source), ("mask", example.mask), ("reference", example.reference)):
            path = folder / input_name(example, kind)
            PIL.Image.fromarray(array).save(path)
            written.append(path)
    return written


def write_workflows(folder: str | Path, examples: list[Example] | None = None) -> list[Path]:
    written = []
    for example in examples or bundled_examples():
        for suffix, workflow in ((".api.json", api_workflow(example)), (".json", ui_workflow(example))):
            text = json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"
            written.append(write_atomic(Path(folder) / f"{example.name}{suffix}", text))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimicbrush.comfyui.workflows",
                                     description="Write the bundled examples' images into ComfyUI's input folder.")
    parser.add_argument("input_dir", help="ComfyUI's input folder (where LoadImage reads)")
    parser.add_argument("--workflows", metavar="DIR", help="also write the example workflows (JSON) here")
    args = parser.parse_args(argv)
    examples = bundled_examples()
    for path in write_inputs(args.input_dir, examples) + (write_workflows(args.workflows, examples)
                                                          if args.workflows else []):
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
