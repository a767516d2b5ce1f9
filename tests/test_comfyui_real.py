"""The nodes in a real ComfyUI, headless on 127.0.0.1, with the example workflows.

Needs a ComfyUI installed with this package (../shared/comfyui/setup.sh, then
`pip install -e .` into its venv): MIMICBRUSH_COMFYUI_PYTHON=/path/to/venv/bin/python. Without it
the test is skipped (CI). It starts the server on a free loopback port (--cpu
--disable-api-nodes --cwd TMP), posts every workflow of comfyui/workflows/ to /prompt and checks:
the saved images equal `mimicbrush edit`'s run by the same Python on the same input files, one
progress event per U-Net call (websocket), /interrupt stops an edit within one call and the next
prompt succeeds, a prompt that changes only the seed reuses the loaded model, an empty mask comes
back as an execution_error with our message, /free releases the model, and nothing is written
outside the work folder. The websocket client runs in ComfyUI's Python (aiohttp is there, not
necessarily here). Timings go to stdout (pytest -s) and to MIMICBRUSH_COMFYUI_REPORT if set.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from server_process import stop

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "comfyui" / "workflows"
PYTHON = os.environ.get("MIMICBRUSH_COMFYUI_PYTHON")
EDIT_NODE = "5"  # MimicBrush Edit in every example workflow
START_TIMEOUT_S = 180

pytestmark = pytest.mark.skipif(
    not PYTHON, reason="no real ComfyUI: set MIMICBRUSH_COMFYUI_PYTHON to the python of a venv made by "
    "../shared/comfyui/setup.sh with this package installed")

# The websocket side, run by ComfyUI's Python: post each prompt of a plan, record its messages.
DRIVER = r'''
import asyncio, json, sys, time, urllib.request, uuid
import aiohttp

base, plan = sys.argv[1], json.load(sys.stdin)
client = uuid.uuid4().hex

def post(path, body):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text.strip() else None

async def run(session, ws, step):
    started = time.perf_counter()
    prompt_id = post("/prompt", {"prompt": step["prompt"], "client_id": client})["prompt_id"]
    record = {"name": step["name"], "prompt_id": prompt_id, "progress": [], "events": [], "cached": []}
    interrupted_at = None
    deadline = time.monotonic() + step.get("timeout", 300)
    while time.monotonic() < deadline:
        try:
            message = await ws.receive(timeout=max(deadline - time.monotonic(), 0.1))
        except asyncio.TimeoutError:
            break
        if message.type != aiohttp.WSMsgType.TEXT:
            continue
        data = json.loads(message.data)
        kind, body = data.get("type"), data.get("data") or {}
        if body.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "progress" and str(body.get("node")) == step["watch"]:
            record["progress"].append([body["value"], body["max"], time.perf_counter() - started])
            if step.get("interrupt_after") and len(record["progress"]) == step["interrupt_after"] and interrupted_at is None:
                interrupted_at = time.perf_counter()
                record["progress_at_interrupt"] = len(record["progress"])
                post("/interrupt", {})
        if kind == "execution_cached":
            record["cached"] = [str(node) for node in body.get("nodes", [])]
        if kind in ("execution_error", "execution_interrupted", "execution_success"):
            record["events"].append(kind)
            if kind == "execution_error":
                record["error"] = {key: body.get(key) for key in ("node_type", "exception_type", "exception_message")}
                record["traceback_lines"] = len(body.get("traceback") or [])
        if kind == "executing" and body.get("node") is None and body.get("prompt_id") == prompt_id:
            break
    record["seconds"] = time.perf_counter() - started
    if interrupted_at is not None:
        record["seconds_to_stop"] = time.perf_counter() - interrupted_at
    for _ in range(100):  # /history can be empty right after "executing None": poll it
        with urllib.request.urlopen(f"{base}/history/{prompt_id}", timeout=30) as response:
            history = json.loads(response.read()).get(prompt_id)
        if history and history.get("status", {}).get("completed") is not None:
            record["outputs"] = history.get("outputs", {})
            record["status"] = history["status"].get("status_str")
            break
        await asyncio.sleep(0.2)
    return record

async def main():
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(base.replace("http", "ws") + f"/ws?clientId={client}") as ws:
            records = [await run(session, ws, step) for step in plan]
    print(json.dumps(records))

asyncio.run(main())
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@contextmanager
def running_comfyui(python: str, work: Path, env: dict, flags: tuple[str, ...] = ("--disable-api-nodes",)):
    """A headless ComfyUI of `python`'s venv with `work` as its working folder (custom_nodes/,
    input/, output/), on a free loopback port, once it lists MimicBrushEdit; always stopped.
    `flags`: further server flags (the page test leaves out --disable-api-nodes: docs/comfyui.md)."""
    port = free_port()
    log = work / "server.log"
    comfy = Path(python).parent / "comfyui"
    started = time.perf_counter()
    with open(log, "wb") as log_file:
        server = subprocess.Popen([str(comfy), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                   "--cwd", str(work), *flags],
                                  stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=work)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"ComfyUI exited with {server.returncode}: {log.read_text()[-3000:]}")
            try:
                get(f"{base}/object_info/MimicBrushEdit", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not list MimicBrushEdit within {START_TIMEOUT_S} s: "
                                f"{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"base": base, "work": work, "log": log, "env": env, "pid": server.pid,
               "start_seconds": time.perf_counter() - started}
    finally:
        stop(server, timeout=30)


def server_env(work: Path, **extra) -> dict:
    """The server's environment: HOME and TMPDIR inside the work folder (whatever lands there is
    outside ComfyUI's folders), offline hub."""
    home, system_temp = work / "home", work / "system-tmp"
    home.mkdir(exist_ok=True), system_temp.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(system_temp), "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", **extra}
    env.pop("HF_HOME", None), env.pop("HF_HUB_CACHE", None)
    return env


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    """A headless ComfyUI with the package installed, its work folder with the examples' inputs."""
    work = tmp_path_factory.mktemp("comfyui")
    env = server_env(work)
    subprocess.run([PYTHON, "-m", "mimicbrush.comfyui.workflows", str(work / "input")], check=True, env=env,
                   capture_output=True, timeout=300)
    with running_comfyui(PYTHON, work, env) as server:
        yield {**server, "home": work / "home", "system_temp": work / "system-tmp"}


def drive(comfyui, plan: list[dict]) -> list[dict]:
    result = subprocess.run([PYTHON, "-c", DRIVER, comfyui["base"]], input=json.dumps(plan), capture_output=True,
                            text=True, timeout=60 + sum(step.get("timeout", 300) for step in plan))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.api.json").read_text())


def saved(comfyui, record: dict, node: str) -> np.ndarray:
    (image,) = record["outputs"][node]["images"]
    path = comfyui["work"] / "output" / image["subfolder"] / image["filename"]
    return np.asarray(PIL.Image.open(path).convert("RGB"))


def cli_edit(comfyui, prompt: dict, out: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """`mimicbrush edit` on the workflow's input files and settings, by ComfyUI's Python."""
    inputs = comfyui["work"] / "input"
    edit = prompt[EDIT_NODE]["inputs"]
    command = [PYTHON, "-m", "mimicbrush", "edit", str(inputs / prompt["1"]["inputs"]["image"]),
               "--mask", str(inputs / prompt["2"]["inputs"]["image"]),
               "--reference", str(inputs / prompt["3"]["inputs"]["image"]), "-o", str(out),
               "--steps", str(edit["steps"]), "--seed", str(edit["seed"]), "--scheduler", edit["scheduler"],
               "--guidance", str(edit["guidance"]), "--zoom", edit["zoom"], "--device", "cpu"]
    depth = out.with_name(out.stem + "-depth.png")
    if edit["keep_shape"]:
        command += ["--keep-shape", "--depth-out", str(depth)]
    subprocess.run(command, check=True, capture_output=True, timeout=300, env=comfyui["env"])
    read = lambda path: np.asarray(PIL.Image.open(path).convert("RGB"))  # noqa: E731
    return read(out), (read(depth) if edit["keep_shape"] else None)


def unet_calls(prompt: dict) -> int:
    edit = prompt[EDIT_NODE]["inputs"]
    return 2 * edit["steps"] - 1 if edit["scheduler"] == "heun" else edit["steps"]


def test_workflows_progress_interrupt_reuse_errors_and_free(comfyui, tmp_path):
    names = sorted(path.name.removesuffix(".api.json") for path in WORKFLOWS.glob("*.api.json"))
    assert len(names) >= 4 and "motorcycle-tank" in names
    names.remove("motorcycle-tank")
    names.insert(0, "motorcycle-tank")  # first: its time includes the model's load; "reseeded" reruns it
    tank = workflow("motorcycle-tank")
    reseeded = json.loads(json.dumps(tank))
    reseeded[EDIT_NODE]["inputs"]["seed"] = 1
    long_edit = json.loads(json.dumps(tank))
    long_edit[EDIT_NODE]["inputs"].update(steps=200, seed=2)
    after = json.loads(json.dumps(tank))
    after[EDIT_NODE]["inputs"].update(steps=5, seed=3, scheduler="heun")
    empty = json.loads(json.dumps(tank))
    empty[EDIT_NODE]["inputs"]["mask"] = ["1", 1]  # LoadImage's mask of a file without alpha
    plan = [{"name": name, "prompt": workflow(name), "watch": EDIT_NODE} for name in names]
    plan += [
        {"name": "reseeded", "prompt": reseeded, "watch": EDIT_NODE},
        {"name": "interrupted", "prompt": long_edit, "watch": EDIT_NODE, "interrupt_after": 3},
        {"name": "after-interrupt", "prompt": after, "watch": EDIT_NODE},
        {"name": "empty-mask", "prompt": empty, "watch": EDIT_NODE},
    ]
    records = {record["name"]: record for record in drive(comfyui, plan)}
    prompts = {step["name"]: step["prompt"] for step in plan}

    for name in [*names, "reseeded", "after-interrupt"]:
        record = records[name]
        assert record["status"] == "success" and record["events"] == ["execution_success"], record
        calls = unet_calls(prompts[name])
        assert [value for value, _, _ in record["progress"]] == list(range(1, calls + 1)), name
        assert {total for _, total, _ in record["progress"]} == {calls}
        expected, expected_depth = cli_edit(comfyui, prompts[name], tmp_path / f"{name}.png")
        np.testing.assert_array_equal(saved(comfyui, record, "6"), expected, err_msg=name)
        if expected_depth is not None:
            np.testing.assert_array_equal(saved(comfyui, record, "7"), expected_depth, err_msg=name)

    log = comfyui["log"].read_text()
    assert log.count("MimicBrush model loaded") == 1  # every later prompt reused the first load
    assert "4" in records["reseeded"]["cached"]  # the loader's output came from ComfyUI's cache
    stopped = records["interrupted"]
    assert stopped["events"] == ["execution_interrupted"] and stopped["status"] == "error"
    assert len(stopped["progress"]) <= stopped["progress_at_interrupt"] + 1  # within one U-Net call
    failed = records["empty-mask"]
    assert failed["events"] == ["execution_error"] and failed["error"]["node_type"] == "MimicBrushEdit"
    assert failed["error"]["exception_type"].endswith("InputError")
    assert failed["error"]["exception_message"].startswith("the mask is empty") \
        and "LoadImageMask (channel: red)" in failed["error"]["exception_message"]

    request = urllib.request.Request(f"{comfyui['base']}/free", data=b'{"unload_models": true, "free_memory": true}',
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    deadline = time.monotonic() + 30
    while "MimicBrush model released" not in comfyui["log"].read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "MimicBrush model released" in comfyui["log"].read_text()

    stray = [str(path) for folder in (comfyui["home"], comfyui["system_temp"]) for path in folder.rglob("*")
             if "mimicbrush" in str(path).lower() or "huggingface" in str(path).lower()]
    assert stray == []
    report = {
        "server_start_s": round(comfyui["start_seconds"], 1),
        **{f"{name}_s": round(records[name]["seconds"], 2) for name in [*names, "reseeded", "after-interrupt"]},
        "first_prompt_includes_model_load": names[0],
        "reseeded_reuses_model": "motorcycle-tank with seed 1",
        "interrupt_to_stop_s": round(stopped["seconds_to_stop"], 2),
        "progress_events_after_interrupt": len(stopped["progress"]) - stopped["progress_at_interrupt"],
        "empty_mask_message": failed["error"]["exception_message"],
    }
    print(json.dumps(report, indent=2))
    if os.environ.get("MIMICBRUSH_COMFYUI_REPORT"):
        Path(os.environ["MIMICBRUSH_COMFYUI_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
