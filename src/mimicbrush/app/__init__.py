"""MimicBrush's web app (Gradio): an editor page and an API for gradio_client.

    service.py   the edit handler: one model loaded once, limits, mask overlay, result files
    results.py   which result files are kept (per session, in all) and when the rest are deleted
    accounts.py  the logins (--auth, --auth-file) for Gradio's login page
    ui.py        the page: brush/box on the source, reference, settings, progress, history
    api.py       /edit and /info for gradio_client (hidden components, never on the page)
    demo_examples.py  the bundled examples (mimicbrush.examples) as files for the page

    from mimicbrush.app import build_app, launch
    demo = build_app(EditService.load("mimicbrush-fp16"), auth=[("alice", "secret")])
    launch(demo, host="127.0.0.1", port=7860)

Gradio is an optional dependency (`pip install mimicbrush[app]`); only this package imports it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

from .service import DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_SIDE, EditRequest, EditResult, EditService

__all__ = [
    "DEFAULT_MAX_FILE_SIZE", "DEFAULT_MAX_SIDE", "EditRequest", "EditResult", "EditService",
    "QUEUE_SIZE", "build_app", "launch",
]

QUEUE_SIZE = 64  # requests waiting at most; more get "the queue is full" instead of waiting for ever
# Gradio's own cache (uploads, overlays, depth previews): every hour, files older than a day go
CACHE_SWEEP = (3600, 24 * 3600)


def build_app(service: EditService, *, max_file_size: str | int | None = DEFAULT_MAX_FILE_SIZE,
              with_examples: bool = True, examples_dir: str | Path | None = None, queue_size: int = QUEUE_SIZE,
              auth: list[tuple[str, str]] | None = None):
    """The gr.Blocks app (queue enabled, one edit at a time, at most `queue_size` waiting) around
    a loaded EditService. With `auth` [(user, password), ...] `launch` serves it behind Gradio's
    login (the page and the API alike) and the page has a Log out button.

    A service without an output folder gets a temporary one inside Gradio's cache (removed with
    the service), so Gradio serves each result from there instead of copying it; the service's
    `results` bound the files in it, and a session's go when it ends."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from .api import build_api
    from .ui import CSS, build_ui, end_sessions

    with gr.Blocks(title="MimicBrush", analytics_enabled=False, delete_cache=CACHE_SWEEP) as demo:
        if service.output_dir is None:
            Path(demo.GRADIO_CACHE).mkdir(parents=True, exist_ok=True)
            service.output_dir = Path(tempfile.mkdtemp(prefix="mimicbrush-results-", dir=demo.GRADIO_CACHE))
            weakref.finalize(service, shutil.rmtree, str(service.output_dir), True)
        if with_examples and examples_dir is None:
            examples_dir = service.output_dir / "examples"
        build_ui(service, str(examples_dir) if with_examples else None, with_logout=bool(auth))
        build_api(service, max_file_size)
        end_sessions(demo, service)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    demo.mimicbrush_service = service
    demo.mimicbrush_max_file_size = max_file_size
    demo.mimicbrush_auth = list(auth) if auth else None
    demo.mimicbrush_css = CSS
    return demo


def launch(demo, host: str = "127.0.0.1", port: int = 7860, **kwargs):
    """Serve `demo` (from build_app) on host:port, behind a login if build_app was given `auth`;
    kwargs go to gr.Blocks.launch."""
    from .ui import offline_theme

    service = demo.mimicbrush_service
    return demo.launch(
        server_name=host,
        server_port=port,
        auth=demo.mimicbrush_auth,
        max_file_size=demo.mimicbrush_max_file_size,
        allowed_paths=[str(service.output_dir)],
        show_error=True,
        share=False,
        theme=offline_theme(),
        css=demo.mimicbrush_css,
        footer_links=["api", "settings"],
        **kwargs,
    )

