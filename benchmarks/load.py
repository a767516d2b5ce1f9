"""The web app under load: many users at once, a full queue, a cancel, a long soak. JSON out.

Starts `mimicbrush app` (the bundled demo model unless --model) as a process of its own, with
Gradio's cache (GRADIO_TEMP_DIR, where the app also keeps its result files) in a temporary
folder so that every file it writes can be counted, and drives it through gradio_client with one
Client per user, as people use it:

  users  --users clients submit --edits edits each, all at once. Every job must come back, and
         each result must be bit-identical to the same request made alone: the same requests are
         then repeated one at a time through one more client. The app's RSS before and after the
         load and after the repeat; its result files after each, and after the clients close.
  queue  one long edit runs (--long-steps heun steps) while --max-queue edits wait, and one more is
         submitted: how long its "Queue is full" refusal took. Then the last waiting edit is
         cancelled and another submitted: whether it got the freed place, how long that took, and
         whether the cancelled edit ever ran (its result file would exist).
  soak   --soak edits one after another through one client: RSS after each, its growth over the
         second half, and the app's files (result files, all of Gradio's cache) along the way.

    python benchmarks/load.py -o load-out                                  # docs/reliability.md
    python benchmarks/load.py -o out --users 10 --edits 3 --soak 30 --scenarios users,soak

tests/test_app_server.py runs `serve` and `concurrent_users` at CI size. RSS is read from
/proc (Linux).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from mimicbrush.fileio import write_atomic

SCENARIOS = ("users", "queue", "soak")
LONG_SCHEDULER = "heun"  # 2·steps−1 U-Net calls: the longest edit the app allows (200 steps: 399 calls)
WAIT = 600  # seconds: the longest any one job may take before the run is declared hung


@dataclass
class App:
    """A running `mimicbrush app` process."""

    url: str
    process: subprocess.Popen
    cache: Path  # its GRADIO_TEMP_DIR: Gradio's cache, with the app's results folder inside
    auth: tuple[str, str] | None = None

    def client(self, **options):
        from gradio_client import Client

        return Client(self.url, auth=self.auth, verbose=False, **options)

    def rss_mb(self) -> float:
        """The app's resident memory (MiB), from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for process {self.process.pid}")

    def result_files(self) -> set[Path]:
        """The app's own result files (results.py bounds them)."""
        return set(self.cache.glob("mimicbrush-results-*/mimicbrush-*.png"))

    def cache_files(self) -> int:
        """Every file in Gradio's cache (uploads, overlays, and the app's results)."""
        return sum(1 for path in self.cache.rglob("*") if path.is_file())


@contextmanager
def serve(options: list[str], cache: Path, log: Path, auth: tuple[str, str] | None = None,
          env: dict | None = None, start_timeout: float = 300):
    """Run `mimicbrush app OPTIONS` on a free port until the block ends; yields an App."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(cache), **(env or {})}
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "mimicbrush", "app", *options, "--port", str(port)],
                                   stdout=output, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not start in {start_timeout:.0f} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield App(url, process, cache, auth)
    finally:
        stop(process)


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """A server this script started: politely, then for good."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


# ---------------------------------------------------------------------------------------------
# requests


@dataclass(frozen=True)
class Request:
    source: str
    reference: str
    box: str
    seed: int  # distinct per request: the result file's name carries it (mimicbrush-SEED-*.png)
    steps: int


def make_requests(folder: Path, count: int, first_seed: int, steps: int) -> list[Request]:
    """`count` different edits: three source sizes, boxes that move, one seed each."""
    folder.mkdir(parents=True, exist_ok=True)
    reference = _picture(folder / "reference.png", 64, 64, seed=1)
    sources = [_picture(folder / f"source-{w}x{h}.png", w, h, seed=2 + i)
               for i, (w, h) in enumerate([(120, 80), (96, 96), (80, 112)])]
    return [Request(str(sources[i % 3]), str(reference), f"{8 + 4 * (i % 5)},8,{40 + 4 * (i % 5)},48",
                    first_seed + i, steps) for i in range(count)]


def _picture(path: Path, width: int, height: int, seed: int) -> Path:
    """A smooth random picture (so a re-encoding would show), saved as PNG."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    PIL.Image.fromarray(small).resize((width, height), PIL.Image.BICUBIC).save(path)
    return path


def submit(client, request: Request, steps: int | None = None, scheduler: str = "ddim"):
    from gradio_client import handle_file

    return client.submit(source=handle_file(request.source), mask=None, box=request.box,
                         reference=handle_file(request.reference), reference_box="", keep_shape=False, zoom="off",
                         steps=steps or request.steps, guidance=5.0, seed=request.seed, scheduler=scheduler,
                         api_name="/edit")


def pixel_digest(path: str) -> str:
    """sha256 of the decoded pixels (a PNG's bytes could differ with the same pixels)."""
    with PIL.Image.open(path) as image:
        return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def wait_until(condition, what: str, timeout: float = WAIT) -> float:
    """Seconds until `condition()` held."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


RUNNING = ("PROCESSING", "PROGRESS")  # gradio_client's codes for a job the server runs (PROGRESS: with a progress update)


def _status(job):
    return job.status().code.name


# ---------------------------------------------------------------------------------------------
# scenarios


def concurrent_users(app: App, requests: list[Request], users: int, close_wait: float = 60) -> dict:
    """`users` clients at once, each making its share of `requests` one after another; then the
    same requests alone, one at a time; then every client closed."""
    from gradio_client import Client  # noqa: F401  (fail here, not in a thread, if it is missing)

    shares = [requests[index::users] for index in range(users)]
    before = app.result_files()
    clients = [app.client() for _ in range(users)]
    rss = {"before": app.rss_mb()}

    def one_user(client, share) -> dict[int, str]:
        """seed -> the result's pixel digest, or "lost: why"."""
        outcome = {}
        for request in share:
            try:
                result, _, _, info = submit(client, request).result(timeout=WAIT)
                outcome[request.seed] = pixel_digest(result) if info["seed"] == request.seed else "lost: another seed"
            except Exception as error:  # a lost job: counted, and the others go on
                outcome[request.seed] = f"lost: {type(error).__name__}: {error}"
        return outcome

    start = time.monotonic()
    with ThreadPoolExecutor(users) as pool:
        together = {}
        for outcome in pool.map(one_user, clients, shares):
            together.update(outcome)
    load_seconds = time.monotonic() - start
    rss["after_load"] = app.rss_mb()
    files_after_load = len(app.result_files() - before)

    alone_client = app.client()
    alone = one_user(alone_client, requests)
    rss["after_repeat"] = app.rss_mb()
    files_after_repeat = len(app.result_files() - before)

    for client in [*clients, alone_client]:
        client.close()
    # each session's files go when the server notices the client left (its next heartbeat)
    try:
        close_seconds = wait_until(lambda: not (app.result_files() - before), "the sessions' files to go",
                                   timeout=close_wait)
    except TimeoutError:
        close_seconds = None
    lost = {seed: outcome for seed, outcome in together.items() if outcome.startswith("lost")}
    return {
        "users": users,
        "edits": len(requests),
        "steps": requests[0].steps,
        "load_seconds": round(load_seconds, 2),
        "lost": len(lost),
        "lost_detail": lost,
        "differ_from_alone": sum(1 for seed, digest in together.items() if seed not in lost and digest != alone[seed]),
        "rss_mb": {key: round(value, 1) for key, value in rss.items()},
        "rss_growth_under_load_mb": round(rss["after_load"] - rss["before"], 1),
        "rss_growth_over_repeat_mb": round(rss["after_repeat"] - rss["after_load"], 1),
        "result_files_after_load": files_after_load,
        "result_files_after_repeat": files_after_repeat,
        "result_files_after_close": len(app.result_files() - before),
        "seconds_until_closed_sessions_files_went": None if close_seconds is None else round(close_seconds, 2),
    }


def full_queue(app: App, requests: list[Request], limit: int, long_steps: int) -> dict:
    """Fill the queue behind one long edit, measure the refusal, cancel a waiting edit and see
    whether its place is given to the next one. `requests` needs limit + 3 entries."""
    from gradio_client.utils import QueueError

    long_request, *waiting_requests = requests[: limit + 1]
    refused_request, newcomer_request = requests[limit + 1 : limit + 3]
    # one client for the long edit, one for the waiting ones, one for the edit cancelled (Gradio's
    # cancel stops every running job of the cancelling Client's session on the endpoint)
    runner, victim_client, other_client = (app.client() for _ in range(3))
    # a Client runs each job on a worker thread of its own until the job ends (40 by default)
    waiting_client = app.client(max_workers=limit + 1)
    try:
        long_job = submit(runner, long_request, steps=long_steps, scheduler=LONG_SCHEDULER)
        wait_until(lambda: _status(long_job) in RUNNING, "the long edit to start")
        long_started = time.monotonic()
        waiting = [submit(waiting_client, request) for request in waiting_requests[:-1]]
        victim = submit(victim_client, waiting_requests[-1])

        def queue_full() -> bool:
            if _status(long_job) not in RUNNING:
                raise RuntimeError("the long edit ended before the queue was full: raise --long-steps")
            return all(_status(job) == "IN_QUEUE" for job in [*waiting, victim])

        waiting_seconds = wait_until(queue_full, f"{limit} edits to wait")

        start = time.monotonic()
        refused_job = submit(other_client, refused_request)
        try:
            refused_job.result(timeout=WAIT)
            refusal = "accepted"
        except QueueError as error:
            refusal = str(error)
        refusal_seconds = time.monotonic() - start

        victim.cancel()
        start = time.monotonic()
        newcomer = submit(other_client, newcomer_request)
        admitted_status = None
        while admitted_status not in ("IN_QUEUE", *RUNNING, "FINISHED", "CANCELLED"):
            admitted_status = _status(newcomer)
            if newcomer.done() and newcomer.exception() is not None:
                admitted_status = f"{type(newcomer.exception()).__name__}: {newcomer.exception()}"
                break
            time.sleep(0.02)
        admitted_seconds = time.monotonic() - start
        long_still_running = _status(long_job) in RUNNING

        long_job.result(timeout=WAIT)
        long_seconds = time.monotonic() - long_started
        for job in [*waiting, newcomer]:
            job.result(timeout=WAIT)
        cancelled_ran = any(app.cache.glob(f"mimicbrush-results-*/mimicbrush-{waiting_requests[-1].seed}-*.png"))
        return {
            "limit": limit,
            "long_steps": long_steps,
            "long_scheduler": LONG_SCHEDULER,
            "long_edit_seconds": round(long_seconds, 1),
            "seconds_to_fill": round(waiting_seconds, 2),
            "refusal": refusal,
            "refusal_seconds": round(refusal_seconds, 3),
            "newcomer_after_cancel": admitted_status,
            "newcomer_admitted_seconds": round(admitted_seconds, 3),
            "long_edit_still_running_then": long_still_running,
            "cancelled_edit_ran": cancelled_ran,
        }
    finally:
        for client in (runner, waiting_client, victim_client, other_client):
            client.close()


def soak(app: App, requests: list[Request], every: int = 50) -> dict:
    """The requests one after another through one client; RSS after each, files every `every`."""
    before = app.result_files()
    client = app.client()
    rss = [app.rss_mb()]
    files = []
    start = time.monotonic()
    for number, request in enumerate(requests, 1):
        submit(client, request).result(timeout=WAIT)
        rss.append(app.rss_mb())
        if number % every == 0 or number == len(requests):
            files.append({"edits": number, "result_files": len(app.result_files() - before),
                          "gradio_cache_files": app.cache_files()})
    seconds = time.monotonic() - start
    client.close()
    half = len(requests) // 2
    return {
        "edits": len(requests),
        "steps": requests[0].steps,
        "seconds_per_edit": round(seconds / len(requests), 3),
        "rss_mb": {"start": round(rss[0], 1), "half": round(rss[half], 1), "end": round(rss[-1], 1),
                   "max": round(max(rss), 1)},
        "rss_growth_first_half_mb": round(rss[half] - rss[0], 1),
        "rss_growth_second_half_mb": round(rss[-1] - rss[half], 1),
        "files": files,
    }


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for load.json (and the app's log)")
    parser.add_argument("--model", help="the model the app serves (default: the bundled demo model)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per edit (default 2)")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--edits", type=int, default=3, help="edits per user (default 3)")
    parser.add_argument("--max-queue", type=int, default=64, help="the app's queue limit (default 64, the app's own)")
    parser.add_argument("--long-steps", type=int, default=200,
                        help="heun steps of the edit that holds the model while the queue fills (default 200, "
                        "the app's most)")
    parser.add_argument("--soak", type=int, default=200, help="edits in the soak (default 200)")
    parser.add_argument("--warm-up", type=int, default=3, help="edits before anything is measured (default 3)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"error: unknown scenario {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    args.output.mkdir(parents=True, exist_ok=True)
    options = ["--no-examples", "--max-queue", str(args.max_queue), *(["--model", args.model] if args.model else [])]
    report = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": list(os.getloadavg())},
        "model": args.model or "bundled demo model",
        "settings": {key: value for key, value in vars(args).items() if key != "output"} | {"output": str(args.output)},
    }
    with tempfile.TemporaryDirectory(prefix="mimicbrush-load-") as work:
        work = Path(work)
        with serve(options, work / "gradio", args.output / "app.log") as app:
            seed = 1000
            report["rss_mb_at_start"] = round(app.rss_mb(), 1)
            warm_client = app.client()
            for request in make_requests(work / "images", args.warm_up, seed, args.steps):
                submit(warm_client, request).result(timeout=WAIT)
            warm_client.close()
            seed += args.warm_up
            if "users" in scenarios:
                print(f"users: {args.users} × {args.edits} edits", file=sys.stderr, flush=True)
                count = args.users * args.edits
                report["users"] = concurrent_users(app, make_requests(work / "images", count, seed, args.steps),
                                                   args.users)
                seed += count
            if "queue" in scenarios:
                print(f"queue: {args.max_queue} waiting behind a {args.long_steps}-step edit", file=sys.stderr, flush=True)
                report["queue"] = full_queue(app, make_requests(work / "images", args.max_queue + 3, seed, args.steps),
                                             args.max_queue, args.long_steps)
                seed += args.max_queue + 3
            if "soak" in scenarios:
                print(f"soak: {args.soak} edits", file=sys.stderr, flush=True)
                report["soak"] = soak(app, make_requests(work / "images", args.soak, seed, args.steps))
            report["rss_mb_at_end"] = round(app.rss_mb(), 1)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    text = json.dumps(report, indent=1)
    write_atomic(args.output / "load.json", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
