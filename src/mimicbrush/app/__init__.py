"""MimicBrush's web app (Gradio): an editor page and an API for gradio_client.

    service.py   the edit handler: one model loaded once, limits, mask overlay, result files
    ui.py        the page: brush/box on the source, reference, settings, progress, history
    api.py       /edit and /info for gradio_client (hidden components, never on the page)
    demo_examples.py  the bundled examples (mimicbrush.examples) as files for the page

    from mimicbrush.app import build_app, launch
    demo = build_app(EditService.load("mimicbrush-fp16"))
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
    "build_app", "launch",
]

QUEUE_SIZE = 64  # requests waiting at most; more get "the queue is full" instead of waiting for ever


def build_app(service: EditService, *, max_file_size: str | int | None = DEFAULT_MAX_FILE_SIZE,
              with_examples: bool = True, examples_dir: str | Path | None = None):
    """The gr.Blocks app (queue enabled, one edit at a time) around a loaded EditService. A
    service without an output folder gets a temporary one (removed with the service): the page's
    downloads are files."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    if service.output_dir is None:
        service.output_dir = Path(tempfile.mkdtemp(prefix="mimicbrush-app-"))
        weakref.finalize(service, shutil.rmtree, str(service.output_dir), True)

    from .api import build_api
    from .ui import CSS, build_ui

    if with_examples and examples_dir is None:
        examples_dir = service.output_dir / "examples"
    with gr.Blocks(title="MimicBrush", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        build_ui(service, str(examples_dir) if with_examples else None)
        build_api(service, max_file_size)
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    demo.mimicbrush_service = service
    demo.mimicbrush_max_file_size = max_file_size
    demo.mimicbrush_css = CSS
    return demo


def launch(demo, host: str = "127.0.0.1", port: int = 7860, **kwargs):
    """Serve `demo` (from build_app) on host:port; kwargs go to gr.Blocks.launch."""
    from .ui import offline_theme

    service = demo.mimicbrush_service
    return demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=demo.mimicbrush_max_file_size,
        allowed_paths=[str(service.output_dir)],
        show_error=True,
        share=False,
        theme=offline_theme(),
        css=demo.mimicbrush_css,
        footer_links=["api", "settings"],
        **kwargs,
    )

