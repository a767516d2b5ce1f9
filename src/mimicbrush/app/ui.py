"""The Gradio page: source editor with a brush (or a box), reference, settings, result, history.

Every event here is private (not part of the API); the API lives in api.py. The handlers convert
the editor's values into an EditRequest and the service's InputErrors into gr.Error popups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import gradio as gr

from ..errors import InputError
from . import demo_examples as app_examples
from . import results
from .service import MAX_GUIDANCE, MAX_STEPS, EditRequest, EditService, box_preview, mask_from_layers
from .. import edit_options, imaging, samplers

# Every event that runs the model shares this concurrency group, so the UI and the API queue
# behind the same single model.
MODEL_QUEUE = "mimicbrush-model"
HISTORY_LIMIT = results.PER_SESSION  # newest edits kept in a session's history: the files kept for it

INTRO = """\
# MimicBrush
Paint the region of the **source** to repaint (or draw a box), give a **reference**, and the region
is repainted by imitating the matching part of the reference. Optionally paint the part of the
reference to imitate. *Keep the original shape* transfers texture onto the source's shape.
"""

CSS = """
#result img, #overlay img, #depth img { object-fit: contain; }
"""


def offline_theme() -> gr.themes.Base:
    """The default look with system fonts (the default theme fetches web fonts; this app works
    offline)."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
    )


def _background(value) -> np.ndarray | None:
    """The editor's background (H×W×3/4 uint8) or None when nothing is uploaded."""
    if not value:
        return None
    background = value.get("background") if isinstance(value, dict) else value
    if background is None:
        return None
    return np.asarray(background)


def editor_inputs(value, box: str = "", what: str = "source"):
    """(image, painted mask or None) from an ImageEditor value; `box` ("x0,y0,x1,y1", may be
    empty) is added to the painted mask."""
    background = _background(value)
    if background is None:
        return None, None
    size = (background.shape[1], background.shape[0])
    painted = mask_from_layers(value.get("layers") if isinstance(value, dict) else None, size)
    if box and box.strip():
        try:
            from .service import box_mask

            boxed = box_mask(box.strip(), size)
        except InputError as error:
            raise InputError(f"The {what} box: {error}") from None
        painted = boxed if painted is None else painted | boxed
    return background, painted


def uploaded_mask(path: str, size: tuple[int, int], max_side: int) -> np.ndarray | None:
    """H×W bool mask from an uploaded mask file (> 128, or its alpha), None if it marks nothing."""
    from .service import check_limits

    image = imaging.open_image(path, "mask")
    check_limits(image, "mask", max_side)
    try:
        return imaging.binary_mask(imaging.load_mask(image, size)).astype(bool)
    except InputError as error:
        if "empty" in str(error):
            return None
        raise


def build_ui(service: EditService, examples_dir: str | None = None, with_logout: bool = False) -> None:
    """Add the editor page to the current gr.Blocks (for an app behind a login, with who is logged
    in and a Log out button: on a shared workstation the next person should not edit as the last)."""
    gr.Markdown(INTRO)
    if with_logout:
        add_account_bar()
    history_state = gr.State([])
    source_array = gr.State(None)  # the source as uploaded, for drawing a box on it
    corner_state = gr.State(None)  # first corner of a box being drawn
    brush = gr.Brush(default_size="auto", colors=["rgb(255, 48, 48)"], color_mode="fixed")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            source = gr.ImageEditor(
                label="Source: paint the region to repaint (brush size: the brush tool's slider)",
                type="numpy", image_mode="RGBA", format="png", sources=("upload", "clipboard"),
                brush=brush, eraser=gr.Eraser(), layers=False, transforms=(),
                canvas_size=(640, 640), elem_id="source",
            )
            with gr.Group(elem_id="box-panel"):
                with gr.Row(equal_height=True):
                    box_view = gr.Image(
                        label="…or draw a box: click two opposite corners", interactive=False, type="numpy",
                        elem_id="box-view", buttons=[], height=220,
                    )
                    mask_file = gr.Image(label="…or upload a mask (white = edit)", type="filepath", image_mode=None,
                                         sources=["upload"], elem_id="mask-file", height=220)
                with gr.Row(equal_height=True):
                    box = gr.Textbox(label="Box x0,y0,x1,y1 (source pixels)", placeholder="e.g. 120,80,260,200",
                                     elem_id="box", scale=3)
                    show_box = gr.Button("Show the source to draw on", scale=1, size="sm", elem_id="show-box")
                    clear_box = gr.Button("Clear box", scale=1, size="sm")
            reference = gr.ImageEditor(
                label="Reference (optional: paint the part to imitate)",
                type="numpy", image_mode="RGBA", format="png", sources=("upload", "clipboard"),
                brush=gr.Brush(default_size="auto", colors=["rgb(48, 160, 255)"], color_mode="fixed"),
                eraser=gr.Eraser(), layers=False, transforms=(), canvas_size=(640, 640), elem_id="reference",
            )
            reference_box = gr.Textbox(label="Reference region x0,y0,x1,y1 (optional, instead of painting)",
                                       elem_id="reference-box")
            more_references = gr.File(label="More references (optional): imitated together with the one above",
                                      file_count="multiple", file_types=["image"], elem_id="more-references")
            with gr.Row():
                keep_shape = gr.Checkbox(label="Keep the original shape (texture transfer)", elem_id="keep-shape")
                zoom = gr.Checkbox(label="Auto zoom-in on small regions", elem_id="zoom")
            with gr.Accordion("Settings", open=True):
                steps = gr.Slider(1, MAX_STEPS, value=edit_options.DEFAULT_STEPS, step=1, label="Steps", elem_id="steps")
                # only the schedulers that can sample the loaded model (samplers.supported_samplers)
                scheduler = gr.Dropdown(service.schedulers, value=samplers.DEFAULT_SAMPLER, label="Scheduler",
                                        info="unipc at 12 steps agreed with ddim at 50 to 30 dB or more on "
                                        "the bundled model (docs/performance.md)", elem_id="scheduler")
                guidance = gr.Slider(0, MAX_GUIDANCE, value=edit_options.DEFAULT_GUIDANCE, step=0.5, label="Guidance", elem_id="guidance")
                seed = gr.Number(value=-1, precision=0, minimum=-1, label="Seed (-1: random)", elem_id="seed")
            run = gr.Button("Repaint", variant="primary", elem_id="run")
        with gr.Column(scale=1):
            result = gr.Image(label="Result", type="filepath", format="png", interactive=False, elem_id="result",
                              buttons=["download", "fullscreen"])
            download = gr.DownloadButton("Download the result (PNG, full resolution)", visible=False,
                                         elem_id="download")
            info = gr.Markdown(elem_id="info")
            with gr.Row():
                overlay = gr.Image(label="Mask", interactive=False, format="png", elem_id="overlay")
                depth = gr.Image(label="Depth (shape control)", interactive=False, format="png", elem_id="depth")
            history = gr.Gallery(label="This session's edits (newest first)", columns=4, height=260, format="png",
                                 object_fit="contain", preview=False, elem_id="history")

    # --- box drawing ----------------------------------------------------------------------------

    def source_image(value):
        background = _background(value)
        return None if background is None else np.asarray(imaging.load_image(background))

    def on_show(value, text):
        image = source_image(value)
        if image is None:
            raise gr.Error("Upload a source image first.", print_exception=False)
        return image, on_box_text(image, text), None

    def on_box_click(image, corner, evt: gr.SelectData):
        if image is None:
            raise gr.Error("Upload a source image first.")
        x, y = (int(v) for v in evt.index)
        if corner is None:
            return box_preview(image, corner=(x, y)), gr.update(), (x, y)
        (cx, cy) = corner
        x0, x1 = sorted((cx, x))
        y0, y1 = sorted((cy, y))
        height, width = image.shape[:2]
        selected = (max(x0, 0), max(y0, 0), min(x1 + 1, width), min(y1 + 1, height))
        text = ",".join(str(v) for v in selected)
        return box_preview(image, box=selected), text, None

    def on_box_text(image, text):
        if image is None:
            return None
        if not text or not text.strip():
            return image
        try:
            return box_preview(image, box=imaging.parse_box(text.strip(), (image.shape[1], image.shape[0])))
        except InputError:
            return image  # still being typed

    # The source editor is an input of no event but the edit (and this explicit button): it hands
    # its painted state to the first event that reads it after a change, and listeners on its own
    # upload events race with the examples loading it.
    show_box.click(on_show, [source, box], [source_array, box_view, corner_state], api_visibility="private",
                   queue=False)
    box_view.select(on_box_click, [source_array, corner_state], [box_view, box, corner_state],
                    api_visibility="private", queue=False)
    box.input(on_box_text, [source_array, box], box_view, api_visibility="private", queue=False)
    clear_box.click(lambda image: (image, "", None), source_array, [box_view, box, corner_state],
                    api_visibility="private", queue=False)

    # --- the edit --------------------------------------------------------------------------------

    def on_run(source_value, box_text, mask_path, reference_value, reference_box_text, more_paths, keep, zoom_in,
               n_steps, scale, seed_value, sampler_name, past, request: gr.Request, progress=gr.Progress()):
        try:
            image, mask = editor_inputs(source_value, box_text or "", "source")
            if image is None:
                raise InputError("Upload a source image first: the photo whose region you want to repaint.")
            if mask_path:
                uploaded = uploaded_mask(mask_path, (image.shape[1], image.shape[0]), service.max_side)
                mask = uploaded if mask is None else (mask | uploaded if uploaded is not None else mask)
            if mask is None:
                raise InputError(
                    "The mask is empty: paint the region to edit on the source with the brush, or draw a box."
                )
            reference_image, hint = editor_inputs(reference_value, "", "reference")
            if reference_box_text and reference_box_text.strip():
                hint = reference_box_text.strip()
            if more_paths:  # the others are used whole: no region to mark on them
                reference_image = [reference_image, *(str(path) for path in more_paths)]
                hint = [hint] + [None] * len(more_paths)
            edit = EditRequest(
                source=image, mask=mask, reference=reference_image, reference_box=hint,
                keep_shape=bool(keep), steps=int(n_steps), guidance=float(scale),
                seed=None if seed_value is None or seed_value < 0 else int(seed_value),
                zoom="auto" if zoom_in else "off", scheduler=sampler_name or samplers.DEFAULT_SAMPLER,
            )
            outcome = service.run(edit, on_step=lambda done, total: progress(
                (done, total), desc="Repainting", unit="steps"), session=request.session_hash)
        except InputError as error:
            raise gr.Error(str(error), print_exception=False) from None
        caption = (f"seed {outcome.seed}, {outcome.settings['steps']} {outcome.settings['scheduler']} steps, "
                   f"guidance {outcome.settings['guidance']:g}")
        if outcome.settings["keep_shape"]:
            caption += ", shape kept"
        past = updated_history(past, str(outcome.path), caption)
        return (
            str(outcome.path),
            gr.DownloadButton(value=str(outcome.path), visible=True),
            outcome.summary(),
            outcome.overlay,
            outcome.depth,
            past,
            past,
        )

    run.click(
        on_run,
        [source, box, mask_file, reference, reference_box, more_references, keep_shape, zoom, steps, guidance, seed,
         scheduler,
         history_state],
        [result, download, info, overlay, depth, history_state, history],
        api_visibility="private", concurrency_limit=1, concurrency_id=MODEL_QUEUE,
        show_progress_on=[result],
    )

    # --- examples --------------------------------------------------------------------------------

    if examples_dir is not None:
        add_examples(examples_dir, [source, box, mask_file, reference, reference_box, keep_shape, zoom])


def add_account_bar() -> None:
    """Who is logged in (Gradio's request.username, filled in when the page loads) and a Log out
    link, for an app behind a login."""
    with gr.Row(equal_height=False, elem_id="account"):
        user = gr.Markdown(elem_id="account-user")
        gr.Button("Log out", link="logout", size="sm", scale=0, min_width=90, elem_id="logout")

    def who(request: gr.Request) -> str:
        return f"Logged in as **{request.username}**"

    gr.on(None, who, None, user, api_visibility="private", queue=False, show_progress="hidden")


def updated_history(past: list | None, path: str, caption: str) -> list:
    """The session's history with the newest result first, HISTORY_LIMIT long. The session keeps
    that many result files (results.py), but Gradio's day-old sweep may have taken an older one:
    a missing file would fail the whole update, so it leaves the history."""
    kept = [entry for entry in past or [] if Path(entry[0]).exists()]
    return [(path, caption), *kept][:HISTORY_LIMIT]


def end_sessions(demo: gr.Blocks, service: EditService) -> None:
    """When a session ends (its tab is closed, its gradio_client Client closes), its result files go."""

    def end_session(request: gr.Request):
        service.results.end_session(request.session_hash)

    demo.unload(end_session)


def example_values(row: list) -> tuple:
    """An example row as values for [source, box, mask file, reference, reference box, keep shape,
    zoom]: the editors get a fresh value with no painted layers, so strokes from before go."""
    source_path, box_text, mask_path, reference_path, keep = row

    def editor(path):
        return {"background": path, "layers": [], "composite": path}

    return editor(source_path), box_text, mask_path, editor(reference_path), "", bool(keep), False


def add_examples(examples_dir: str, targets: list) -> gr.Dataset:
    """The bundled examples as a gallery of thumbnails; a click loads one into `targets`.

    Not gr.Examples: with each value it re-sends the inputs' constructor settings, which makes the
    image editors rebuild their canvases, and that keeps its click event pending for a second or
    two; the event's trigger_mode is Gradio's default "once", so a click on another example in that
    time was dropped and the page kept the older example. Here only values are sent, the editors
    keep their canvases, and the last click always wins.
    """
    rows, labels = app_examples.write_examples(examples_dir)
    gallery = gr.Dataset(
        components=[gr.Image(visible=False), gr.Image(visible=False), gr.Textbox(visible=False)],
        headers=["Source", "Reference", "Example"],
        samples=[[row[0], row[3], label] for row, label in zip(rows, labels)],
        label="Examples (one click loads them)", type="index", elem_id="examples", samples_per_page=8,
    )
    gallery.click(lambda index: example_values(rows[index]), gallery, targets, api_visibility="private",
                  queue=False, trigger_mode="always_last", show_progress="hidden")
    return gallery
