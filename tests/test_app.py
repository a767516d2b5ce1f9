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


# ---------------------------------------------------------------------------------------------
# Result files (results.py)


def test_result_files_keep_the_newest_per_session_and_in_all_and_go_with_their_session(tmp_path):
    from mimicbrush.app.results import ResultFiles

    def result(name):
        path = tmp_path / f"{name}.png"
        path.write_bytes(b"png")
        return path

    files = ResultFiles(per_session=2, in_all=3)
    files.keep("a", result("a1"))
    files.keep("a", result("a2"))
    assert files.keep("a", result("a3")) == [tmp_path / "a1.png"]  # a's oldest
    files.keep("b", result("b1"))
    assert files.keep("c", result("c1")) == [tmp_path / "a2.png"]  # the oldest of all, whoever's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a3.png", "b1.png", "c1.png"]
    assert files.end_session("a") == [tmp_path / "a3.png"] and files.end_session("a") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b1.png", "c1.png"]
    (tmp_path / "b1.png").unlink()  # Gradio's own sweep got there first: not an error
    assert files.end_session("b") == [tmp_path / "b1.png"]
    assert files.files() == [tmp_path / "c1.png"]


def test_history_drops_files_that_are_gone(tmp_path):
    from mimicbrush.app.ui import HISTORY_LIMIT, updated_history

    kept, gone = tmp_path / "kept.png", tmp_path / "gone.png"
    kept.write_bytes(b"png")
    history = updated_history([(str(gone), "old"), (str(kept), "older")], "new.png", "newest")
    assert history == [("new.png", "newest"), (str(kept), "older")]
    full = [(str(kept), str(i)) for i in range(HISTORY_LIMIT)]
    assert len(updated_history(full, "new.png", "newest")) == HISTORY_LIMIT


# ---------------------------------------------------------------------------------------------
# Logins (accounts.py, mimicbrush app --auth / --auth-file / --no-auth)


def test_auth_file_lines_comments_and_passwords_with_colons(tmp_path):
    from mimicbrush.app.accounts import collect_accounts

    logins = tmp_path / "logins"
    logins.write_bytes("\ufeff# studio logins\n\nalice:s3cret:with:colons\n  bob : p#ss word \n".encode())
    assert collect_accounts(["carol:pw"], logins) == [
        ("alice", "s3cret:with:colons"), ("bob", "p#ss word"), ("carol", "pw")]


@pytest.mark.parametrize(
    ("content", "auth", "message"),
    [
        (b"alice:ok\nhunter2\n", None, r"--auth-file \S+ line 2 is not user:password"),
        (b"# none\n\n", None, "holds no user:password line"),
        (b"alice:ok\n:hunter2\n", None, "line 2 has an empty user name"),
        (b"alice:\n", None, "line 1 has an empty password for user 'alice'"),
        (b"alice:ok\n\xffhunter2:x\n", None, "line 2 is not UTF-8"),
        (b"alice:hunter2\n", ["alice:other"], r"user 'alice' is given twice \(--auth-file \S+ line 1 and --auth\)"),
        (None, ["alice:a", "hunter2"], r"--auth #2 is not user:password"),
        (None, ["alice:a", "alice:hunter2"], r"given twice \(--auth #1 and --auth #2\)"),
    ],
)
def test_bad_logins_are_refused_naming_the_line_never_the_password(tmp_path, content, auth, message):
    from mimicbrush.app.accounts import collect_accounts

    path = None
    if content is not None:
        path = tmp_path / "logins"
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as refused:
        collect_accounts(auth, path)
    assert "hunter2" not in str(refused.value)


def test_a_missing_auth_file_is_named(tmp_path):
    from mimicbrush.app.accounts import collect_accounts

    with pytest.raises(InputError, match=f"--auth-file {tmp_path / 'nope'}: no such file"):
        collect_accounts(None, tmp_path / "nope")
    with pytest.raises(InputError, match="is a folder"):
        collect_accounts(None, tmp_path)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def launched(monkeypatch):
    """Runs `mimicbrush app` with the tiny model up to Gradio's launch, which is recorded instead
    of serving: [(demo, launch's keyword arguments)]. (What launch passes to Gradio comes from
    the demo: its `mimicbrush_auth`.)"""
    import mimicbrush.app as app

    calls = []
    monkeypatch.setattr(app.EditService, "load", classmethod(
        lambda cls, model, **kwargs: cls(tiny_pipeline(), model_label=str(model), max_side=kwargs["max_side"])))
    monkeypatch.setattr(app, "launch", lambda demo, **kwargs: calls.append((demo, kwargs)))
    return calls


def test_a_network_host_needs_a_login_or_no_auth(launched, capsys, tmp_path):
    from mimicbrush.cli import main

    port = str(free_port())
    assert main(["app", "--model", "x", "--host", "0.0.0.0", "--port", port]) == 2
    error = capsys.readouterr().err
    assert "--host 0.0.0.0 serves the app to other machines" in error and "--no-auth" in error
    assert main(["app", "--host", "0.0.0.0", "--port", port, "--no-auth", "--auth", "a:b"]) == 2
    assert "contradicts" in capsys.readouterr().err
    assert launched == []  # refused before anything loaded

    assert main(["app", "--model", "x", "--host", "0.0.0.0", "--port", port, "--no-auth", "--max-queue", "3",
                 "--no-examples"]) == 0
    demo, _ = launched[-1]
    assert demo.mimicbrush_auth is None and demo._queue.max_size == 3
    assert not any(c.get("props", {}).get("elem_id") == "logout" for c in demo.config["components"])
    assert "notice: serving on 0.0.0.0: anyone who can reach this machine can use the app" in capsys.readouterr().err


def test_logins_reach_gradio_and_the_start_line_says_so_without_passwords(launched, capsys, tmp_path):
    from mimicbrush.cli import main

    logins = tmp_path / "logins"
    logins.write_text("alice:hunter2\n")
    logins.chmod(0o644)
    assert main(["app", "--model", "x", "--host", "0.0.0.0", "--port", str(free_port()), "--auth-file", str(logins),
                 "--auth", "bob:swordfish", "--no-examples"]) == 0
    demo, _ = launched[-1]
    assert demo.mimicbrush_auth == [("alice", "hunter2"), ("bob", "swordfish")] and demo._queue.max_size == 64
    assert any(c.get("props", {}).get("elem_id") == "logout" for c in demo.config["components"])
    output = capsys.readouterr()
    assert "hunter2" not in output.err + output.out and "swordfish" not in output.err + output.out
    assert f"notice: --auth-file {logins} can be read by other users of this machine (chmod 600 it)" in output.err
    assert ("notice: serving on 0.0.0.0 with a login for the page and the API, 2 users (alice, bob): "
            "anyone who can reach this machine gets the login page") in output.err
