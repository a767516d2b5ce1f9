"""ComfyUI under a queue: many prompts of our nodes queued at once in a real ComfyUI, one of them
stopped with POST /interrupt while it runs (docs/reliability.md, "ComfyUI under a queue").

The ComfyUI part of the load figures (the gradio app's part is benchmarks/load.py). It puts this
repository into WORK/custom_nodes/mimicbrush (ComfyUI-Manager's layout; an installed mimicbrush
in the venv wins, and the log says so), writes the examples' inputs, starts the server of
`--python`'s venv (../shared/comfyui/setup.sh; the pack's requirements installed) on the CPU and
queues `--prompts` copies of the motorcycle-tank workflow with the bundled demo model, each with
its own seed (so none is a cache hit). The middle one runs `--long-steps` steps; once it has run
for `--interrupt-after` seconds, a plain POST /interrupt (the Stop button's global form) is sent.
Measured: how each prompt ended (from /history), the server's model loads (the log's
"MimicBrush model loaded" lines), the resident memory of the server's process tree (/proc) when
each prompt finished, and seconds per prompt. JSON on stdout and in -o FILE; exit status 1 when
a target is missed: every other prompt succeeds, only the stopped one is interrupted, one model
load, RSS over the second half grows by at most --max-growth-mb.

    python benchmarks/load_comfyui.py --python /work/comfy-install/venv/bin/python -o load-comfyui.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import stop  # noqa: E402 (the app's load script: one way to stop a server)

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "comfyui" / "workflows" / "motorcycle-tank.api.json"
EDIT_NODE = "5"  # MimicBrush Edit in the example workflows
LOADED = "MimicBrush model loaded"


def request(base: str, path: str, body: dict | None = None, timeout: float = 30):
    data = None if body is None else json.dumps(body).encode()
    call = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=timeout) as response:
        text = response.read()
    return json.loads(text) if text.strip() else None


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MB (Linux /proc)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        pending += children.get(current, [])
        try:
            status = (Path("/proc") / str(current) / "status").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return total / 1024


def install_pack(work: Path) -> Path:
    """custom_nodes/mimicbrush as a clone of this working tree has it (tracked and unignored files)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    folder = work / "custom_nodes" / "mimicbrush"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, folder / name)
    return folder


def start_server(python: str, work: Path, env: dict, timeout: float = 300):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(work / "server.log", "wb")
    server = subprocess.Popen([str(Path(python).parent / "comfyui"), "--cpu", "--listen", "127.0.0.1", "--port",
                               str(port), "--cwd", str(work), "--disable-api-nodes"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise SystemExit(f"ComfyUI exited with {server.returncode}: see {work / 'server.log'}")
        try:
            request(base, "/object_info/MimicBrushEdit", timeout=5)
            return server, base
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise SystemExit(f"ComfyUI did not list MimicBrushEdit in {timeout} s: see {work / 'server.log'}")
            time.sleep(0.5)


def event_name(message) -> str:
    """A /history status message's event: [event, data] upstream, "event" or "event: text" in the fork."""
    return message[0] if isinstance(message, list) else message.split(":", 1)[0]


def run_queue(base: str, pid: int, args) -> dict:
    template = json.loads(WORKFLOW.read_text())
    middle = args.prompts // 2  # 0-based: the one stopped
    ids = []
    for index in range(args.prompts):
        prompt = json.loads(json.dumps(template))
        prompt[EDIT_NODE]["inputs"].update(seed=1000 + index,
                                           steps=args.long_steps if index == middle else args.steps)
        ids.append(request(base, "/prompt", {"prompt": prompt})["prompt_id"])
    queued_at = time.perf_counter()
    finished: dict[str, dict] = {}
    interrupted_at = running_since = None
    while len(finished) < len(ids):
        queue = request(base, "/queue")
        # a queue item is a list (number, prompt_id, …) upstream, a dict with "prompt_id" in the fork
        running = [item["prompt_id"] if isinstance(item, dict) else item[1] for item in queue["queue_running"]]
        if interrupted_at is None and ids[middle] in running:
            running_since = running_since or time.perf_counter()
            if time.perf_counter() - running_since >= args.interrupt_after:
                request(base, "/interrupt", {})
                interrupted_at = time.perf_counter()
        history = request(base, "/history", timeout=60)
        for prompt_id in ids:
            entry = history.get(prompt_id)
            if prompt_id in finished or not entry or entry.get("status", {}).get("completed") is None:
                continue
            finished[prompt_id] = {"index": ids.index(prompt_id), "status": entry["status"].get("status_str"),
                                   "events": [event_name(message) for message in entry["status"].get("messages", [])],
                                   "at_s": time.perf_counter() - queued_at, "rss_mb": tree_rss_mb(pid)}
        if time.perf_counter() - queued_at > args.timeout:
            raise SystemExit(f"the queue did not finish within {args.timeout} s ({len(finished)} done)")
        time.sleep(0.1)
    order = sorted(finished.values(), key=lambda record: record["at_s"])
    by_index = sorted(finished.values(), key=lambda record: record["index"])
    half = args.prompts // 2
    stopped = by_index[middle]
    others = [record for record in by_index if record["index"] != middle]
    return {
        "prompts": args.prompts,
        "succeeded": sum(record["status"] == "success" for record in by_index),
        "interrupted": [record["index"] for record in by_index if "execution_interrupted" in record["events"]],
        "stopped_prompt": middle,
        "stopped_prompt_events": stopped["events"],
        "others_all_succeeded": all(record["status"] == "success" for record in others),
        "finished_in_queue_order": [record["index"] for record in order] == list(range(args.prompts)),
        "interrupt_to_stop_s": round(stopped["at_s"] - (interrupted_at - queued_at), 2) if interrupted_at else None,
        "rss_mb_after_prompt": [round(record["rss_mb"], 1) for record in by_index],
        "rss_growth_second_half_mb": round(by_index[-1]["rss_mb"] - by_index[half - 1]["rss_mb"], 1),
        "rss_growth_whole_queue_mb": round(by_index[-1]["rss_mb"] - by_index[0]["rss_mb"], 1),
        "seconds_per_prompt_median": round(sorted(b["at_s"] - a["at_s"] for a, b in zip(order, order[1:]))[
            (len(order) - 1) // 2], 2),
        "queue_seconds": round(order[-1]["at_s"], 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", required=True, help="python of a ComfyUI venv (../shared/comfyui/setup.sh)")
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps of each prompt")
    parser.add_argument("--long-steps", type=int, default=400, help="steps of the prompt that is stopped")
    parser.add_argument("--interrupt-after", type=float, default=1.0, help="seconds it runs before /interrupt")
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--work", help="ComfyUI work folder (default: a temporary one, removed)")
    parser.add_argument("-o", "--output")
    args = parser.parse_args(argv)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="load-comfyui-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = install_pack(work)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    inputs_env = {**env, "PYTHONPATH": str(folder / "src")}  # the folder's copy when none is installed
    subprocess.run([args.python, "-m", "mimicbrush.comfyui.workflows", str(work / "input")], check=True,
                   env=inputs_env, capture_output=True, timeout=300)
    started = time.perf_counter()
    server, base = start_server(args.python, work, env)
    try:
        ready_s = time.perf_counter() - started
        rss_ready = tree_rss_mb(server.pid)
        figures = run_queue(base, server.pid, args)
    finally:
        stop(server)
    log = (work / "server.log").read_text(errors="replace")
    figures = {"machine": platform.platform(), "cpu_count": os.cpu_count(), "server_ready_s": round(ready_s, 1),
               "rss_mb_ready": round(rss_ready, 1), "model_loads": log.count(LOADED), "steps": args.steps,
               "long_steps": args.long_steps,
               "pack": next((line.split("MimicBrush nodes: ", 1)[1] for line in log.splitlines()
                             if "MimicBrush nodes: " in line), None), **figures}
    figures["targets_met"] = {
        "all_others_succeeded": figures["others_all_succeeded"] and figures["succeeded"] == args.prompts - 1,
        "only_the_running_prompt_interrupted": figures["interrupted"] == [figures["stopped_prompt"]],
        "model_loaded_once": figures["model_loads"] == 1,
        "rss_growth_second_half_within_limit": figures["rss_growth_second_half_mb"] <= args.max_growth_mb,
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(figures["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
