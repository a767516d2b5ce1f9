"""The web app's handler, examples and command line, in process (no server, no browser)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from mimicbrush.errors import InputError

pytest.importorskip("gradio", reason="the app extra (gradio) is not installed: pip install -e '.[app]'")

from mimicbrush.app import EditRequest, EditService  # noqa: E402
from mimicbrush.examples import bundled_examples  # noqa: E402
from mimicbrush.app.service import box_mask, mask_from_layers  # noqa: E402
from tiny_models import tiny_pipeline  # noqa: E402

FEATHER = 10  # imaging.feather_mask: no blend farther than this from the mask


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return EditService(tiny_pipeline(), model_label="tiny", max_side=512,
                       output_dir=tmp_path_factory.mktemp("app-results"))


def photo(width=96, height=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_request(**changes):
    source = photo()
    fields = dict(source=source, mask=box_mask("30,20,60,44", (96, 64)), reference=photo(48, 48, seed=1),
                  steps=2, seed=3)
    fields.update(changes)
    return EditRequest(**fields)


def test_examples_exist_offline_and_fit_their_sources(tmp_path):
    from mimicbrush.app.demo_examples import write_examples

    examples = bundled_examples()
    assert len(examples) >= 3
    assert any(e.keep_shape for e in examples) and any(not e.keep_shape for e in examples)
    for example in examples:
        assert example.source.dtype == np.uint8 and example.source.ndim == 3 and example.source.shape[2] == 3
        assert example.reference.dtype == np.uint8 and example.reference.shape[2] == 3
        assert example.mask.shape == example.source.shape[:2] and 0.005 < (example.mask > 128).mean() < 0.6
    rows, labels = write_examples(tmp_path)
    assert len(rows) == len(labels) == len(examples)
    assert all(PIL.Image.open(row[2]).size == PIL.Image.open(row[0]).size for row in rows)


def test_an_example_click_replaces_everything_and_clears_strokes(tmp_path):
    from mimicbrush.app.demo_examples import write_examples
    from mimicbrush.app.ui import example_values

    rows, _ = write_examples(tmp_path)
    for row in rows:
        source, box, mask_path, reference, reference_box, keep, zoom = example_values(row)
        assert source == {"background": row[0], "layers": [], "composite": row[0]}  # no strokes survive
        assert reference == {"background": row[3], "layers": [], "composite": row[3]}
        assert (box, mask_path, reference_box, keep, zoom) == ("", row[2], "", row[4], False)


def test_painted_layers_become_the_mask():
    layer = np.zeros((64, 96, 4), np.uint8)
    layer[10:20, 30:50] = (255, 0, 0, 255)
    mask = mask_from_layers([layer], (96, 64))
    assert mask.sum() == 200 and mask[10:20, 30:50].all()
    small = np.asarray(PIL.Image.fromarray(layer).resize((48, 32), PIL.Image.NEAREST))
    assert mask_from_layers([small], (96, 64))[15, 40]  # the canvas's size, the source's aspect ratio
    assert mask_from_layers([np.zeros((64, 96, 4), np.uint8)], (96, 64)) is None
    assert mask_from_layers([], (96, 64)) is None
    with pytest.raises(InputError, match="Paint the mask again"):
        mask_from_layers([np.full((50, 50, 4), 255, np.uint8)], (96, 64))


def test_edit_changes_only_the_neighbourhood_of_the_mask(service):
    steps = []
    result = service.run(box_request(), on_step=lambda done, total: steps.append((done, total)))
    source = photo()
    edited = np.asarray(result.image)
    assert edited.shape == source.shape
    changed = np.abs(edited.astype(int) - source).sum(axis=2) > 0
    near = np.zeros_like(changed)
    near[20 - FEATHER : 44 + FEATHER, 30 - FEATHER : 60 + FEATHER] = True
    assert changed[20:44, 30:60].mean() > 0.5
    assert not changed[~near].any()
    assert steps == [(0, 2), (1, 2), (2, 2)]  # one tick per denoising step
    saved = PIL.Image.open(result.path)
    assert saved.size == (96, 64) and np.array_equal(np.asarray(saved.convert("RGB")), edited)
    assert saved.text["seed"] == "3" and saved.text["steps"] == "2"
    assert result.overlay.size == (96, 64) and result.depth is None


def test_same_seed_same_edit_and_random_seed_reported(service):
    first = service.run(box_request())
    second = service.run(box_request())
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    random = service.run(box_request(seed=None))
    assert 0 <= random.seed < 2**31 and f"seed {random.seed}" in random.summary()


def test_keep_shape_gives_a_depth_preview_and_zoom_ticks_per_region(service):
    result = service.run(box_request(keep_shape=True))
    assert result.depth is not None and result.depth.size == (96, 64)
    source = photo(256, 256)
    mask = box_mask("20,20,36,36", (256, 256)) | box_mask("200,200,216,216", (256, 256))
    ticks = []
    zoomed = service.run(box_request(source=source, mask=mask, zoom="auto"), on_step=lambda d, t: ticks.append(t))
    assert set(ticks) == {4}  # two zoomed regions × 2 steps
    assert any("zoomed on" in note for note in zoomed.notes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(source=None), "Upload a source image"),
        (dict(mask=None), "The mask is empty"),
        (dict(mask=np.zeros((64, 96), bool)), "The mask is empty"),
        (dict(reference=None), "Upload a reference image"),
        (dict(source=photo(600, 40)), "over this app's limit of 512 px"),
        (dict(reference_box="0,0,500,10"), "outside"),
        (dict(steps=0), "steps must be"),
        (dict(guidance=float("nan")), "guidance must be"),
    ],
)
def test_clear_messages(service, changes, message):
    with pytest.raises(InputError, match=message):
        service.run(box_request(**changes))


def test_scheduler_is_used_ticks_per_unet_call_and_is_stored(service):
    ticks = []
    result = service.run(box_request(scheduler="heun"), on_step=lambda done, total: ticks.append((done, total)))
    assert ticks == [(0, 3), (1, 3), (2, 3), (3, 3)]  # heun: 2 steps are 3 U-Net calls
    assert result.settings["scheduler"] == "heun" and "heun steps" in result.summary()
    assert PIL.Image.open(result.path).text["scheduler"] == "heun"
    default = service.run(box_request())
    assert default.settings["scheduler"] == "ddim"
    assert not np.array_equal(np.asarray(default.image), np.asarray(result.image))


def test_only_the_schedulers_the_model_supports_are_offered(tmp_path):
    from mimicbrush import samplers
    from mimicbrush.app import build_app
    from mimicbrush.scheduling import release_scheduler

    pipe = tiny_pipeline()
    pipe.scheduler = release_scheduler("sample")
    pipe.model_prediction_type = "sample"  # as loading a clean-image predictor sets it
    service = EditService(pipe, model_label="sample", max_side=512, output_dir=tmp_path)
    assert service.schedulers == [name for name in samplers.SAMPLERS if name != "euler-a"]
    with pytest.raises(InputError, match="scheduler must be one of ddim, .*heun with this model, got 'euler-a'"):
        service.run(box_request(scheduler="euler-a"))
    demo = build_app(service, with_examples=False)
    dropdowns = [component for component in demo.config["components"]
                 if component.get("props", {}).get("elem_id") == "scheduler"]
    assert len(dropdowns) == 1
    offered = [choice[1] if isinstance(choice, (list, tuple)) else choice
               for choice in dropdowns[0]["props"]["choices"]]
    assert offered == service.schedulers


def test_reference_hint_is_used(service):
    result = service.run(box_request(reference_box="0,0,24,24"))
    assert result.settings["reference_box"] == "0,0,24,24"
    assert any("reference: cropped to" in note for note in result.notes)


def test_model_loads_once(monkeypatch, tmp_path):
    import mimicbrush.loading as loading

    calls = []

    def fake_load(model, **kwargs):
        calls.append(model)
        return tiny_pipeline()

    monkeypatch.setattr(loading, "load_pipeline", fake_load)
    service = EditService.load("some-model", output_dir=tmp_path)
    service.run(box_request())
    service.run(box_request(seed=4))
    assert calls == ["some-model"]


def test_app_exposes_only_the_documented_api(service, tmp_path):
    from mimicbrush.app import build_app

    demo = build_app(service, examples_dir=tmp_path / "examples")
    public = {dep["api_name"] for dep in demo.config["dependencies"] if dep.get("api_visibility") == "public"}
    assert public == {"edit", "info"}
    assert len(list((tmp_path / "examples").glob("*.png"))) >= 6


def test_cli_defaults_to_loopback_and_refuses_bad_ports(capsys):
    from mimicbrush.cli import build_parser, main

    args = build_parser().parse_args(["app", "--model", "x"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    assert main(["app", "--model", "x", "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err


def test_a_service_without_an_output_folder_writes_no_file(monkeypatch, tmp_path):
    """The service writes the result PNG only where its caller says (ComfyUI writes its own
    outputs; the web app gives the service a temporary folder)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a stray temp file would land
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)  # Gradio's cache: the temp dir's gradio/
    service = EditService(tiny_pipeline(), model_label="tiny", max_side=512)
    result = service.run(box_request())
    assert result.path is None and result.image.size == (96, 64)
    assert list(tmp_path.iterdir()) == []
    from mimicbrush.app import build_app

    # the app chooses a temporary folder for its downloads, inside Gradio's cache (served from
    # there, not copied into it)
    build_app(service, with_examples=False)
    assert service.output_dir is not None and service.output_dir.parent == (tmp_path / "gradio").resolve()
