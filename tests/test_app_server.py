"""The web app as users meet it: `mimicbrush app` on a free port, driven through gradio_client and
through Debian's Chromium (Playwright, headless). Screenshots go to $MIMICBRUSH_ARTIFACTS (default:
a mimicbrush-artifacts folder in the temp dir) for CI to keep."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from server_process import stop

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(demo_model, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("app-log") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "MIMICBRUSH_DEBUG": "1"}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mimicbrush", "app", "--model", demo_model, "--port", str(port)],
            stdout=output, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the app did not start in 180 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        stop(process, timeout=20)


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
    client = gradio_client.Client(app_url, verbose=False)
    assert client.predict(api_name="/info")["max_side"] == 4096
    result, depth, overlay, info = edit(client, source, reference, "40,20,80,60", seed=5, keep_shape=True)
    assert info["seed"] == 5 and info["size"] == [120, 80] and depth is not None and overlay is not None

    pipe = load_pipeline(demo_model)
    expected = pipe(str(source), "40,20,80,60", str(reference), keep_shape=True, num_inference_steps=2,
                    guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(5)).images[0]
    assert np.array_equal(pixels(result), np.asarray(expected).astype(int))  # full resolution, lossless
    assert changed_outside(pixels(result), pixels(source), (40, 20, 80, 60), FEATHER) == 0


def test_api_requests_in_parallel_get_their_own_results(app_url, tmp_path):
    reference = photo(tmp_path / "reference.png", 64, 64, seed=1)
    jobs = [(photo(tmp_path / f"source{i}.png", 96 + 8 * i, 64, seed=10 + i), f"{10 * i},8,{10 * i + 24},40", i)
            for i in range(3)]
    client = gradio_client.Client(app_url, verbose=False)

    def one(job):
        source, box, seed = job
        return edit(client, source, reference, box, seed)

    with ThreadPoolExecutor(len(jobs)) as pool:
        outcomes = list(pool.map(one, jobs))
    serial = [one(job) for job in jobs]
    for (source, box, seed), (result, _, _, info), (again, *_) in zip(jobs, outcomes, serial):
        assert info["seed"] == seed and pixels(result).shape == pixels(source).shape
        assert changed_outside(pixels(result), pixels(source), tuple(int(v) for v in box.split(",")), FEATHER) == 0
        assert np.array_equal(pixels(result), pixels(again))  # nothing of another request leaked in


@pytest.mark.parametrize(
    ("box", "use_reference", "message"),
    [("", True, "mask is empty"), ("10,10,30,30", False, "Upload a reference image")],
)
def test_api_errors_are_clear(app_url, tmp_path, box, use_reference, message):
    source = photo(tmp_path / "source.png", 64, 64, seed=0)
    client = gradio_client.Client(app_url, verbose=False)
    handle = gradio_client.handle_file
    with pytest.raises(Exception, match=message):
        client.predict(source=handle(str(source)), mask=None, box=box,
                       reference=handle(str(source)) if use_reference else None, reference_box="",
                       keep_shape=False, zoom="off", steps=2, guidance=5.0, seed=1, api_name="/edit")


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


@contextmanager
def browser_page(app_url: str, failure_shot: str):
    """A Chromium page on the app; on failure a full-page screenshot `failure_shot` goes to the
    artifacts folder."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1800}, accept_downloads=True)
        try:
            page.goto(app_url)
            page.wait_for_selector("#run", timeout=60_000)
            yield page
        except Exception:
            page.screenshot(path=str(artifacts_dir() / failure_shot), full_page=True)
            raise
        finally:
            browser.close()


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
    with browser_page(app_url, "app-failure.png") as page:
        # an empty mask is refused with a clear message
        page.locator("#source input[type=file]").set_input_files(str(source))
        page.wait_for_timeout(1500)
        page.locator("#run").click()
        page.get_by_text("The mask is empty").first.wait_for(timeout=30_000)

        stroke = [(90, 70), (150, 90)]
        paint_stroke(page, (width, height), stroke)
        page.locator("#reference input[type=file]").set_input_files(str(reference))
        page.wait_for_timeout(1000)
        result_path = run_and_download(page, steps=2, seed=11, path=tmp_path / "result.png")
        page.screenshot(path=str(shots / "app-edit.png"), full_page=True)

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
