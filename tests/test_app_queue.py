"""The app's queue and result files on a live server (in process, tiny model): a full queue refuses
at once, a cancelled waiting edit frees its place and never runs, and each session keeps only its
newest results, which go when the session ends. The running edit is held on a gate, so what is
waiting is known exactly instead of raced against the model."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import PIL.Image
import pytest

pytest.importorskip("gradio", reason="the app extra (gradio) is not installed: pip install -e '.[app]'")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed (the test extra)")

from gradio_client.client import Status  # noqa: E402
from gradio_client.utils import QueueError  # noqa: E402

from mimicbrush.app import EditService, build_app, launch  # noqa: E402
from mimicbrush.app.results import ResultFiles  # noqa: E402
from tiny_models import tiny_pipeline  # noqa: E402

QUEUE_SIZE = 2  # the app's limit here (64 in use): enough to fill with a handful of requests
PER_SESSION = 2  # results kept per session here (24 in use)
WAIT = 60  # seconds: a generous bound for anything that should take one (the machine is shared)


class GatedService(EditService):
    """An EditService whose edits wait for `gate` (while `gate_closed`), recording each seed that
    starts and each that completes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.started: list[int] = []
        self.completed: list[int] = []

    def run(self, request, on_step=None, session=""):
        self.started.append(request.seed)
        if not self.gate.wait(WAIT):
            raise TimeoutError("the test never opened the gate")
        result = super().run(request, on_step, session)
        self.completed.append(request.seed)
        return result


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(service, url) of a live app with a queue of QUEUE_SIZE, keeping PER_SESSION results a session."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("gradio-cache")
        patch.setenv("GRADIO_TEMP_DIR", str(cache))
        # a closed client's session ends at its next heartbeat: 1 s here instead of Gradio's 15
        patch.setenv("GRADIO_HEARTBEAT_INTERVAL", "1")
        service = GatedService(tiny_pipeline(), model_label="tiny", max_side=512,
                               results=ResultFiles(per_session=PER_SESSION))
        demo = build_app(service, with_examples=False, queue_size=QUEUE_SIZE)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        launch(demo, port=port, quiet=True, prevent_thread_lock=True)
        try:
            yield service, demo.local_url
        finally:
            service.gate.set()
            demo.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    source, reference = folder / "source.png", folder / "reference.png"
    PIL.Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(source)
    PIL.Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(reference)
    return str(source), str(reference)


def submit(client, images, seed: int):
    source, reference = images
    handle = gradio_client.handle_file
    return client.submit(source=handle(source), mask=None, box="30,20,60,44", reference=handle(reference),
                         reference_box="", keep_shape=False, zoom="off", steps=2, guidance=5.0, seed=seed,
                         api_name="/edit")


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_full_queue_refuses_at_once_and_a_cancelled_edit_frees_its_place(server, images):
    service, url = server
    service.gate.clear()
    # one Client per user, as people are: Gradio's cancel stops every job of the Client's session
    # on the endpoint, the running one included (docs/app.md, "Queue")
    users = [gradio_client.Client(url, verbose=False) for _ in range(5)]
    try:
        running = submit(users[0], images, seed=1)
        wait_for(lambda: service.started == [1], "the first edit to start")
        waiting = [submit(users[1], images, seed=2), submit(users[2], images, seed=3)]
        wait_for(lambda: all(job.status().code == Status.IN_QUEUE for job in waiting), "two edits to wait")

        refused = submit(users[3], images, seed=4)
        with pytest.raises(QueueError, match="Queue is full"):
            refused.result(timeout=WAIT)  # a hang would be a TimeoutError instead

        assert waiting[1].cancel()
        wait_for(lambda: waiting[1].status().code == Status.CANCELLED, "the cancel")
        admitted = submit(users[4], images, seed=5)  # the place the cancelled edit held
        wait_for(lambda: admitted.status().code == Status.IN_QUEUE, "the fifth edit to wait in the freed place")

        service.gate.set()
        seeds = [job.result(timeout=WAIT)[3]["seed"] for job in (running, waiting[0], admitted)]
        assert seeds == [1, 2, 5]
        assert sorted(service.completed[-3:]) == [1, 2, 5] and 3 not in service.started  # never ran
    finally:
        service.gate.set()
        for user in users:
            user.close()


def test_each_session_keeps_its_newest_results_until_it_ends(server, images):
    service, url = server
    service.gate.set()
    first, second = (gradio_client.Client(url, verbose=False) for _ in range(2))
    try:
        for seed in (11, 12, 13):
            submit(first, images, seed).result(timeout=WAIT)
        submit(second, images, 21).result(timeout=WAIT)
        kept = {path.name.split("-")[1] for path in service.output_dir.glob("mimicbrush-*.png")}
        assert {"12", "13", "21"} <= kept and "11" not in kept  # PER_SESSION newest of the first session

        first.close()  # its session ends at the server's next heartbeat
        wait_for(lambda: not any(service.output_dir.glob("mimicbrush-1[123]-*.png")), "the session's files to go")
        assert any(service.output_dir.glob("mimicbrush-21-*.png"))  # another session's stay
    finally:
        first.close()
        second.close()
