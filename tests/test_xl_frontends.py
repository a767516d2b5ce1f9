"""An XL model folder where users meet it: the ComfyUI nodes (a folder in models/mimicbrush/,
loaded by Load MimicBrush, edited by MimicBrush Edit in ComfyUI's tensor conventions) give
`mimicbrush edit --model`'s pixels, and the app's /edit gives the pipeline's."""

from __future__ import annotations

import sys
import types

import numpy as np
import PIL.Image
import pytest
import torch

from mimicbrush.cli import main as cli_main
from mimicbrush.comfyui import NODE_CLASS_MAPPINGS
from test_comfyui_nodes import comfy_load_image, comfy_load_image_mask, node_edit, pixels
from test_train_support import one_thread  # noqa: F401
from tiny_models import saved_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 2  # node_edit's


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """ComfyUI's models/mimicbrush/ holding a tiny XL model folder."""
    root = tmp_path_factory.mktemp("models")
    saved_tiny_pipeline(root / "mimicbrush" / "tiny-xl", xl=True)
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(4)
    PIL.Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / "source.png")
    PIL.Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "reference.png")
    mask = np.zeros((48, 64, 3), np.uint8)
    mask[10:30, 20:44] = 255
    PIL.Image.fromarray(mask).save(folder / "mask.png")
    return folder


def comfy_folder_paths(monkeypatch, models_dir):
    """ComfyUI's folder_paths (upstream module name) with its models directory."""
    registered: dict[str, list[str]] = {}
    paths = types.ModuleType("folder_paths")
    paths.models_dir = str(models_dir)
    paths.get_folder_paths = lambda name: registered[name]
    paths.add_model_folder_path = lambda name, path, is_default=False: registered.setdefault(name, []).append(path)
    monkeypatch.setitem(sys.modules, "folder_paths", paths)
    monkeypatch.setitem(sys.modules, "comfy.cmd.folder_paths", None)


def test_the_comfyui_nodes_load_and_edit_an_xl_model(models_dir, files, tmp_path, monkeypatch):
    from mimicbrush.comfyui.model import model_choices

    comfy_folder_paths(monkeypatch, models_dir)
    assert "tiny-xl" in model_choices()
    (model,) = NODE_CLASS_MAPPINGS["MimicBrushLoad"]().load("tiny-xl")
    assert model.pipe.config.backbone == "sdxl"
    source, _ = comfy_load_image(files / "source.png")
    reference, _ = comfy_load_image(files / "reference.png")
    image, _ = node_edit(model, source, comfy_load_image_mask(files / "mask.png"), reference)

    out = tmp_path / "cli.png"
    assert cli_main(["edit", str(files / "source.png"), "--mask", str(files / "mask.png"), "--reference",
                     str(files / "reference.png"), "-o", str(out), "--model", str(models_dir / "mimicbrush" / "tiny-xl"),
                     "--steps", str(STEPS), "--seed", "7", "--device", "cpu"]) == 0
    np.testing.assert_array_equal(pixels(image)[0], np.asarray(PIL.Image.open(out).convert("RGB")))


def test_the_apps_edit_endpoint_edits_with_an_xl_model(models_dir, files, tmp_path):
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed: pip install -e '.[app]'")
    from mimicbrush.app import EditService, build_app
    from mimicbrush.loading import load_pipeline

    pipe = load_pipeline(models_dir / "mimicbrush" / "tiny-xl", device="cpu")
    demo = build_app(EditService(pipe, model_label="tiny-xl", max_side=512, output_dir=tmp_path),
                     with_examples=False)
    endpoint = next(function.fn for function in demo.fns.values() if function.api_name == "edit")
    result, _, _, info = endpoint(str(files / "source.png"), None, "20,10,44,30", str(files / "reference.png"), "",
                                  False, "off", STEPS, 5.0, 5)
    assert info["seed"] == 5 and info["size"] == [64, 48]
    expected = pipe(str(files / "source.png"), "20,10,44,30", str(files / "reference.png"), num_inference_steps=STEPS,
                    guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(5)).images[0]
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(result).convert("RGB")), np.asarray(expected))
