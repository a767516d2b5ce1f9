"""The nodes on ComfyUI's own web page, as a user drives it: Debian's Chromium (Playwright) on a
real ComfyUI serving comfyui-frontend-package.

Needs what tests/test_comfyui_real.py needs (MIMICBRUSH_COMFYUI_PYTHON: a venv made by
../shared/comfyui/setup.sh with this package installed) plus, in that venv, the frontend the server
asks for (`python -m pip install comfyui-frontend-package==1.38.14` for the fork's ComfyUI 0.12.1),
Chromium (MIMICBRUSH_CHROMIUM, default /usr/bin/chromium) and playwright (the [test] extra).
Skipped, saying which is missing, elsewhere (CI).

Every UI-format workflow of comfyui/workflows/ is opened the way the page's Workflow > Open does
(Ctrl+O, the file chooser), and must come up with its nodes, links and widget values as saved and
no node covering another; Run (the page's button) must post exactly the API-format workflow, and
the image the Save node then shows must be `mimicbrush edit`'s (the depth preview too). Then the
mask editor: painted over the motorcycle's tank, saved, its MASK wired to the edit by dragging the
link, run: the result equals `mimicbrush edit` given the mask ComfyUI saved.

Why the server runs without --disable-api-nodes, and what the page is given for cdn.jsdelivr.net:
the fork's built-in Python-eval extension (comfy_extras/eval_web/eval_python.js) awaits, at module
level, a <script> for the Ace editor from cdn.jsdelivr.net that resolves only on `onload`. When the
script cannot load (offline, or blocked by the Content-Security-Policy --disable-api-nodes adds),
that import never settles and the page, which awaits every extension, stays on its loading screen
for ever. The test is offline, so Chromium's request for that script gets a stand-in defining
`window.ace` (the eval nodes, off without --enable-eval, are all that use it), and every other
outside request is refused. docs/comfyui.md, "The page", has the measured figures.

Screenshots: MIMICBRUSH_COMFYUI_SCREENSHOTS=DIR keeps one per run there (and one if the page fails to load);
timings go to stdout (pytest -s).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from test_comfyui_real import EDIT_NODE, PYTHON, WORKFLOWS, cli_edit, get, running_comfyui, server_env

CHROMIUM = os.environ.get("MIMICBRUSH_CHROMIUM", "/usr/bin/chromium")
PAGE_TIMEOUT_S = 120
RUN_TIMEOUT_S = 600  # one edit through the page, on a CPU that may be shared
ACE_SCRIPT = "https://cdn.jsdelivr.net/npm/ace-builds@*/src-noconflict/ace.js"
ACE_STAND_IN = "window.ace = {config: {set() {}}};"
VIEWPORT = {"width": 1600, "height": 1000}  # fit to view, the graph shows at >= 60 %: below it the page drops text
# The tank's box in motorcycle-tank's mask is x 330-499, y 140-259: strokes inside it (image pixels)
MASK_STROKES = [((355, y), (475, y)) for y in range(165, 240, 20)]
BRUSH_RADIUS = 20

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PYTHON, reason="no real ComfyUI: set MIMICBRUSH_COMFYUI_PYTHON to the python of a venv "
                       "made by ../shared/comfyui/setup.sh with this package and comfyui-frontend-package installed"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: install Debian's chromium "
                       "(apt-get install chromium) or set MIMICBRUSH_CHROMIUM"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed (the [test] extra)")

# The page's app object and its graph, and a graph position in page (viewport) pixels.
APP = "window.comfyAPI.app.app"
TO_SCREEN = f"""([x, y]) => {{
    const app = {APP}, [cx, cy] = app.canvas.ds.convertOffsetToCanvas([x, y]);
    const box = app.canvas.canvas.getBoundingClientRect();
    return [box.left + cx, box.top + cy];
}}"""


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    """ComfyUI serving its page on a free loopback port, with the examples' input files."""
    frontend = subprocess.run([PYTHON, "-c", "import comfyui_frontend_package"], capture_output=True)
    if frontend.returncode:
        pytest.skip("comfyui-frontend-package is not installed in MIMICBRUSH_COMFYUI_PYTHON's venv: "
                    f"{PYTHON} -m pip install comfyui-frontend-package==<the version /api/system_stats asks for>")
    work = tmp_path_factory.mktemp("comfyui-page")
    env = server_env(work)
    subprocess.run([PYTHON, "-m", "mimicbrush.comfyui.workflows", str(work / "input")], check=True, env=env,
                   capture_output=True, timeout=300)
    # A first visit opens the template browser over a blank graph; a returning user's settings
    # file (what the page itself writes after that visit) opens the default graph instead.
    settings = work / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    # not --disable-api-nodes: its Content-Security-Policy keeps the page from loading (module docstring)
    with running_comfyui(PYTHON, work, env, flags=()) as server:
        stats = get(f"{server['base']}/api/system_stats")["system"]
        yield {**server, "required_frontend": stats.get("required_frontend_version")}


@pytest.fixture(scope="module")
def page(comfyui, tmp_path_factory):
    """Chromium on ComfyUI's page once the app is set up and knows our nodes."""
    outside = []

    def answer_outside(route):
        outside.append(route.request.url)
        if re.fullmatch(ACE_SCRIPT.replace(".", r"\.").replace("*", "[^/]+"), route.request.url):
            route.fulfill(content_type="text/javascript", body=ACE_STAND_IN)
        else:
            route.abort()

    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            viewport=VIEWPORT, args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                     "--disable-background-networking", "--disable-component-update",
                                     "--disable-sync"])
        context.route(re.compile(r"^(?!https?://127\.0\.0\.1:\d+/)[a-z]+://.*"), answer_outside)
        tab = context.new_page()
        started = time.perf_counter()
        try:
            tab.goto(comfyui["base"])
            try:
                # the graph exists while the loading screen still shows: wait for our node and the Run button
                tab.wait_for_function(f"() => {APP}?.graph && window.LiteGraph?.registered_node_types?.MimicBrushEdit",
                                      timeout=PAGE_TIMEOUT_S * 1000)
                tab.get_by_role("button", name="Run", exact=True).wait_for(timeout=PAGE_TIMEOUT_S * 1000)
            except sync_api.TimeoutError:
                pytest.fail(f"the page did not load within {PAGE_TIMEOUT_S} s; outside requests: {outside}")
            comfyui["page_ready_seconds"] = time.perf_counter() - started
            comfyui["frontend"] = tab.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
            yield tab
        except Exception:
            screenshot(tab, "failure")
            raise
        finally:
            context.close()


def screenshot(tab, name: str) -> None:
    if os.environ.get("MIMICBRUSH_COMFYUI_SCREENSHOTS"):
        folder = Path(os.environ["MIMICBRUSH_COMFYUI_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(folder / f"{name}.png"))


def open_workflow(tab, path: Path) -> None:
    """Workflow > Open (Ctrl+O) and the file chooser: the page's own loading path (the same
    `handleFile` as dropping the file on the canvas)."""
    with tab.expect_file_chooser() as chooser:
        tab.keyboard.press("Control+o")
    chooser.value.set_files(str(path))
    tab.wait_for_function(f"(name) => {APP}.graph.extra?.mimicbrush_example === name",
                          arg=json.loads(path.read_text())["extra"]["mimicbrush_example"])


def graph_as_shown(tab) -> dict:
    """The graph as the page serializes it, once the loaders show their images (the page enlarges
    a node to fit its preview)."""
    tab.wait_for_function(f"""() => {APP}.graph.nodes.filter(n => n.type.startsWith('LoadImage'))
                                    .every(n => n.imgs?.[0]?.naturalWidth > 0)""")
    return tab.evaluate(f"""async () => {{
        await new Promise(drawn => requestAnimationFrame(() => requestAnimationFrame(drawn)));
        const graph = {APP}.graph.serialize();
        return {{nodes: graph.nodes.map(n => ({{id: n.id, type: n.type, widgets_values: n.widgets_values,
                                               pos: [...n.pos], size: [...n.size]}})),
                 links: graph.links.map(l => Array.isArray(l) ? l.slice(1, 5)
                                          : [l.origin_id, l.origin_slot, l.target_id, l.target_slot])}};
    }}""")


def overlapping(nodes: list[dict], title_height: int = 30) -> list[tuple[int, int]]:
    boxes = {n["id"]: (n["pos"][0], n["pos"][1] - title_height, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in nodes}
    return [(a, b) for a in boxes for b in boxes if a < b
            and boxes[a][0] < boxes[b][2] and boxes[b][0] < boxes[a][2]
            and boxes[a][1] < boxes[b][3] and boxes[b][1] < boxes[a][3]]


def run_from_page(comfyui, tab, save_nodes: list[int]) -> tuple[dict, dict[int, np.ndarray], float]:
    """Click Run; wait until every Save node in `save_nodes` shows this prompt's image. Returns the
    prompt the page posted, each shown image's pixels (fetched from the <img>'s own URL), seconds."""
    started = time.perf_counter()
    with tab.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as response:
        tab.get_by_role("button", name="Run", exact=True).click()
    posted, prompt_id = response.value.request.post_data_json, response.value.json()["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    shown = []
    while time.monotonic() < deadline:
        history = get(f"{comfyui['base']}/history/{prompt_id}").get(prompt_id, {})
        if history.get("status", {}).get("status_str") == "error":
            pytest.fail(f"the prompt failed: {history['status']}")
        outputs = history.get("outputs", {})
        names = {node: outputs[str(node)]["images"][0]["filename"] for node in save_nodes if str(node) in outputs}
        shown = tab.evaluate(f"""(names) => Object.entries(names).map(([id, name]) => {{
            const image = {APP}.graph.getNodeById(Number(id)).imgs?.[0];
            return image?.complete && image.naturalWidth > 0 && new URL(image.src).searchParams.get('filename') === name
                ? image.src : null;
        }})""", names) if len(names) == len(save_nodes) else []
        if shown and all(shown):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the page showed no output of prompt {prompt_id} within {RUN_TIMEOUT_S} s")
    seconds = time.perf_counter() - started

    def pixels(url: str) -> np.ndarray:
        with urllib.request.urlopen(url, timeout=30) as image:
            return np.asarray(PIL.Image.open(image).convert("RGB"))

    return posted, {node: pixels(url) for node, url in zip(save_nodes, shown)}, seconds


def declared_defaults(class_type: str) -> dict:
    from mimicbrush.comfyui.nodes import NODE_CLASS_MAPPINGS

    if class_type not in NODE_CLASS_MAPPINGS:
        return {}
    declared = NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    return {name: spec[1]["default"] for name, spec in {**declared["required"], **declared.get("optional", {})}.items()
            if len(spec) > 1 and "default" in spec[1]}


def assert_posts_the_api_workflow(posted: dict, api: dict) -> None:
    """The prompt the page queued is NAME.api.json: the same nodes and inputs; the page also sends
    our optional widgets that the API file leaves out, at their declared defaults."""
    prompt = posted["prompt"]
    assert sorted(prompt) == sorted(api)
    for node_id, node in api.items():
        sent = prompt[node_id]
        assert sent["class_type"] == node["class_type"]
        assert {name: sent["inputs"][name] for name in node["inputs"]} == node["inputs"], node_id
        defaults = declared_defaults(node["class_type"])
        assert {name: value for name, value in sent["inputs"].items() if name not in node["inputs"]} == \
            {name: defaults[name] for name in sent["inputs"] if name not in node["inputs"]}, node_id


@pytest.fixture(scope="module")
def report(comfyui, page):
    """Timings, printed (pytest -s) once the module's tests are done, whichever of them ran."""
    timings: dict = {}
    yield timings
    print(json.dumps({"server_start_s": round(comfyui["start_seconds"], 1),
                      "page_ready_s": round(comfyui["page_ready_seconds"], 1), **timings,
                      "frontend": comfyui["frontend"], "required_frontend": comfyui["required_frontend"]}, indent=2))


@pytest.mark.parametrize("name", sorted(path.name.removesuffix(".api.json") for path in WORKFLOWS.glob("*.api.json")))
def test_example_workflow_opens_as_saved_and_runs_to_the_cli_edit(comfyui, page, report, name, tmp_path):
    path = WORKFLOWS / f"{name}.json"
    saved = json.loads(path.read_text())
    api = json.loads((WORKFLOWS / f"{name}.api.json").read_text())
    open_workflow(page, path)

    shown = graph_as_shown(page)
    assert [(n["id"], n["type"], n["widgets_values"]) for n in shown["nodes"]] == \
        [(n["id"], n["type"], n["widgets_values"]) for n in saved["nodes"]]
    assert sorted(shown["links"]) == sorted(link[1:5] for link in saved["links"])
    assert overlapping(shown["nodes"]) == []

    save_nodes = [int(node_id) for node_id, node in api.items() if node["class_type"] == "SaveImage"]
    posted, images, seconds = run_from_page(comfyui, page, save_nodes)
    page.keyboard.press(".")  # fit the view to the graph, for the screenshot
    screenshot(page, name)
    assert_posts_the_api_workflow(posted, api)
    expected, expected_depth = cli_edit(comfyui, api, tmp_path / f"{name}.png")
    np.testing.assert_array_equal(images[6], expected)
    if expected_depth is not None:
        np.testing.assert_array_equal(images[7], expected_depth)
    report[f"{name}_run_s"] = round(seconds, 2)


def test_mask_painted_in_the_mask_editor_runs_to_the_cli_edit(comfyui, page, report, tmp_path):
    open_workflow(page, WORKFLOWS / "motorcycle-tank.json")
    page.wait_for_function(f"() => {APP}.graph.getNodeById(1).imgs?.[0]?.naturalWidth > 0")
    title = page.evaluate(TO_SCREEN, page.evaluate(f"() => {{ const n = {APP}.graph.getNodeById(1); "
                                                   "return [n.pos[0] + 60, n.pos[1] - 15]; }"))
    page.mouse.click(*title, button="right")
    page.get_by_text("Open in MaskEditor").first.click()
    canvas = page.locator("canvas.z-30")  # the mask layer the brush paints on (above the image)
    canvas.wait_for(timeout=30_000)
    thickness = page.get_by_text("Thickness").locator("xpath=..").locator("input").first
    thickness.fill(str(BRUSH_RADIUS))
    thickness.press("Enter")
    box = canvas.bounding_box()
    width, height = PIL.Image.open(comfyui["work"] / "input" / "mimicbrush-motorcycle-tank-source.png").size
    to_page = lambda x, y: (box["x"] + x * box["width"] / width, box["y"] + y * box["height"] / height)  # noqa: E731
    for start, end in MASK_STROKES:
        page.mouse.move(*to_page(*start))
        page.mouse.down()
        page.mouse.move(*to_page(*end), steps=12)
        page.mouse.up()
    screenshot(page, "mask-editor")
    page.locator("button:visible", has_text=re.compile(r"^\s*Save\s*$")).click()
    page.wait_for_function(f"() => {APP}.graph.getNodeById(1).widgets[0].value.startsWith('clipspace/')")

    # wire the Load Image's MASK (output 1) to the edit's mask input, as a user drags a link
    start = page.evaluate(TO_SCREEN, page.evaluate(f"() => {APP}.graph.getNodeById(1).getConnectionPos(false, 1)"))
    end = page.evaluate(TO_SCREEN, page.evaluate(f"""() => {{ const edit = {APP}.graph.getNodeById({EDIT_NODE});
        return edit.getConnectionPos(true, edit.inputs.findIndex(input => input.name === 'mask')); }}"""))
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=15)
    page.mouse.up()

    posted, images, seconds = run_from_page(comfyui, page, [6])
    page.keyboard.press(".")
    screenshot(page, "mask-editor-run")
    prompt = posted["prompt"]
    assert prompt[EDIT_NODE]["inputs"]["mask"] == ["1", 1]
    painted = prompt["1"]["inputs"]["image"].removesuffix(" [input]")
    assert painted.startswith("clipspace/clipspace-painted-masked-")

    # What LoadImage makes of the file the mask editor saved: the image is its RGB (the alpha
    # dropped, where `mimicbrush edit` would flatten a transparent source onto a background), the
    # MASK 1 - alpha, which the node turns into the 8-bit mask 255 - alpha
    saved_by_editor = PIL.Image.open(comfyui["work"] / "input" / painted)
    mask = 255 - np.asarray(saved_by_editor.getchannel("A"))
    # where the strokes went: every point of each stroke's centre line, and nothing farther than
    # the brush's radius (the brush lays dabs a step apart, so a stroke's ends are not exact)
    for (x0, y), (x1, _) in MASK_STROKES:
        assert (mask[y, x0:x1 + 1] > 128).all(), (x0, x1, y)
    edited = np.argwhere(mask > 128)
    strokes = np.array([point for stroke in MASK_STROKES for point in stroke])
    reach = BRUSH_RADIUS + 2
    assert (edited.min(axis=0) >= strokes.min(axis=0)[::-1] - reach).all()
    assert (edited.max(axis=0) <= strokes.max(axis=0)[::-1] + reach).all()
    saved_by_editor.convert("RGB").save(comfyui["work"] / "input" / "page-source-from-editor.png")
    PIL.Image.fromarray(mask).save(comfyui["work"] / "input" / "page-mask-from-editor.png")
    as_loaded = {**prompt, "1": {"inputs": {"image": "page-source-from-editor.png"}},
                 "2": {"inputs": {"image": "page-mask-from-editor.png"}}}
    expected, _ = cli_edit(comfyui, as_loaded, tmp_path / "mask-editor.png")
    np.testing.assert_array_equal(images[6], expected)
    report["mask_editor_run_s"] = round(seconds, 2)
