"""The ComfyUI nodes without ComfyUI: called as ComfyUI calls them, on tensors laid out as its
LoadImage / LoadImageMask lay them out, they give exactly `mimicbrush edit`'s pixels.

The loaders below are written from ComfyUI's documented behaviour, not with our imaging module
(or the comparison would pass by construction): LoadImage gives IMAGE [1,H,W,3] = RGB / 255 and
MASK [1,H,W] = 1 − alpha / 255 (no alpha: an empty mask, 64×64 upstream); LoadImageMask gives
MASK [1,H,W] = channel / 255 (alpha inverted). The comfy modules the nodes use (progress bar,
interrupt) are faked through sys.modules.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch

from mimicbrush import loading
from mimicbrush.cli import main as cli_main
from mimicbrush.comfyui import NODE_CLASS_MAPPINGS
from mimicbrush.comfyui.model import BUNDLED
from mimicbrush.errors import InputError
from mimicbrush.examples import bundled_examples

STEPS = 2


# --- ComfyUI's loaders, as ComfyUI documents them ----------------------------------------------


def comfy_load_image(path):
    """(IMAGE, MASK) as ComfyUI's LoadImage returns them for a single-frame file."""
    with PIL.Image.open(path) as opened:
        frame = PIL.ImageOps.exif_transpose(opened)
        rgb = np.array(frame.convert("RGB"), dtype=np.float32) / 255.0
        if "A" in frame.getbands():
            mask = 1.0 - np.array(frame.getchannel("A"), dtype=np.float32) / 255.0
        else:
            mask = np.zeros((64, 64), np.float32)
    return torch.from_numpy(rgb)[None], torch.from_numpy(mask)[None]


def comfy_load_image_mask(path, channel="red"):
    """MASK as ComfyUI's LoadImageMask returns it."""
    with PIL.Image.open(path) as opened:
        image = PIL.ImageOps.exif_transpose(opened)
        if image.getbands() != ("R", "G", "B", "A"):
            image = image.convert("RGBA")
        values = np.array(image.getchannel(channel[0].upper()), dtype=np.float32) / 255.0
    if channel == "alpha":
        values = 1.0 - values
    return torch.from_numpy(values)[None]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    """The bundled model, loaded by the Load node (its own pipeline, not the CLI's)."""
    (loaded,) = NODE_CLASS_MAPPINGS["MimicBrushLoad"]().load(BUNDLED)
    return loaded


@pytest.fixture(scope="module", autouse=True)
def cli_loads_once():
    """`mimicbrush edit` runs in process; its model loads once for the module, not per call."""
    pipe = loading.load_pipeline(None, device="cpu")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading, "load_pipeline", lambda *args, **kwargs: pipe)
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The bundled examples as the PNG files a ComfyUI user would load (masks black and white)."""
    folder = tmp_path_factory.mktemp("examples")
    written = {}
    for example in bundled_examples()[1:3]:  # one part composition, one texture transfer
        paths = {kind: folder / f"{example.name}-{kind}.png" for kind in ("source", "mask", "reference")}
        PIL.Image.fromarray(example.source).save(paths["source"])
        PIL.Image.fromarray(example.mask).convert("RGB").save(paths["mask"])
        PIL.Image.fromarray(example.reference).save(paths["reference"])
        written[example.name] = (paths, example.keep_shape)
    return written


@pytest.fixture
def fake_comfy(monkeypatch):
    """comfy.utils.ProgressBar and comfy.model_management's interrupt, recorded."""
    state = types.SimpleNamespace(ticks=[], totals=[], interrupt_after=None, checks=0)

    class ProgressBar:
        def __init__(self, total):
            state.totals.append(total)

        def update(self, value):
            state.ticks.append(value)

    class InterruptProcessingException(Exception):
        pass

    def throw_exception_if_processing_interrupted():
        state.checks += 1
        if state.interrupt_after is not None and len(state.ticks) >= state.interrupt_after:
            state.interrupt_after = None  # ComfyUI clears the flag when it raises
            raise InterruptProcessingException()

    comfy = types.ModuleType("comfy")
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    management = types.ModuleType("comfy.model_management")
    management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    management.InterruptProcessingException = InterruptProcessingException
    comfy.utils, comfy.model_management = utils, management
    for name, module in (("comfy", comfy), ("comfy.utils", utils), ("comfy.model_management", management)):
        monkeypatch.setitem(sys.modules, name, module)
    return state


def node_edit(model, source, mask, reference, **options):
    settings = dict(keep_shape=False, steps=STEPS, scheduler="ddim", guidance=5.0, seed=7, zoom="off", faithful=False)
    settings.update(options)
    with torch.inference_mode():  # as ComfyUI runs every node
        image, depth = NODE_CLASS_MAPPINGS["MimicBrushEdit"]().edit(model, source, mask, reference, **settings)
    assert image.dtype == torch.float32 and image.shape[-1] == 3 and depth.shape == image.shape
    return image, depth


def pixels(image_batch) -> np.ndarray:
    return np.round(image_batch.numpy() * 255).astype(np.uint8)


def cli_edit(tmp_path, source, mask, reference, *extra, seed=7):
    out = tmp_path / f"cli-{len(list(tmp_path.iterdir()))}.png"
    args = ["edit", str(source), "--mask", str(mask), "--reference", str(reference), "-o", str(out),
            "--steps", str(STEPS), "--seed", str(seed), "--device", "cpu", *extra]
    assert cli_main(args) == 0
    return np.asarray(PIL.Image.open(out).convert("RGB"))


# --- tests ---------------------------------------------------------------------------------------


def test_examples_equal_mimicbrush_edit(model, files, tmp_path):
    for name, (paths, keep_shape) in files.items():
        source, _ = comfy_load_image(paths["source"])
        mask = comfy_load_image_mask(paths["mask"], "red")
        reference, _ = comfy_load_image(paths["reference"])
        image, depth = node_edit(model, source, mask, reference, keep_shape=keep_shape)
        extra = ["--keep-shape", "--depth-out", str(tmp_path / f"{name}-depth.png")] if keep_shape else []
        expected = cli_edit(tmp_path, paths["source"], paths["mask"], paths["reference"], *extra)
        np.testing.assert_array_equal(pixels(image)[0], expected, err_msg=name)
        if keep_shape:
            expected_depth = np.asarray(PIL.Image.open(tmp_path / f"{name}-depth.png").convert("RGB"))
            np.testing.assert_array_equal(pixels(depth)[0], expected_depth)
        else:
            assert not depth.any()  # no depth map is used without keep_shape: black


def test_a_batch_is_edited_one_by_one_with_one_mask(model, files):
    paths, _ = files["motorcycle-tank"]
    source, _ = comfy_load_image(paths["source"])
    mask = comfy_load_image_mask(paths["mask"])
    reference, _ = comfy_load_image(paths["reference"])
    single, _ = node_edit(model, source, mask, reference)
    flipped = torch.flip(source, dims=[2])
    single_flipped, _ = node_edit(model, flipped, torch.flip(mask, dims=[2]), reference)
    batch, _ = node_edit(model, torch.cat([source, flipped]), torch.cat([mask, torch.flip(mask, dims=[2])]), reference)
    assert torch.equal(batch[0], single[0]) and torch.equal(batch[1], single_flipped[0])
    shared, _ = node_edit(model, torch.cat([source, source]), mask, reference)  # a mask batch of 1: for all
    assert torch.equal(shared[0], single[0]) and torch.equal(shared[1], single[0])
    with pytest.raises(InputError, match="the mask batch has 2 entries for 3 sources"):
        node_edit(model, torch.cat([source] * 3), torch.cat([mask, mask]), reference)


def test_masks_of_another_size_follow_the_command_line(model, files, tmp_path):
    paths, _ = files["motorcycle-tank"]
    source, _ = comfy_load_image(paths["source"])
    reference, _ = comfy_load_image(paths["reference"])
    small = tmp_path / "half-mask.png"
    with PIL.Image.open(paths["mask"]) as mask:
        mask.resize((mask.width // 2, mask.height // 2), PIL.Image.NEAREST).save(small)
    image, _ = node_edit(model, source, comfy_load_image_mask(small), reference)  # resized, same aspect
    np.testing.assert_array_equal(pixels(image)[0], cli_edit(tmp_path, paths["source"], small, paths["reference"]))
    with pytest.raises(InputError, match="another aspect ratio"):
        node_edit(model, source, torch.ones(1, 100, 100), reference)


def test_empty_and_no_alpha_masks_name_load_image_mask(model, files):
    paths, _ = files["motorcycle-tank"]
    source, no_alpha_mask = comfy_load_image(paths["source"])  # LoadImage's mask of an RGB file
    reference, _ = comfy_load_image(paths["reference"])
    assert no_alpha_mask.shape == (1, 64, 64) and not no_alpha_mask.any()
    for mask in (no_alpha_mask, torch.zeros(1, *source.shape[1:3])):
        with pytest.raises(InputError, match="the mask is empty.*LoadImageMask \\(channel: red\\)") as raised:
            node_edit(model, source, mask, reference)
        assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_progress_ticks_once_per_unet_call_and_stop_is_honoured(model, files, fake_comfy):
    paths, _ = files["motorcycle-tank"]
    source, _ = comfy_load_image(paths["source"])
    mask = comfy_load_image_mask(paths["mask"])
    reference, _ = comfy_load_image(paths["reference"])
    node_edit(model, source, mask, reference, scheduler="heun", steps=3)
    assert fake_comfy.totals == [5] and len(fake_comfy.ticks) == 5  # heun: 2N−1 U-Net calls

    fake_comfy.ticks.clear(), fake_comfy.totals.clear()
    expected, _ = node_edit(model, source, mask, reference, steps=6)
    fake_comfy.ticks.clear(), fake_comfy.totals.clear()
    fake_comfy.interrupt_after = 2  # Stop pressed during the second U-Net call
    interrupt = sys.modules["comfy.model_management"].InterruptProcessingException
    with pytest.raises(interrupt):
        node_edit(model, source, mask, reference, steps=6)
    assert len(fake_comfy.ticks) == 2 and fake_comfy.totals == [6]  # stopped right after that call
    again, _ = node_edit(model, source, mask, reference, steps=6)  # the model still works, unchanged
    assert torch.equal(again, expected)


def test_zoomed_edits_count_every_region(model, fake_comfy):
    source = torch.rand(1, 256, 256, 3)
    mask = torch.zeros(1, 256, 256)
    mask[:, 20:36, 20:36] = 1  # two small regions far apart: one zoomed call each
    mask[:, 200:216, 200:216] = 1
    node_edit(model, source, mask, torch.rand(1, 64, 64, 3), zoom="auto")
    assert fake_comfy.totals == [2 * STEPS] and len(fake_comfy.ticks) == 2 * STEPS


def test_seed_range_scheduler_and_hints(model, files, tmp_path):
    paths, _ = files["motorcycle-tank"]
    source, _ = comfy_load_image(paths["source"])
    mask = comfy_load_image_mask(paths["mask"])
    reference, _ = comfy_load_image(paths["reference"])
    top = 2**64 - 1  # ComfyUI's seed widget maximum: the same generator seed as --seed
    image, _ = node_edit(model, source, mask, reference, seed=top)
    np.testing.assert_array_equal(pixels(image)[0], cli_edit(tmp_path, paths["source"], paths["mask"],
                                                             paths["reference"], seed=top))
    with pytest.raises(InputError, match="euler-a does not support prediction type 'sample'"):
        node_edit(model, source, mask, reference, scheduler="euler-a")  # the bundled model predicts the image
    hinted, _ = node_edit(model, source, mask, reference, reference_box="300,100,520,280")
    np.testing.assert_array_equal(pixels(hinted)[0], cli_edit(
        tmp_path, paths["source"], paths["mask"], paths["reference"], "--reference-box", "300,100,520,280"))
    two, _ = node_edit(model, source, mask, torch.cat([reference, torch.flip(reference, dims=[2])]))
    flipped = tmp_path / "flipped.png"
    PIL.Image.open(paths["reference"]).transpose(PIL.Image.FLIP_LEFT_RIGHT).save(flipped)
    np.testing.assert_array_equal(pixels(two)[0], cli_edit(
        tmp_path, paths["source"], paths["mask"], paths["reference"], "--reference", str(flipped)))
    with pytest.raises(InputError, match="give a box or a mask, not both"):
        node_edit(model, source, mask, reference, reference_box="0,0,9,9", reference_mask=torch.ones(1, 9, 9))


def test_import_does_no_work():
    """Importing the pack loads no model, downloads nothing and needs neither ComfyUI nor Gradio."""
    import subprocess

    code = ("import sys, mimicbrush.comfyui as pack; "
            "assert 'gradio' not in sys.modules and 'huggingface_hub' not in sys.modules "
            "and 'diffusers' not in sys.modules and 'comfy' not in sys.modules, sorted(sys.modules); "
            "print(sorted(pack.NODE_CLASS_MAPPINGS))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['MimicBrushEdit', 'MimicBrushLoad']"


def test_tensors_from_other_nodes_are_rounded_to_8_bits():
    from mimicbrush.comfyui import tensors

    values = torch.tensor([0.0, 100.4, 100.6, 254.5, 255.0, 300.0]) / 255  # not k/255, as a blur makes
    (frame,) = tensors.images(values.reshape(1, 1, 6, 1), "source")
    assert frame[0, :, 0].tolist() == [0, 100, 101, 254, 255, 255] and frame.shape == (1, 6, 3)


def test_committed_workflows_are_the_generated_ones(tmp_path):
    """comfyui/workflows/ is what mimicbrush.comfyui.workflows writes (regenerate with
    `python -m mimicbrush.comfyui.workflows INPUT_DIR --workflows comfyui/workflows`)."""
    from pathlib import Path

    from mimicbrush.comfyui.workflows import write_workflows

    committed = Path(__file__).resolve().parents[1] / "comfyui" / "workflows"
    written = write_workflows(tmp_path)
    assert sorted(path.name for path in written) == sorted(path.name for path in committed.glob("*.json"))
    for path in written:
        assert path.read_text() == (committed / path.name).read_text(), path.name
    api = json.loads((committed / "coffee-brick.api.json").read_text())
    assert api["2"] == {"class_type": "LoadImageMask", "inputs": {"image": "mimicbrush-coffee-brick-mask.png",
                                                                  "channel": "red"}}
    assert api["5"]["inputs"]["keep_shape"] is True and api["7"]["inputs"]["images"] == ["5", 1]


def test_models_folder_and_hub_downloads_stay_in_comfyuis_models(tmp_path, monkeypatch):
    """Model folders are listed from models/mimicbrush/ (through folder_paths); a hub id is
    downloaded into models/mimicbrush/hub/ with cache_dir, never into the user's HF cache."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from mimicbrush.comfyui.model import RELEASE_HUB_ID, model_choices
    from mimicbrush.errors import WeightsError

    registered: dict[str, list[str]] = {}
    paths = types.ModuleType("folder_paths")  # upstream ComfyUI's module name
    paths.models_dir = str(tmp_path / "models")

    def get_folder_paths(name):
        return registered[name]

    def add_model_folder_path(name, path, is_default=False):
        registered.setdefault(name, []).append(path)

    paths.get_folder_paths, paths.add_model_folder_path = get_folder_paths, add_model_folder_path
    monkeypatch.setitem(sys.modules, "folder_paths", paths)
    monkeypatch.setitem(sys.modules, "comfy.cmd.folder_paths", None)  # not the fork
    ours = tmp_path / "models" / "mimicbrush" / "my-converted-model"
    ours.mkdir(parents=True)
    (ours / "model_index.json").write_text("{}")
    (tmp_path / "models" / "mimicbrush" / "notes").mkdir()  # not a model: not listed
    assert model_choices() == [BUNDLED, "my-converted-model", RELEASE_HUB_ID]

    asked = []

    def offline_snapshot_download(repo_id, **kwargs):
        asked.append((repo_id, kwargs.get("cache_dir"), kwargs.get("local_dir")))
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline_snapshot_download)
    with pytest.raises(WeightsError, match="cannot download 'someone/their-model': no connection") as raised:
        NODE_CLASS_MAPPINGS["MimicBrushLoad"]().load(BUNDLED, hub_id="someone/their-model")
    assert raised.value.__cause__ is None
    assert asked == [("someone/their-model", tmp_path / "models" / "mimicbrush" / "hub", None)]
