"""The web app as users meet it: `mimicbrush app` on a free port, driven through gradio_client and
through Debian's Chromium (Playwright, headless). Screenshots go to $MIMICBRUSH_ARTIFACTS (default:
a mimicbrush-artifacts folder in the temp dir) for CI to keep."""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from benchmark_scripts import load_benchmark

pytest.importorskip("gradio", reason="the app extra (gradio) is not installed: pip install -e '.[app]'")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed (the test extra)")

pytestmark = pytest.mark.slow

FEATHER = 10  # imaging.feather_mask: no blend farther than this from the mask
CHROMIUM = os.environ.get("MIMICBRUSH_CHROMIUM", "/usr/bin/chromium")


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("MIMICBRUSH_ARTIFACTS") or Path(tempfile.gettempdir()) / "mimicbrush-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def demo_model() -> str:
    """The model the app serves here: the bundled demo model."""
    from mimicbrush.loading import default_model

    return str(default_model())


LOGIN = ("alice", "correct horse battery staple")  # from --auth-file; "bob" comes from --auth


@pytest.fixture(scope="module")
def load():
    """benchmarks/load.py: the same server and load code the documented figures come from."""
    return load_benchmark("load")


@pytest.fixture(scope="module")
def app(demo_model, load, tmp_path_factory):
    """`mimicbrush app` with logins (a file and an option), on a free port."""
    folder = tmp_path_factory.mktemp("app")
    logins = folder / "logins"
    logins.write_text(f"# the test's logins\n{LOGIN[0]}:{LOGIN[1]}\n")
    logins.chmod(0o600)
    options = ["--model", demo_model, "--auth-file", str(logins), "--auth", "bob:another password"]
    # MIMICBRUSH_DEBUG: tracebacks in the log; a 2-second heartbeat: a closed client's session
    # (and its result files) ends within seconds instead of Gradio's 15
    env = {"MIMICBRUSH_DEBUG": "1", "GRADIO_HEARTBEAT_INTERVAL": "2"}
    try:
        with load.serve(options, folder / "gradio", folder / "app.log", auth=LOGIN, env=env) as running:
            yield running
    except RuntimeError as error:  # it did not start: the log says why
        pytest.fail(str(error))
    # stopped with SIGTERM, as a service manager does: the results folder went with it
    assert not list((folder / "gradio").glob("mimicbrush-results-*")), (folder / "app.log").read_text()[-2000:]


@pytest.fixture(scope="module")
def app_url(app):
    return app.url


def photo(path: Path, width: int, height: int, seed: int) -> Path:
    """A smooth random picture (so a re-encoding would show), saved as PNG."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    PIL.Image.fromarray(small).resize((width, height), PIL.Image.BICUBIC).save(path)
    return path


def pixels(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path).convert("RGB")).astype(int)


def changed_outside(result: np.ndarray, source: np.ndarray, box: tuple[int, int, int, int], margin: int) -> int:
    """How many pixels differ from the source farther than `margin` from `box`."""
    x0, y0, x1, y1 = box
    changed = np.abs(result - source).sum(axis=2) > 0
    changed[max(y0 - margin, 0) : y1 + margin, max(x0 - margin, 0) : x1 + margin] = False
    return int(changed.sum())


# ---------------------------------------------------------------------------------------------
# API (gradio_client)


def edit(client, source, reference, box, seed, **options):
    handle = gradio_client.handle_file
    return client.predict(
        source=handle(str(source)), mask=None, box=box, reference=handle(str(reference)),
        reference_box=options.pop("reference_box", ""), keep_shape=options.pop("keep_shape", False),
        zoom="off", steps=2, guidance=5.0, seed=seed, api_name="/edit",
    )


def test_api_edit_matches_the_pipeline(app_url, demo_model, tmp_path):
    import torch

    from mimicbrush.loading import load_pipeline

    source = photo(tmp_path / "source.png", 120, 80, seed=0)
    reference = photo(tmp_path / "reference.png", 64, 64, seed=1)
    client = gradio_client.Client(app_url, auth=LOGIN, verbose=False)
    assert client.predict(api_name="/info")["max_side"] == 4096
    result, depth, overlay, info = edit(client, source, reference, "40,20,80,60", seed=5, keep_shape=True)
    assert info["seed"] == 5 and info["size"] == [120, 80] and depth is not None and overlay is not None

    pipe = load_pipeline(demo_model)
    expected = pipe(str(source), "40,20,80,60", str(reference), keep_shape=True, num_inference_steps=2,
                    guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(5)).images[0]
    assert np.array_equal(pixels(result), np.asarray(expected).astype(int))  # full resolution, lossless
    assert changed_outside(pixels(result), pixels(source), (40, 20, 80, 60), FEATHER) == 0


def test_ten_users_at_once_lose_nothing_and_get_what_they_would_alone(app, load, tmp_path):
    """The issue's check, kept: 10 gradio_client users of 3 edits each at once (one Client each,
    2 steps, 80–120 px photos on the bundled 64² model), then the same 30 edits one at a time
    through one more Client: no job lost, every result bit-identical to the one made alone, the
    app's memory flat, and its result files bounded (each session keeps its newest 24, and they
    go when it ends)."""
    from mimicbrush.app.results import PER_SESSION

    users, each = 10, 3
    requests = load.make_requests(tmp_path, users * each, first_seed=1000, steps=2)
    report = load.concurrent_users(app, requests, users)
    assert report["lost"] == 0, report["lost_detail"]
    assert report["differ_from_alone"] == 0
    # measured 26 MB under this load and 19 MB over the 30 edits after it (the issue); bounds
    # with room for a shared machine, tight enough to catch a leak of a result per edit
    assert report["rss_growth_under_load_mb"] <= 100, report["rss_mb"]
    assert report["rss_growth_over_repeat_mb"] <= 50, report["rss_mb"]
    assert report["result_files_after_load"] == users * each  # 3 per session, all kept
    assert report["result_files_after_repeat"] == users * each + PER_SESSION  # the repeat's newest 24
    assert report["result_files_after_close"] == 0  # every session ended, every file gone


@pytest.mark.parametrize(
    ("box", "use_reference", "message"),
    [("", True, "mask is empty"), ("10,10,30,30", False, "Upload a reference image")],
)
def test_api_errors_are_clear(app_url, tmp_path, box, use_reference, message):
    source = photo(tmp_path / "source.png", 64, 64, seed=0)
    client = gradio_client.Client(app_url, auth=LOGIN, verbose=False)
    handle = gradio_client.handle_file
    with pytest.raises(Exception, match=message):
        client.predict(source=handle(str(source)), mask=None, box=box,
                       reference=handle(str(source)) if use_reference else None, reference_box="",
                       keep_shape=False, zoom="off", steps=2, guidance=5.0, seed=1, api_name="/edit")


def test_the_api_needs_the_login(app, tmp_path):
    """The page's login guards the API too: no login or a wrong password is refused (by
    gradio_client and at every HTTP route that reads or runs anything), the right one edits."""
    with pytest.raises(gradio_client.exceptions.AuthenticationError, match="credentials were not provided"):
        gradio_client.Client(app.url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        gradio_client.Client(app.url, auth=(LOGIN[0], "not the password"), verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        gradio_client.Client(app.url, auth=("mallory", LOGIN[1]), verbose=False)

    client = gradio_client.Client(app.url, auth=("bob", "another password"), verbose=False)  # the --auth user
    source = photo(tmp_path / "source.png", 64, 48, seed=3)
    result, _, _, info = edit(client, source, source, "8,8,40,40", seed=4242)
    assert info["seed"] == 4242 and pixels(result).shape == (48, 64, 3)
    [kept] = [path for path in app.result_files() if path.name.startswith("mimicbrush-4242-")]

    def status(route: str, method: str = "GET", cookies: dict | None = None) -> int:
        request = urllib.request.Request(app.url.rstrip("/") + route, method=method, data=b"{}" if method == "POST" else None,
                                         headers={"Content-Type": "application/json"})
        if cookies:
            request.add_header("Cookie", "; ".join(f"{name}={value}" for name, value in cookies.items()))
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    file_route = f"/gradio_api/file={kept}"
    for route, method in [("/config", "GET"), ("/gradio_api/info", "GET"), ("/gradio_api/upload", "POST"),
                          ("/gradio_api/queue/join", "POST"), ("/gradio_api/call/edit", "POST"), (file_route, "GET")]:
        assert status(route, method) == 401, route
    assert status(file_route, cookies=client.cookies) == 200  # the same file, logged in
    client.close()


# ---------------------------------------------------------------------------------------------
# Browser (Playwright in Debian's Chromium)


def launch_chromium(playwright):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium with apt-get "
                    "(set MIMICBRUSH_CHROMIUM to another binary)")
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage",
              "--disable-component-update", "--no-first-run"],
    )


def log_in(page, user: str, password: str) -> None:
    """Fill in Gradio's login page and submit it."""
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()


@contextmanager
def browser_page(app_url: str, failure_shot: str, wrong_password_first: bool = False):
    """A Chromium page on the app, logged in as LOGIN (after a refused wrong password, if asked);
    on failure a full-page screenshot `failure_shot` goes to the artifacts folder."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1800}, accept_downloads=True)
        problems = []  # what the page logged as errors, and failed requests: printed on failure
        page.on("console", lambda message: problems.append(f"console: {message.text[:300]}")
                if message.type == "error" else None)
        page.on("response", lambda response: problems.append(f"{response.status} {response.url[:200]}")
                if response.status >= 400 else None)
        try:
            page.goto(app_url)
            if wrong_password_first:
                log_in(page, LOGIN[0], LOGIN[1] + "!")
                page.get_by_text("Incorrect Credentials").wait_for(timeout=30_000)
                assert page.locator("#run").count() == 0  # still the login page, nothing of the app
            log_in(page, *LOGIN)
            page.wait_for_selector("#run", timeout=60_000)
            yield page
        except Exception:
            page.screenshot(path=str(artifacts_dir() / failure_shot), full_page=True)
            print("the page's errors:", *problems, sep="\n  ")
            raise
        finally:
            browser.close()


def upload_to_editor(page, elem_id: str, path: Path) -> None:
    """Upload `path` into the image editor `elem_id` and wait until it shows it. The editor sets
    up its canvas after the page shows #run (about a second later here, after the login's reload),
    and a file given before that is never uploaded: so first wait for the canvas (without the wait,
    2 to 4 of 6 uploads right after a login were lost on this machine; with it, 8 of 8 landed)."""
    page.locator(f"#{elem_id} canvas").first.wait_for(state="attached", timeout=60_000)
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.locator(f"#{elem_id}").get_by_text("Upload an image").wait_for(state="hidden", timeout=30_000)
    page.wait_for_timeout(500)  # the editor sizes its canvas to the image


def assert_edited_only_near(result: np.ndarray, source: np.ndarray, box, margin: int) -> None:
    """Nothing changed farther than `margin` from `box`, and most of the box did change."""
    assert result.shape == source.shape  # full resolution
    assert changed_outside(result, source, box, margin) == 0
    x0, y0, x1, y1 = box
    assert (np.abs(result - source)[y0:y1, x0:x1].sum(axis=2) > 0).mean() > 0.3


def paint_stroke(page, size: tuple[int, int], stroke: list[tuple[int, int]]) -> None:
    """Drag the source editor's brush along `stroke` (image pixels), mapped to the screen through
    the editor's zoom (the image is centred on its canvas)."""
    width, height = size
    # the mouse works in viewport coordinates: a click lower down (Repaint, an example row) may have
    # scrolled the editor out of view, and a stroke off-screen paints nothing
    page.locator("#source").scroll_into_view_if_needed()
    zoom = float(page.locator("#source .zoom-number span").inner_text().strip().rstrip("%")) / 100
    canvas = page.locator("#source canvas").first.bounding_box()
    left = canvas["x"] + (canvas["width"] - width * zoom) / 2
    top = canvas["y"] + (canvas["height"] - height * zoom) / 2
    points = [(left + x * zoom, top + y * zoom) for x, y in stroke]
    viewport = page.viewport_size
    assert all(0 <= x < viewport["width"] and 0 <= y < viewport["height"] for x, y in points), (
        f"the stroke {stroke} falls off-screen at {points}"
    )
    page.mouse.move(*points[0])
    page.mouse.down()
    page.mouse.move(*points[1], steps=10)
    page.mouse.up()


def run_and_download(page, steps: int, seed: int, path: Path) -> Path:
    page.locator("#steps input[type=number]").fill(str(steps))
    page.locator("#steps input[type=number]").press("Enter")
    page.locator("#seed input").fill(str(seed))
    page.locator("#run").click()
    page.locator("#download").wait_for(state="visible", timeout=90_000)
    page.get_by_text(f"seed {seed}").first.wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    with page.expect_download() as download:
        page.locator("#download").click()
    download.value.save_as(path)
    return path


def test_browser_paint_run_download(app_url, tmp_path):
    width, height = 240, 160
    source = photo(tmp_path / "source.png", width, height, seed=2)
    reference = photo(tmp_path / "reference.png", 96, 96, seed=3)
    shots = artifacts_dir()
    with browser_page(app_url, "app-failure.png", wrong_password_first=True) as page:
        # an empty mask is refused with a clear message
        upload_to_editor(page, "source", source)
        page.locator("#run").click()
        page.get_by_text("The mask is empty").first.wait_for(timeout=30_000)

        stroke = [(90, 70), (150, 90)]
        paint_stroke(page, (width, height), stroke)
        upload_to_editor(page, "reference", reference)
        result_path = run_and_download(page, steps=2, seed=11, path=tmp_path / "result.png")
        page.screenshot(path=str(shots / "app-edit.png"), full_page=True)

        # who is logged in, and the way out: back to the login page
        assert page.locator("#account-user").inner_text().strip() == f"Logged in as {LOGIN[0]}"
        page.locator("#logout").click()
        page.get_by_role("button", name="Login").wait_for(timeout=30_000)
        page.goto(app_url)  # the session is gone: a reload asks again
        page.get_by_role("button", name="Login").wait_for(timeout=30_000)
        assert page.locator("#run").count() == 0

    # the brush's radius is the editor's choice ("auto": a fraction of the image), so allow a
    # generous band around the stroke; far from it nothing may change, and inside it something must
    assert_edited_only_near(pixels(result_path), pixels(source), (*stroke[0], *stroke[1]), margin=40)
    assert (shots / "app-edit.png").stat().st_size > 0


def test_browser_examples_last_click_wins_and_clears_strokes(app_url, tmp_path):
    """Examples load in one click; a click while another example is still loading wins (it was
    dropped with gr.Examples), and strokes painted before are cleared, not added to its mask."""
    from mimicbrush.examples import bundled_examples

    examples = bundled_examples()
    tank = next(i for i, example in enumerate(examples) if example.name == "motorcycle-tank")
    other = next(i for i, example in enumerate(examples) if example.source.shape != examples[tank].source.shape)
    source, mask = examples[tank].source, examples[tank].mask
    with browser_page(app_url, "app-example-failure.png") as page:
        rows = page.locator("#examples tbody tr")
        rows.nth(tank).click()
        page.wait_for_timeout(4000)
        # a stroke far from the tank's box, on the same photo: if it survived it would be edited
        paint_stroke(page, (source.shape[1], source.shape[0]), [(80, 380), (200, 420)])
        rows.nth(other).click()
        page.wait_for_timeout(200)  # still loading
        rows.nth(tank).click()
        page.wait_for_timeout(4000)
        assert not page.locator("#keep-shape input").is_checked()
        result = pixels(run_and_download(page, steps=2, seed=7, path=tmp_path / "example.png"))
        page.screenshot(path=str(artifacts_dir() / "app-example.png"), full_page=True)

    rows_, cols_ = np.nonzero(mask)
    box = (cols_.min(), rows_.min(), cols_.max() + 1, rows_.max() + 1)
    assert_edited_only_near(result, source.astype(int), box, FEATHER)
