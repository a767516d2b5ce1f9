"""The app's API for gradio_client: the same edit as the page, with plain files in and out.

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    result, depth, overlay, info = client.predict(
        source=handle_file("photo.jpg"), mask=handle_file("mask.png"), box="",
        reference=handle_file("ref.jpg"), reference_box="", keep_shape=False, zoom="off",
        steps=50, guidance=5.0, seed=0, scheduler="ddim", api_name="/edit")

Several references: `more_references=[handle_file("ref2.jpg"), ...]` (imitated together with
`reference`) and optionally `more_reference_boxes="x0,y0,x1,y1; ; x0,y0,x1,y1"`, one entry per
further reference, in order (an empty entry: the whole reference).

`result` is the path of the downloaded PNG (full resolution, the settings in its metadata).
`scheduler` is optional (default ddim); /info lists the ones the loaded model supports.
The endpoints are registered on hidden components, so they never show on the page.
"""

from __future__ import annotations

import gradio as gr

from .. import __version__, edit_options
from ..errors import InputError
from .service import DEFAULT_MAX_FILE_SIZE, MAX_GUIDANCE, MAX_STEPS, EditRequest, EditService
from .ui import MODEL_QUEUE


def build_api(service: EditService, max_file_size: str | int | None = DEFAULT_MAX_FILE_SIZE) -> None:
    """Add the /edit and /info endpoints to the current gr.Blocks."""

    def edit(source: str | None, mask: str | None, box: str, reference: str | None, reference_box: str,
             keep_shape: bool, zoom: str, steps: int, guidance: float, seed: int, scheduler: str = "ddim",
             more_references: list[str] | None = None, more_reference_boxes: str = "",
             request: gr.Request = None, progress=gr.Progress()):
        """Repaint the masked region of `source` by imitating `reference`.

        source, reference: image files. mask: an image file (> 128 or painted alpha = edit) or
        none; box: "x0,y0,x1,y1" in source pixels (added to the mask; one of the two is needed).
        reference_box: optional "x0,y0,x1,y1" on the reference, the part to imitate.
        keep_shape: texture transfer (depth shape control). zoom: "off" or "auto".
        seed: -1 for a random one. scheduler: a name /info lists (steps counts its steps).
        more_references: further reference files, imitated together with `reference`;
        more_reference_boxes: "; "-separated hints for them, in order, or "".
        Returns the result PNG, the depth preview (keep_shape only),
        the mask overlay and a dict with the seed and the settings.
        """
        try:
            source_image = service.load_source(source)
            references, hints = _references(reference, reference_box, more_references, more_reference_boxes)
            edit_request = EditRequest(
                source=source_image,
                mask=_mask(source_image.size, mask, box, service),
                reference=references,
                reference_box=hints,
                keep_shape=bool(keep_shape),
                steps=_whole(steps, "steps"),
                guidance=float(guidance),
                seed=None if seed is None or seed < 0 else _whole(seed, "seed"),
                zoom=zoom or edit_options.DEFAULT_ZOOM,
                scheduler=scheduler or edit_options.DEFAULT_SCHEDULER,
            )
            outcome = service.run(edit_request, on_step=lambda done, total: progress(
                (done, total), desc="Repainting", unit="steps"), session=request.session_hash if request else "")
        except InputError as error:
            raise gr.Error(str(error), print_exception=False) from None
        info = {**outcome.settings, "notes": outcome.notes, "size": list(outcome.image.size)}
        return str(outcome.path), outcome.depth, outcome.overlay, info

    def info():
        """The model, the limits and the defaults of this server."""
        return {
            "mimicbrush": __version__,
            "model": service.model_label,
            "max_side": service.max_side,
            "max_file_size": max_file_size,
            "max_steps": MAX_STEPS,
            "max_guidance": MAX_GUIDANCE,
            "schedulers": service.schedulers,
            "defaults": {"steps": edit_options.DEFAULT_STEPS, "guidance": edit_options.DEFAULT_GUIDANCE, "seed": -1,
                         "keep_shape": False, "zoom": edit_options.DEFAULT_ZOOM,
                         "scheduler": edit_options.DEFAULT_SCHEDULER},
        }

    with gr.Column(visible=False):
        inputs = [
            gr.Image(type="filepath", image_mode=None, label="source"),
            gr.Image(type="filepath", image_mode=None, label="mask"),
            gr.Textbox(value="", label="box"),
            gr.Image(type="filepath", image_mode=None, label="reference"),
            gr.Textbox(value="", label="reference_box"),
            gr.Checkbox(value=False, label="keep_shape"),
            gr.Radio(list(edit_options.ZOOM_MODES), value=edit_options.DEFAULT_ZOOM, label="zoom"),
            gr.Number(value=edit_options.DEFAULT_STEPS, precision=0, label="steps"),
            gr.Number(value=edit_options.DEFAULT_GUIDANCE, label="guidance"),
            gr.Number(value=-1, precision=0, label="seed"),
            gr.Dropdown(service.schedulers, value=edit_options.DEFAULT_SCHEDULER, label="scheduler"),
            gr.File(value=None, file_count="multiple", file_types=["image"], label="more_references"),
            gr.Textbox(value="", label="more_reference_boxes"),
        ]
        outputs = [
            gr.Image(type="filepath", format="png", label="result"),
            gr.Image(type="pil", format="png", label="depth"),
            gr.Image(type="pil", format="png", label="overlay"),
            gr.JSON(label="info"),
        ]
        info_output = gr.JSON(label="info")
        edit_button = gr.Button("edit")
        info_button = gr.Button("info")
    edit_button.click(edit, inputs, outputs, api_name="edit", concurrency_limit=1, concurrency_id=MODEL_QUEUE)
    info_button.click(info, None, info_output, api_name="info", queue=False)


def _references(reference, reference_box: str, more: list | None, more_boxes: str):
    """(reference, hint) for one reference, or (list, list of hints or None) for several."""
    hint = (reference_box or "").strip() or None
    more = [str(path) for path in more or []]
    boxes = [box.strip() or None for box in more_boxes.split(";")] if (more_boxes or "").strip() else [None] * len(more)
    if len(boxes) != len(more):
        raise InputError(f"more_reference_boxes has {len(boxes)} entries for {len(more)} more references: "
                         "give one per reference (an empty one for the whole reference), or none")
    if not more:
        return reference, hint
    hints = [hint, *boxes]
    return [reference, *more], (hints if any(h is not None for h in hints) else None)


def _whole(value, what: str) -> int:
    if value is None or float(value) != int(value):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _mask(size: tuple[int, int], mask: str | None, box: str, service: EditService):
    """The edit mask (H×W bool) from a mask file and/or a box; None (an 'empty mask' error from
    the service) if neither marks a pixel."""
    import numpy as np

    from .. import imaging
    from .service import box_mask, check_limits

    box = (box or "").strip()
    selected = np.zeros((size[1], size[0]), bool)
    if mask is not None:
        mask_image = imaging.open_image(mask, "mask")
        check_limits(mask_image, "mask", service.max_side)
        try:
            selected |= imaging.binary_mask(imaging.load_mask(mask_image, size)).astype(bool)
        except InputError as error:
            if "empty" not in str(error):
                raise
    if box:
        selected |= box_mask(box, size)
    return selected if selected.any() else None
