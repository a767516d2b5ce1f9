"""The edit handler behind the web app and its API: one model, loaded once, shared by every user.

No Gradio here: `EditService.run` takes plain images and a mask and returns files and images, so
the UI (ui.py) and the API (api.py) are thin adapters over it and the handler can be tested alone.
Errors the user can fix are `InputError`s with a message written for the person at the browser.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .. import __version__, edit_options, editing, imaging, samplers
from ..errors import InputError
from .results import ResultFiles

# The longest side the app accepts for any image. The pipeline itself takes up to
# imaging.MAX_IMAGE_SIDE, but a shared web app should not let one upload take the memory of a
# 12,000² square; 4096 covers phone photos.
DEFAULT_MAX_SIDE = 4096
# Largest upload the server accepts (Gradio's max_file_size), before any decoding.
DEFAULT_MAX_FILE_SIZE = "25mb"
LIMITS = edit_options.WEB_APP  # the app's caps on steps, guidance and seeds (edit_options.py says why)
MAX_STEPS = LIMITS.max_steps
MAX_GUIDANCE = LIMITS.max_guidance
MAX_SEED = LIMITS.max_seed
OVERLAY_COLOUR = (255, 40, 40)
ZOOM_BOX_COLOUR = (255, 210, 0)

StepCallback = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass
class EditRequest:
    """One edit, as the user asked for it. Images are RGB PIL images (or anything imaging.load_image
    takes); mask is H×W (bool, or uint8 where > 128 means edit) at the source's size or its aspect
    ratio; reference_box is a box string "x0,y0,x1,y1", a mask on the reference, or None.
    Several references: `reference` is a list (imitated together), and reference_box None or a
    list with one hint (or None) per reference."""

    source: object
    mask: object
    reference: object
    reference_box: object = None
    keep_shape: bool = False
    steps: int = edit_options.DEFAULT_STEPS
    guidance: float = edit_options.DEFAULT_GUIDANCE
    seed: int | None = None  # None or negative: a random seed (reported in the result)
    zoom: str = edit_options.DEFAULT_ZOOM
    scheduler: str = edit_options.DEFAULT_SCHEDULER  # a name in samplers.SAMPLERS the model supports


@dataclass
class EditResult:
    image: PIL.Image.Image  # the edit at the source's size
    path: Path | None  # the same as a PNG with the edit's settings in its metadata (the download);
    # None when the service has no output folder
    overlay: PIL.Image.Image  # the source with the mask (and any zoomed crops) drawn on it
    depth: PIL.Image.Image | None  # the depth preview (keep_shape only)
    seed: int
    settings: dict  # what the PNG's metadata holds
    notes: list[str] = field(default_factory=list)  # notices (resized mask, zoomed regions, ...)

    def summary(self) -> str:
        """One short markdown paragraph for the UI."""
        width, height = self.image.size
        parts = [f"**seed {self.seed}** · {self.settings['steps']} {self.settings['scheduler']} steps"
                 f" · guidance {self.settings['guidance']} · {width}×{height}"]
        if self.settings.get("keep_shape"):
            parts.append("shape kept")
        if self.settings.get("zoom") == "auto":
            parts.append("auto zoom-in")
        text = " · ".join(parts)
        if self.notes:
            text += "\n\n" + "\n".join(f"- {note}" for note in self.notes)
        return text


def check_limits(image: PIL.Image.Image, what: str, max_side: int) -> None:
    width, height = image.size
    if max(width, height) > max_side:
        raise InputError(
            f"The {what} is {width}×{height}: over this app's limit of {max_side} px on the longest side. "
            "Downscale it first."
        )


def mask_from_layers(layers, size: tuple[int, int]) -> np.ndarray | None:
    """H×W bool mask of everything painted on the editor's layers (alpha > 0), or None if no layer
    has a painted pixel. Layers are RGBA arrays or PIL images; one of another size (the editor's
    canvas) is resized to the source when it has the source's aspect ratio."""
    painted = None
    for layer in layers or []:
        if layer is None:
            continue
        layer = PIL.Image.fromarray(layer) if isinstance(layer, np.ndarray) else layer
        if layer.mode not in ("RGBA", "LA"):
            continue  # no alpha: nothing was painted on it that we can tell from the background
        alpha = layer.getchannel("A")
        if alpha.size != tuple(size):
            if not imaging.same_aspect(alpha.size, size):
                raise InputError(
                    f"The painted layer is {alpha.size[0]}×{alpha.size[1]} but the source is {size[0]}×{size[1]}: "
                    "was the image cropped after painting? Paint the mask again."
                )
            alpha = alpha.resize(size, PIL.Image.NEAREST)
        selected = np.asarray(alpha) > 0
        painted = selected if painted is None else painted | selected
    if painted is None or not painted.any():
        return None
    return painted


def box_mask(box: str, size: tuple[int, int]) -> np.ndarray:
    """H×W bool mask of a box "x0,y0,x1,y1" (checked against the source)."""
    x0, y0, x1, y1 = imaging.parse_box(box, size)
    mask = np.zeros((size[1], size[0]), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def mask_overlay(source: np.ndarray, mask: np.ndarray, regions=()) -> PIL.Image.Image:
    """The source with the mask tinted red and outlined, and each zoomed crop outlined in yellow."""
    image = source.astype(np.float32)
    selected = mask.astype(bool)
    image[selected] = image[selected] * 0.45 + np.array(OVERLAY_COLOUR, np.float32) * 0.55
    overlay = PIL.Image.fromarray(image.astype(np.uint8))
    edge = selected ^ _eroded(selected)
    pixels = np.asarray(overlay).copy()
    pixels[edge] = OVERLAY_COLOUR
    overlay = PIL.Image.fromarray(pixels)
    draw = PIL.ImageDraw.Draw(overlay)
    width = max(2, round(max(overlay.size) / 300))
    for region in regions:
        if region.zoomed:
            x0, y0, x1, y1 = region.crop_box
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=ZOOM_BOX_COLOUR, width=width)
    return overlay


def box_preview(image: np.ndarray, box: tuple[int, int, int, int] | None = None,
                corner: tuple[int, int] | None = None) -> PIL.Image.Image:
    """The image with a box (and/or the first corner of one being drawn) marked on it."""
    preview = PIL.Image.fromarray(image)
    draw = PIL.ImageDraw.Draw(preview)
    width = max(2, round(max(preview.size) / 250))
    if box is not None:
        x0, y0, x1, y1 = box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=OVERLAY_COLOUR, width=width)
    if corner is not None:
        x, y = corner
        radius = 3 * width
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=OVERLAY_COLOUR, width=width)
    return preview


def _mask_input(mask):
    """What imaging.load_mask takes: a box string, a PIL image, or a bool/uint8 H×W array."""
    if isinstance(mask, (str, PIL.Image.Image)):
        return mask
    return np.asarray(mask)


def _hint_text(hint) -> str:
    """How a reference hint is recorded in the result's metadata."""
    return "" if hint is None else hint if isinstance(hint, str) else "painted"


def _eroded(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    result = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            result &= padded[1 + dy : 1 + dy + mask.shape[0], 1 + dx : 1 + dx + mask.shape[1]]
    return result


class EditService:
    """One pipeline shared by every request. `run` is serialised by a lock (the app's queue also
    runs one edit at a time); each request draws from its own generator, seeded per request, so
    results never depend on who else is using the app.

    output_dir: where `run` writes each result as a PNG (the download); None writes nothing (the
    caller chooses where files go: the web app gives it a temporary folder). `results` keeps
    those files bounded (results.py says how many, and when the rest are deleted)."""

    def __init__(self, pipe, model_label: str = "", max_side: int = DEFAULT_MAX_SIDE,
                 output_dir: str | Path | None = None, results: ResultFiles | None = None):
        self.pipe = pipe
        self.model_label = model_label
        self.max_side = max_side
        self._lock = threading.Lock()
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.results = results or ResultFiles()
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        # the model's own scheduler config: every named scheduler is built from it
        self._model_scheduler_config = pipe.scheduler.config
        self.schedulers = samplers.supported_samplers(self._model_scheduler_config)
        self._built_schedulers: dict = {}

    @classmethod
    def load(cls, model: str | None, device: str = "auto", dtype: str = "auto", offload: str = "none",
             compiled: bool = False, **kwargs) -> "EditService":
        """Load the model once (the bundled demo model when `model` is None); `compiled`: compiled
        U-Nets (acceleration.compile_unets)."""
        from ..loading import default_model, load_pipeline

        location = model if model is not None else default_model()
        pipe = load_pipeline(location, device=device, dtype=dtype, offload=offload, compiled=compiled)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, model_label=str(model or "bundled demo model"), **kwargs)

    # -----------------------------------------------------------------------------------------

    def load_source(self, image) -> PIL.Image.Image:
        if image is None:
            raise InputError("Upload a source image first: the photo whose region you want to repaint.")
        return self._load(image, "source image")

    def load_reference(self, image) -> PIL.Image.Image:
        if image is None:
            raise InputError(
                "Upload a reference image: the masked region is repainted by imitating it."
            )
        return self._load(image, "reference image")

    def load_references(self, references, hints) -> tuple[list[PIL.Image.Image], list]:
        """The references (one image or a list) and one hint per reference (a box string, a
        mask, or None), the box strings checked against their reference."""
        several = isinstance(references, (list, tuple))
        images = [self.load_reference(image) for image in (references if several else [references])]
        if not images:
            self.load_reference(None)
        if hints is None:
            hints = [None] * len(images)
        elif not several:
            hints = [hints]
        if not isinstance(hints, (list, tuple)) or len(hints) != len(images):
            given = len(hints) if isinstance(hints, (list, tuple)) else 1
            raise InputError(f"Give one reference region per reference ({len(images)}), or none; got {given}.")
        checked = []
        for index, (image, hint) in enumerate(zip(images, hints), 1):
            if isinstance(hint, str):
                hint = hint.strip() or None
            if isinstance(hint, str):
                try:
                    imaging.parse_box(hint, image.size)  # a clear error before any work
                except InputError as error:
                    raise InputError(f"Reference {index}'s region: {error}" if several else str(error)) from None
            checked.append(hint)
        return images, checked

    def _load(self, image, what: str) -> PIL.Image.Image:
        if isinstance(image, PIL.Image.Image):
            check_limits(image, what, self.max_side)  # before converting a huge image
        loaded = imaging.load_image(image, what)
        check_limits(loaded, what, self.max_side)
        return loaded

    def check_request(self, request: EditRequest) -> None:
        """The shared checks (edit_options) with the app's limits."""
        steps = int(request.steps) if isinstance(request.steps, np.integer) else request.steps
        edit_options.check_steps(steps, LIMITS)
        edit_options.check_guidance(request.guidance, LIMITS)
        edit_options.check_zoom(request.zoom)
        edit_options.check_seed(self._chosen_seed(request), LIMITS)
        edit_options.check_scheduler(request.scheduler, self.schedulers, offered_by=" with this model")

    @staticmethod
    def _chosen_seed(request: EditRequest) -> int | None:
        """The request's seed; None when the user asked for a random one (None or negative)."""
        if request.seed is None:
            return None
        seed = int(request.seed) if isinstance(request.seed, np.integer) else request.seed
        return None if isinstance(seed, int) and seed < 0 else seed

    def scheduler(self, name: str):
        """The scheduler called `name`, built once from the model's config."""
        if name not in self._built_schedulers:
            self._built_schedulers[name] = samplers.make_scheduler(name, self._model_scheduler_config)
        return self._built_schedulers[name]

    def run(self, request: EditRequest, on_step: StepCallback | None = None, session: str = "") -> EditResult:
        """Validate, edit, and write the result PNG (when the service has an output folder), kept
        as `session`'s newest result. Raises InputError with a user-facing message."""
        self.check_request(request)
        source = self.load_source(request.source)
        if request.mask is None:
            raise InputError(
                "The mask is empty: paint the region to edit on the source with the brush, or draw a box."
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mask_image = imaging.load_mask(_mask_input(request.mask), source.size)
            except InputError as error:
                if "empty" in str(error):
                    raise InputError(
                        "The mask is empty: paint the region to edit on the source with the brush, or draw a box."
                    ) from None
                raise
            references, hints = self.load_references(request.reference, request.reference_box)
            if len(references) == 1:
                reference, reference_box = references[0], hints[0]
            else:
                reference = references
                reference_box = hints if any(hint is not None for hint in hints) else None
            mask01 = imaging.binary_mask(mask_image)
            seed = edit_options.edit_seed(self._chosen_seed(request), LIMITS)
            scheduler = self.scheduler(request.scheduler)
            # the callback runs per U-Net call
            total = edit_options.unet_calls(scheduler, int(request.steps), mask01, request.zoom)
            done = [0]

            def step_end(pipe, step, timestep, tensors):
                done[0] += 1
                if on_step is not None:
                    on_step(min(done[0], total), total)
                return tensors

            with self._lock:
                self.pipe.scheduler = scheduler  # the lock makes the swap this request's alone
                if on_step is not None:
                    on_step(0, total)
                output = self.pipe(
                    source_image=source,
                    mask_image=mask_image,
                    reference_image=reference,
                    keep_shape=bool(request.keep_shape),
                    num_inference_steps=int(request.steps),
                    guidance_scale=float(request.guidance),
                    generator=edit_options.generator(seed),
                    zoom=request.zoom,
                    reference_box=reference_box,
                    callback_on_step_end=step_end,
                )
        notes = [str(warning.message) for warning in caught]
        regions = getattr(output, "regions", None) or []
        if regions:
            notes += editing.describe_regions(output)
        settings = {
            "mimicbrush": __version__,
            "model": self.model_label,
            "seed": seed,
            "steps": int(request.steps),
            "scheduler": request.scheduler,
            "guidance": float(request.guidance),
            "keep_shape": bool(request.keep_shape),
            "zoom": request.zoom,
            **({"references": len(references)} if len(references) > 1 else {}),
            **({"reference_box": "; ".join(_hint_text(hint) for hint in hints)}
               if any(hint is not None for hint in hints) else {}),
        }
        image = output.images[0]
        path = None
        if self.output_dir is not None:
            path = imaging.save_image(image, self.output_dir / f"mimicbrush-{seed}-{uuid.uuid4().hex[:8]}.png",
                                      metadata=settings)
            self.results.keep(session, path)
        depth = next((depth for depth in output.depth_images if depth is not None), None)
        return EditResult(
            image=image,
            path=path,
            overlay=mask_overlay(np.asarray(source), mask01, regions),
            depth=depth,
            seed=seed,
            settings=settings,
            notes=notes,
        )
