"""The nodes, in ComfyUI's classic schema (INPUT_TYPES / RETURN_TYPES / FUNCTION).

Load MimicBrush → MIMICBRUSH_MODEL → MimicBrush Edit → IMAGE (the edit) and IMAGE (the depth
preview). The edit's options, defaults and checks are edit_options' (the command line's and the
app's), with ComfyUI's limits; the pixels are `mimicbrush edit`'s for the same 8-bit inputs,
seed, steps and scheduler.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from .. import edit_options, editing, imaging
from ..acceleration import OFFLOAD_MODES
from ..errors import InputError, MimicBrushError
from . import host, tensors
from .model import BUNDLED, DTYPE_CHOICES, MimicBrushModel, load, model_choices

CATEGORY = "MimicBrush"
MODEL_TYPE = "MIMICBRUSH_MODEL"
MORE_REFERENCES = 3  # reference_2 … reference_4, besides a batch on any reference input
MAX_GUIDANCE = 100.0  # the widget's range; the edit itself takes any guidance >= 0


def _user_errors(function):
    """Errors a user can fix reach ComfyUI as our one-line message, without a chain of causes."""
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except MimicBrushError as error:
            raise type(error)(str(error)) from None
    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


class LoadMimicBrush:
    DESCRIPTION = (
        "Load a MimicBrush model once for every edit. 'bundled demo model' ships with the package and "
        "runs offline; its weights are licensed CC BY-NC 4.0 (non-commercial use only) and its 64-pixel "
        "fills are soft: a demonstration, not for real edits. Other choices: model folders in "
        "models/mimicbrush/ (the release's layout or a `mimicbrush convert` folder), or a hub id "
        "(xichenhku/MimicBrush, or hub_id) downloaded into models/mimicbrush/hub/. Device and precision "
        "follow ComfyUI (fp32 on the CPU, fp16 on CUDA)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("mimicbrush_model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (model_choices(), {"default": BUNDLED, "tooltip": (
                    "the bundled demo model (CC BY-NC 4.0, non-commercial), a folder in models/mimicbrush/, "
                    "or the release's hub id (downloaded into models/mimicbrush/hub/)")}),
                "dtype": (list(DTYPE_CHOICES), {"default": "auto", "tooltip": "auto: fp16 where ComfyUI uses it "
                                               "(CUDA), fp32 on the CPU"}),
                "offload": (list(OFFLOAD_MODES), {"default": "none", "tooltip": (
                    "none: ComfyUI moves the model to the GPU and back as memory needs; model / sequential: "
                    "weights stay in CPU memory and stream to the GPU (lower peak memory, slower)")}),
            },
            "optional": {
                "hub_id": ("STRING", {"default": "", "tooltip": "another hub id (owner/name) to download "
                                      "into models/mimicbrush/hub/; overrides model"}),
            },
        }

    @_user_errors
    def load(self, model, dtype="auto", offload="none", hub_id=""):
        return (load(model, dtype=dtype, offload=offload, hub_id=hub_id),)


def _reference_inputs() -> dict:
    optional = {
        "reference_box": ("STRING", {"default": "", "tooltip": "x0,y0,x1,y1 on the reference: only that part "
                                     "is imitated (a hint); empty: the whole reference"}),
        "reference_mask": ("MASK", {"tooltip": "a mask on the reference marking the part to imitate (its box)"}),
    }
    for index in range(2, MORE_REFERENCES + 2):
        optional[f"reference_{index}"] = ("IMAGE", {"tooltip": "another reference, imitated together with the first"})
        optional[f"reference_{index}_box"] = ("STRING", {"default": ""})
        optional[f"reference_{index}_mask"] = ("MASK",)
    return optional


class MimicBrushEdit:
    DESCRIPTION = (
        "Repaint the masked region of the source by imitating the matching part of the reference(s). "
        "A batch of sources is edited one by one, each with this seed (as `mimicbrush edit --seed` edits "
        "it alone); a mask batch of 1 applies to all. A batch on a reference input is several references "
        "imitated together. Mask: > 0.5 edits; a mask of another size but the same aspect ratio is "
        "resized. Outputs the edit at the source's size and the depth preview (the source's depth map "
        "that keeps the shape; black without keep_shape, which uses none)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("image", "depth_preview")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        limits = edit_options.COMFYUI
        return {
            "required": {
                "mimicbrush_model": (MODEL_TYPE,),
                "source": ("IMAGE",),
                "mask": ("MASK", {"tooltip": "the region to repaint (LoadImageMask, channel red, for a "
                                  "black-and-white mask file)"}),
                "reference": ("IMAGE",),
                "keep_shape": ("BOOLEAN", {"default": False, "tooltip": "texture transfer: a depth map of "
                                           "the source keeps the region's shape"}),
                "steps": ("INT", {"default": edit_options.DEFAULT_STEPS, "min": 1, "max": limits.max_steps}),
                "scheduler": (list(edit_options.SCHEDULERS), {"default": edit_options.DEFAULT_SCHEDULER,
                              "tooltip": "ddim is the release's; heun makes 2N-1 U-Net calls; one the model "
                              "cannot use is refused when the edit runs"}),
                "guidance": ("FLOAT", {"default": edit_options.DEFAULT_GUIDANCE, "min": 0.0,
                                       "max": MAX_GUIDANCE, "step": 0.1}),
                "seed": ("INT", {"default": 0, "min": 0, "max": limits.max_seed,
                                 "tooltip": "the same seed as `mimicbrush edit --seed` gives the same edit"}),
                "zoom": (list(edit_options.ZOOM_MODES), {"default": edit_options.DEFAULT_ZOOM, "tooltip": (
                    "auto: small regions are edited on a crop around each, at the model's full resolution")}),
                "faithful": ("BOOLEAN", {"default": False, "tooltip": "the release's compute pattern (same "
                                         "result, slower; for measurement)"}),
            },
            "optional": _reference_inputs(),
        }

    @_user_errors
    def edit(self, mimicbrush_model: MimicBrushModel, source, mask, reference, keep_shape=False,
             steps=edit_options.DEFAULT_STEPS, scheduler=edit_options.DEFAULT_SCHEDULER,
             guidance=edit_options.DEFAULT_GUIDANCE, seed=0, zoom=edit_options.DEFAULT_ZOOM, faithful=False,
             **hints):
        # ComfyUI runs nodes under torch.inference_mode(): the pipeline needs plain tensors
        with torch.inference_mode(False):
            return run_edit(mimicbrush_model, source, mask, reference, keep_shape=keep_shape, steps=steps,
                            scheduler=scheduler, guidance=guidance, seed=seed, zoom=zoom, faithful=faithful,
                            **hints)


def _references(reference, hints: dict) -> tuple[list[np.ndarray], list]:
    """Every reference image (each input's batch, in order) and its hint (box string, mask or None)."""
    inputs = [("reference", reference)] + [
        (f"reference_{index}", hints.get(f"reference_{index}")) for index in range(2, MORE_REFERENCES + 2)]
    images, paired_hints = [], []
    for name, tensor in inputs:
        if tensor is None:
            continue
        frames = tensors.images(tensor, name)
        mask = hints.get(f"{name}_mask")
        masks = tensors.paired(tensors.masks(mask, f"{name}_mask"), len(frames), f"{name}_mask", f"{name} images") \
            if mask is not None else [None] * len(frames)
        for frame, frame_mask in zip(frames, masks):
            images.append(frame)
            paired_hints.append(tensors.hint(hints.get(f"{name}_box", ""), frame_mask, f"{name}'s hint"))
    return images, paired_hints


def run_edit(model: MimicBrushModel, source, mask, reference, *, keep_shape, steps, scheduler, guidance, seed,
             zoom, faithful, **hints):
    """The edit of every source in the batch; (IMAGE batch, depth preview batch)."""
    limits = edit_options.COMFYUI
    steps = edit_options.check_steps(int(steps), limits)
    guidance = edit_options.check_guidance(guidance, limits)
    seed = edit_options.check_seed(int(seed), limits)
    zoom = edit_options.check_zoom(zoom)
    edit_options.check_scheduler(scheduler)
    unknown = set(hints) - set(_reference_inputs())
    if unknown:
        raise InputError(f"unknown inputs: {', '.join(sorted(unknown))}")
    sources = tensors.images(source, "source")
    size = sources[0].shape[1::-1]
    if any(frame.shape[1::-1] != size for frame in sources):
        raise InputError("the source batch mixes image sizes")
    masks = tensors.paired(tensors.masks(mask), len(sources), "the mask", "sources")
    loaded = [tensors.edit_mask(frame_mask, size) for frame_mask in masks]
    for notice in dict.fromkeys(notice for _, notices in loaded for notice in notices):  # each once
        host.logger.warning("MimicBrush: %s", notice)
    references, reference_hints = _references(reference, hints)
    one = len(references) == 1
    reference_image = references[0] if one else references
    reference_box = (reference_hints[0] if one else reference_hints) \
        if any(hint is not None for hint in reference_hints) else None

    sampler = model.scheduler(scheduler)  # refuses one this model cannot use, before any work
    # the progress bar's total, before the loop: U-Net calls per source (zoom: per region)
    total = sum(edit_options.unet_calls(sampler, steps, imaging.binary_mask(mask_image), zoom)
                for mask_image, _ in loaded)
    host.throw_if_interrupted()
    model.ready()
    model.pipe.scheduler = sampler
    progress = host.Progress(total)

    def after_unet_call(pipe, step, timestep, values):
        progress.tick()
        host.throw_if_interrupted()  # the Stop button, honoured between U-Net calls
        return values

    edits, depths = [], []
    for frame, (mask_image, _) in zip(sources, loaded):
        output = model.pipe(
            source_image=frame,
            mask_image=mask_image,
            reference_image=reference_image,
            reference_box=reference_box,
            keep_shape=bool(keep_shape),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=edit_options.generator(seed),
            faithful=bool(faithful),
            zoom=zoom,
            callback_on_step_end=after_unet_call,
        )
        edits.append(np.asarray(output.images[0].convert("RGB")))
        depths.append(depth_preview(output, frame.shape[:2]))
        for line in editing.describe_regions(output) if hasattr(output, "regions") else []:
            host.logger.info("MimicBrush: %s", line)
    return tensors.to_image_batch(edits), tensors.to_image_batch(depths)


def depth_preview(output, shape: tuple[int, int]) -> np.ndarray:
    """H×W×3 uint8 at the source's size: each region's depth map where that region was edited
    (zoomed regions at their crops), black where none was used (everywhere without keep_shape)."""
    canvas = np.zeros((*shape, 3), np.uint8)
    regions = getattr(output, "regions", None)
    boxes = [region.crop_box for region in regions] if regions else [(0, 0, shape[1], shape[0])]
    for depth, (x0, y0, x1, y1) in zip(output.depth_images, boxes):
        if depth is None:
            continue
        depth = depth.convert("L")
        if depth.size != (x1 - x0, y1 - y0):
            depth = depth.resize((x1 - x0, y1 - y0), PIL.Image.BILINEAR)
        canvas[y0:y1, x0:x1] = np.asarray(depth)[..., None]
    return canvas


NODE_CLASS_MAPPINGS = {
    "MimicBrushLoad": LoadMimicBrush,
    "MimicBrushEdit": MimicBrushEdit,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MimicBrushLoad": "Load MimicBrush",
    "MimicBrushEdit": "MimicBrush Edit",
}
