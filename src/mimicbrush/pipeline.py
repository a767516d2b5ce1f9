"""MimicBrushPipeline: repaint a masked region of a source image by imitating a reference image."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from torch import nn

from . import devices, edit_options, editing, imaging, samplers
from .errors import InputError, WeightsError
from .models import backbone as backbones
from .models.backbone import AddedConditions
from .models.depth import DepthGuider, estimate_depth
from .models.image_encoder import ImageProjection, PooledProjection, penultimate_hidden_states
from .models.standins import PixelShuffleAutoencoder
from .models.reference_attention import ReferenceBank, attach_reference_attention, run_reference_unet, split_references


@dataclass
class MimicBrushPipelineOutput(BaseOutput):
    """images: the edits pasted back at the source's own size; model_images: the model's square
    output before paste-back; depth_images: the source's depth map (None without shape control)."""

    images: list[PIL.Image.Image]
    model_images: list[PIL.Image.Image]
    depth_images: list[PIL.Image.Image | None]


@dataclass
class EditInputs:
    """Everything the models need from one (source, mask, reference) triple, as arrays."""

    source: np.ndarray  # H×W×3 uint8, the user's image
    mask: np.ndarray  # H×W {0,1}
    collage_pixels: np.ndarray  # 1×3×R×R in [-1, 1]: padded source, masked region black
    reference_pixels: np.ndarray | None  # K×3×R×R in [-1, 1], one per reference
    clip_pixels: np.ndarray | None  # K×3×224×224, CLIP-normalised
    depth_pixels: np.ndarray  # 1×3×518×518, ImageNet-normalised /255
    model_mask: np.ndarray  # 1×1×R×R {0,1}


class MimicBrushPipeline(DiffusionPipeline):
    """Dual-U-Net reference imitation (Chen et al., 2024).

    Components: `unet` (imitative, 13 input channels), `reference_unet`, `vae`, `image_encoder`
    (CLIP vision tower or any module giving penultimate tokens) with `image_proj`,
    `depth_estimator` with `depth_guider`, and a `scheduler`: the release's DDIM by default, or any
    diffusers scheduler that supports the model's prediction type, set the diffusers way
    (`pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)`; samplers.py
    names the tested ones). `pooled_proj` (optional) is an SDXL backbone's pooled projection.

    `backbone` ("sd15" or "sdxl", saved in its config) follows from the imitative U-Net: SDXL's
    U-Nets (`addition_embed_type: text_time`) also take a pooled vector and six time ids, which
    `prepare_added_conditions` builds (models/backbone.py says what they receive and why).

    `reference_timestep` is the model's kind, saved in its config: None (the release's) runs the
    reference U-Net at every step's timestep, so the bank is computed once per U-Net call; an
    integer (0 for a model trained as AnimateAnyone's ReferenceNet) is the one timestep the
    reference U-Net was trained at, so the bank is the same at every step and is computed once per
    edit.
    """

    model_cpu_offload_seq = ("image_encoder->image_proj->pooled_proj->depth_estimator->depth_guider->vae"
                             "->reference_unet->unet")
    _optional_components = ["pooled_proj"]  # SDXL only: SD-1.5 folders and the release layout have none

    def __init__(
        self,
        unet: UNet2DConditionModel,
        reference_unet: UNet2DConditionModel,
        vae: AutoencoderKL | PixelShuffleAutoencoder,  # the stand-in: demo and test models
        image_encoder: nn.Module,
        image_proj: ImageProjection,
        depth_estimator: nn.Module,
        depth_guider: DepthGuider,
        scheduler: SchedulerMixin,
        pooled_proj: PooledProjection | None = None,
        depth_input_size: int = 518,
        reference_timestep: int | None = None,
        backbone: str | None = None,
    ):
        super().__init__()
        check_reference_timestep(reference_timestep, scheduler.config.num_train_timesteps)
        backbone = check_backbone(backbone, unet, reference_unet, pooled_proj)
        self.register_modules(
            unet=unet,
            reference_unet=reference_unet,
            vae=vae,
            image_encoder=image_encoder,
            image_proj=image_proj,
            pooled_proj=pooled_proj,
            depth_estimator=depth_estimator,
            depth_guider=depth_guider,
            scheduler=scheduler,
        )
        self.register_to_config(depth_input_size=depth_input_size, reference_timestep=reference_timestep,
                                backbone=backbone)
        self.bank = ReferenceBank()
        attach_reference_attention(reference_unet, unet, self.bank)
        self.reference_unet_runs_to_end = False  # set when the U-Nets are compiled
        # what the U-Net predicts, as the scheduler it was loaded with says (training writes it
        # there); a scheduler swapped in later must sample that
        self.model_prediction_type = scheduler.config.prediction_type
        # model outputs that are the same for every edit, cached per (weights, device, dtype)
        self._constant_outputs: dict[tuple, object] = {}
        self._checked_scheduler = None  # the scheduler check_inputs last found able to sample the model

    # -----------------------------------------------------------------------------------------
    # Loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "MimicBrushPipeline":
        """Load from a release-layout folder, our own folder, or a hub id of either.

        kwargs: `torch_dtype` (default float32), `scheduler` (any diffusers scheduler instance for
        the model's prediction type), `cache_dir` (where a hub id is downloaded; default the
        Hugging Face cache) and, for our own format, anything diffusers'
        `DiffusionPipeline.from_pretrained` accepts.
        """
        from .weights import load_release_components, resolve_model

        kind, location = resolve_model(pretrained_model_name_or_path, cache_dir=kwargs.pop("cache_dir", None))
        dtype = kwargs.pop("torch_dtype", None) or torch.float32
        if kind == "release":
            pipe = cls(**load_release_components(location, dtype))
            if kwargs.get("scheduler") is not None:
                pipe.scheduler = kwargs["scheduler"]  # checked against the release's epsilon at call time
            return pipe
        components = cls._load_saved_components(Path(location), dtype)
        return super().from_pretrained(location, dtype=dtype, **components, **kwargs)

    def to(self, *args, **kwargs) -> "MimicBrushPipeline":
        """diffusers' `to`, with one true line for fp16 on the CPU instead of diffusers' warning per
        fp16 module that it cannot run there (it runs, slowly: devices.notice_slow_dtype)."""
        silenced = kwargs.pop("silence_dtype_warnings", False)
        super().to(*args, silence_dtype_warnings=True, **kwargs)
        if not silenced:
            devices.notice_slow_dtype(self.device, self.unet.dtype)
        return self

    @staticmethod
    def _load_saved_components(folder: Path, dtype: torch.dtype) -> dict[str, nn.Module]:
        """Every model of a mimicbrush folder, loaded strictly (see weights.load_saved_component)."""
        import importlib
        import json

        from .weights import load_saved_component

        index = json.loads((folder / "model_index.json").read_text())
        components = {}
        for name, entry in index.items():
            if name.startswith("_") or name == "scheduler" or not isinstance(entry, list) or entry[0] is None:
                continue
            model_class = getattr(importlib.import_module(entry[0]), entry[1])
            components[name] = load_saved_component(folder / name, model_class, dtype).eval()
        return components

    @property
    def resolution(self) -> int:
        """Side of the square the model edits at (512 for SD-1.5, 1024 for SDXL)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along a side (8 for SD's VAE)."""
        factor = getattr(self.vae.config, "downsample_factor", None)
        return factor or 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def clip_input_size(self) -> int:
        return getattr(self.image_encoder.config, "image_size", 224)

    # -----------------------------------------------------------------------------------------
    # The edit

    @torch.no_grad()
    def __call__(
        self,
        source_image,
        mask_image,
        reference_image=None,
        keep_shape: bool = False,
        num_inference_steps: int = edit_options.DEFAULT_STEPS,
        guidance_scale: float = edit_options.DEFAULT_GUIDANCE,
        generator: torch.Generator | None = None,
        faithful: bool = False,
        resolution: int | None = None,
        zoom: str = edit_options.DEFAULT_ZOOM,
        reference_box=None,
        zoom_margin: float = editing.DEFAULT_ZOOM_MARGIN,
        zoom_threshold: float = editing.DEFAULT_ZOOM_THRESHOLD,
        callback_on_step_end=None,
        return_dict: bool = True,
    ) -> MimicBrushPipelineOutput | tuple:
        """Edit `source_image` inside `mask_image` by imitating `reference_image`.

        source_image / reference_image: path, PIL image or H×W×3 uint8 array. mask_image: the
        same, or a box "x0,y0,x1,y1"; > 128 means edit. reference_image=None runs the
        unconditional branch alone (the "no reference" ablation); a list of references is
        imitated together (each through the reference U-Net; the edit attends over all their
        features at once; a list of one is the same as that one reference). keep_shape: depth shape
        control (texture transfer). guidance_scale == 1 skips the unconditional row.
        faithful: the release's compute pattern (same result, slower; for measurement).
        resolution: the square side the model edits at (a multiple of 64; default the model's
        native one, 512 for the release).
        zoom="auto" edits small regions on a crop around each; reference_box (a box or mask on
        the reference; with a list of references, a list with one entry or None per reference)
        restricts what the reference offers; see editing.py. The output then also lists the
        regions edited.
        The scheduler is `self.scheduler`; `num_inference_steps` counts its steps (a second-order
        one calls the imitative U-Net twice per step but the first) and `callback_on_step_end` runs
        after every U-Net call. The reference U-Net runs with it, or once per edit (per region with
        zoom) for a model with a fixed `reference_timestep`, faithful or not.
        """
        resolution = resolution or self.resolution
        self.check_inputs(num_inference_steps, guidance_scale, resolution)
        edit_options.check_generator(generator)
        hinted = editing.paired_reference_boxes(reference_image, reference_box) is not None
        if zoom != "off" or hinted:
            output = editing.zoomed_edit(
                self, source_image, mask_image, reference_image, reference_box,
                zoom=zoom, margin=zoom_margin, threshold=zoom_threshold,
                keep_shape=keep_shape, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                generator=generator, faithful=faithful, resolution=resolution,
                callback_on_step_end=callback_on_step_end,
            )
            return output if return_dict else (output.images, output.model_images, output.depth_images)
        inputs = self.prepare_inputs(source_image, mask_image, reference_image, resolution)
        use_reference = inputs.reference_pixels is not None
        rows = self.guidance_rows(use_reference, guidance_scale)
        embeds, pooled = self.encode_reference(inputs.clip_pixels, rows)
        added_conditions = self.prepare_added_conditions(pooled, resolution)
        depth_feature, depth_map = self.encode_depth(inputs.depth_pixels, keep_shape, resolution)
        timesteps = self.prepare_timesteps(num_inference_steps)
        reference_latents, latents, masked_latents = self.prepare_latents(inputs, generator, resolution)
        latents = self.denoise(
            latents, reference_latents, masked_latents, inputs.model_mask, depth_feature, embeds, rows,
            timesteps, guidance_scale, faithful, callback_on_step_end, generator, added_conditions,
        )
        model_image = self.decode_latents(latents)
        image = imaging.paste_back(model_image, inputs.source, inputs.mask)

        outputs = (
            [PIL.Image.fromarray(image)],
            [PIL.Image.fromarray(model_image)],
            [self.depth_preview(depth_map, inputs.source.shape) if keep_shape else None],
        )
        return MimicBrushPipelineOutput(*outputs) if return_dict else outputs

    # -----------------------------------------------------------------------------------------
    # Steps

    def check_inputs(self, num_inference_steps: int, guidance_scale: float, resolution: int) -> None:
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= 1000:
            raise InputError(f"steps must be an integer from 1 to 1000, got {num_inference_steps!r}")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise InputError(f"guidance must be a finite number >= 0, got {guidance_scale!r}")
        # the U-Net halves the latent once per block after the first
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if not isinstance(resolution, int) or resolution < multiple or resolution % multiple:
            raise InputError(f"resolution must be a positive multiple of {multiple}, got {resolution!r}")
        if self.scheduler is not self._checked_scheduler:  # the check steps a copy: once per scheduler
            samplers.check_prediction_type(self.scheduler, self.model_prediction_type)
            self._checked_scheduler = self.scheduler

    def prepare_inputs(self, source_image, mask_image, reference_image, resolution: int) -> EditInputs:
        """Load and validate the images, pad to squares and build each model's input arrays."""
        source_image, mask_image = imaging.load_source_and_mask(source_image, mask_image)
        source = np.asarray(source_image)
        mask = imaging.binary_mask(mask_image)
        padded_source = imaging.pad_to_square(source, fill=255)
        padded_mask = imaging.pad_to_square(mask, fill=0)
        reference_pixels = clip_pixels = None
        references = editing.reference_list(reference_image)
        if references is not None:
            padded = [
                imaging.pad_to_square(np.asarray(imaging.load_image(reference, "reference image")), fill=255)
                for reference in references
            ]
            reference_pixels = np.concatenate([imaging.to_model_pixels(square, resolution) for square in padded])
            clip_pixels = np.concatenate([imaging.to_clip_pixels(square, self.clip_input_size) for square in padded])
        return EditInputs(
            source=source,
            mask=mask,
            collage_pixels=imaging.to_model_pixels(imaging.make_collage(padded_source, padded_mask), resolution),
            reference_pixels=reference_pixels,
            clip_pixels=clip_pixels,
            depth_pixels=imaging.to_depth_pixels(padded_source, self.config.depth_input_size),
            model_mask=imaging.to_model_mask(padded_mask, resolution),
        )

    @staticmethod
    def guidance_rows(use_reference: bool, guidance_scale: float) -> list[str]:
        """Which rows the imitative U-Net runs, in batch order (the release's: uncond, cond)."""
        if not use_reference:
            return ["uncond"]
        if guidance_scale == 1.0:
            return ["cond"]  # ε_u + 1·(ε_c − ε_u) = ε_c
        return ["uncond", "cond"]

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self._execution_device, self.unet.dtype)

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected penultimate tokens of the image encoder (B×257×D) and, for an SDXL backbone,
        the pooled vector (B×P): the pooled projection of the first (CLS) of those tokens."""
        pixel_values = pixel_values.to(self._execution_device, self.image_encoder.dtype)
        tokens = penultimate_hidden_states(self.image_encoder, pixel_values)
        embeds = self.image_proj(tokens.to(self.image_proj.dtype))
        pooled = None if self.pooled_proj is None else self.pooled_proj(tokens[:, 0].to(self.pooled_proj.dtype))
        return embeds, pooled

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected penultimate tokens of the image encoder (B×257×D)."""
        return self.encode_images(pixel_values)[0]

    def encode_reference(
        self, clip_pixels: np.ndarray | None, rows: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-attention context per row: the reference's embeds (cond) or those of an all-zero
        CLIP input (uncond), which never change and so are computed once. For SDXL also each
        reference's pooled vector per row (R×K×P; None for SD-1.5), the uncond row's likewise
        that of the all-zero input.

        With K references the cond row holds their K token sequences side by side (the imitative
        U-Net's cross-attention chooses among all of them, as its self-attention does among the
        banks; averaging would mix unrelated patches token by token), and the uncond row holds its
        tokens K times: attention over K copies of the same keys is attention over one copy.
        split_references gives back each reference's own tokens for the reference U-Net."""
        count = 1 if clip_pixels is None else len(clip_pixels)
        embeds, pooled = [], []
        for row in rows:
            if row == "cond":
                tokens, vectors = self.encode_images(torch.from_numpy(clip_pixels))
                embeds.append(tokens.reshape(1, -1, tokens.shape[-1]))
                pooled.append(None if vectors is None else vectors[None])
            else:
                size = self.clip_input_size
                tokens, vectors = self._constant(
                    "unconditional_embeds", self._image_condition_modules(),
                    lambda: self.encode_images(torch.zeros(1, 3, size, size)),
                )
                embeds.append(tokens.repeat(1, count, 1) if count > 1 else tokens)
                pooled.append(None if vectors is None else vectors[:, None].repeat(1, count, 1))
        embeds = torch.cat(embeds).to(self.unet.dtype)
        return embeds, (None if self.pooled_proj is None else torch.cat(pooled).to(self.unet.dtype))

    def _image_condition_modules(self) -> tuple[nn.Module, ...]:
        return tuple(module for module in (self.image_encoder, self.image_proj, self.pooled_proj) if module is not None)

    def prepare_added_conditions(self, pooled: torch.Tensor | None, resolution: int) -> AddedConditions | None:
        """SDXL's added conditions per row: the pooled vectors and the time ids of an uncropped
        square at the edit's resolution, (R, R, 0, 0, R, R), as SDXL's pipelines build them.
        None for SD-1.5, whose U-Nets take none."""
        if pooled is None:
            return None
        return AddedConditions(pooled, backbones.time_ids(resolution, len(pooled), pooled.device, pooled.dtype))

    def encode_depth(
        self, depth_pixels: np.ndarray, keep_shape: bool, resolution: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth feature (1×4×h×w) and depth map. Without shape control the depth input is
        zeroed, as in training; the feature of that all-zero input is not zero, but it is the same
        for every edit, so it is computed once per resolution."""
        def run(pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            pixels = torch.from_numpy(pixels).to(self._execution_device, self.depth_estimator.dtype)
            depth_map = estimate_depth(self.depth_estimator, pixels)
            feature = self.depth_guider(depth_map.to(self.depth_guider.dtype), resolution)
            return feature.to(self.unet.dtype), depth_map

        if keep_shape:
            return run(depth_pixels)
        return self._constant(
            f"shapeless_depth_{resolution}", (self.depth_estimator, self.depth_guider),
            lambda: run(np.zeros_like(depth_pixels)),
        )

    def _constant(self, name: str, modules: tuple[nn.Module, ...], compute):
        """`compute()` once per weights/device/dtype (in-place weight updates, as in training,
        bump the parameters' version counters and so invalidate the cache)."""
        weights_version = sum(p._version for module in modules for p in module.parameters())
        key = (name, weights_version, str(self._execution_device), self.unet.dtype)
        if key not in self._constant_outputs:
            self._constant_outputs = {k: v for k, v in self._constant_outputs.items() if k[0] != name}
            self._constant_outputs[key] = compute()
        return self._constant_outputs[key]

    @property
    def vae_needs_float32(self) -> bool:
        """SDXL's VAE overflows in float16 (its config says `force_upcast`), so it runs in float32
        there, as in diffusers' SDXL pipelines. An SD-1.5 model keeps the release's float16 VAE
        (diffusers' SD pipelines ignore the flag too)."""
        return self.config.backbone == backbones.SDXL and bool(getattr(self.vae.config, "force_upcast", False))

    @contextmanager
    def vae_precision(self):
        """The VAE in float32 while it runs where it is stored in float16 and `vae_needs_float32`,
        cast back after."""
        upcast = self.vae_needs_float32 and self.vae.dtype == torch.float16
        # nn.Module's cast: diffusers' ModelMixin.to warns on every dtype cast (0.42)
        if upcast:
            nn.Module.to(self.vae, dtype=torch.float32)
        try:
            yield
        finally:
            if upcast:
                nn.Module.to(self.vae, dtype=torch.float16)

    def _posterior_sample(self, pixels: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
        """Scaled VAE posterior sample; the noise is drawn in float32 from `generator` on the CPU
        so a seed gives the same edit on every device and dtype."""
        with self.vae_precision():
            distribution = self.vae.encode(self._tensor(pixels).to(self.vae.dtype)).latent_dist
        noise = torch.randn(distribution.mean.shape, generator=generator, dtype=torch.float32)
        mean, std = distribution.mean.float(), distribution.std.float()
        sample = mean + std * noise.to(mean.device)
        return (sample * self.vae.config.scaling_factor).to(self.unet.dtype)

    def prepare_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The scheduler's timesteps, one per U-Net call. Set before the initial noise is drawn:
        the noise's scale (init_noise_sigma) depends on them for sigma-based schedulers."""
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        return self.scheduler.timesteps

    def prepare_latents(self, inputs: EditInputs, generator: torch.Generator | None, resolution: int):
        """Three draws from one generator, in the release's order: reference posterior, initial
        noise, collage posterior. Without a reference the first draw is still made, so the
        no-reference ablation starts from the same noise; the posteriors of further references are
        drawn last, so adding a reference leaves the noise and the collage as they were."""
        latent_size = resolution // self.vae_scale_factor
        shape = (1, self.vae.config.latent_channels, latent_size, latent_size)
        references = inputs.reference_pixels
        if references is not None:
            reference_latents = self._posterior_sample(references[:1], generator)
        else:
            torch.randn(shape, generator=generator, dtype=torch.float32)
            reference_latents = None
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        latents = (noise * self.scheduler.init_noise_sigma).to(self._execution_device, self.unet.dtype)
        masked_latents = self._posterior_sample(inputs.collage_pixels, generator)
        if references is not None and len(references) > 1:
            further = [self._posterior_sample(pixels[None], generator) for pixels in references[1:]]
            reference_latents = torch.cat([reference_latents, *further])
        return reference_latents, latents, masked_latents

    def denoise(
        self,
        latents: torch.Tensor,
        reference_latents: torch.Tensor | None,
        masked_latents: torch.Tensor,
        model_mask: np.ndarray,
        depth_feature: torch.Tensor,
        embeds: torch.Tensor,
        rows: list[str],
        timesteps: torch.Tensor,
        guidance_scale: float,
        faithful: bool = False,
        callback_on_step_end=None,
        generator: torch.Generator | None = None,
        added_conditions: AddedConditions | None = None,
    ) -> torch.Tensor:
        """The sampling loop, one pass per timestep (a second-order scheduler lists most twice).
        Each pass: the imitative U-Net reads the reference bank for the conditional row →
        guidance → scheduler step. The reference U-Net fills the bank before every pass, or once
        before the loop for a model with a fixed `reference_timestep`. `added_conditions` (SDXL)
        go to every call of both U-Nets."""
        mask = torch.nn.functional.interpolate(self._tensor(model_mask), size=latents.shape[-2:], mode="nearest")
        condition = torch.cat([mask, masked_latents, depth_feature], dim=1).repeat(len(rows), 1, 1, 1)
        unet_added = None if added_conditions is None else added_conditions.for_unet()
        use_reference = reference_latents is not None
        fixed_timestep = self.config.reference_timestep
        if use_reference:
            # fast path: the reference U-Net runs for the rows that read it; the release ran it
            # for every row and attended over the bank in every row
            reference_rows = list(range(len(rows))) if faithful else [rows.index("cond")]
            reference_count = len(reference_latents)
            # one batch for every (reference, row), reference-major, each with its own tokens
            reference_input = reference_latents.repeat_interleave(len(reference_rows), dim=0)
            reference_embeds = split_references(embeds[reference_rows], reference_count)
            reference_added = (None if added_conditions is None
                               else added_conditions.for_reference_unet(reference_rows, reference_count))

            def fill_bank(timestep) -> None:
                self.bank.clear()
                run_reference_unet(self.reference_unet, reference_input, timestep, reference_embeds,
                                   self.bank, run_to_end=faithful or self.reference_unet_runs_to_end,
                                   added_cond_kwargs=reference_added)
                self.bank.rows = torch.tensor([rows.index("cond")], device=latents.device)
                self.bank.references = reference_count
                self.bank.faithful = faithful

        step_kwargs = self.scheduler_step_kwargs(generator)
        self.bank.clear()
        try:
            if use_reference and fixed_timestep is not None:
                # the reference U-Net never sees the step's timestep: its features are the same
                # for every U-Net call of this edit, whatever the scheduler
                fill_bank(fixed_timestep)
            for step, timestep in enumerate(self.progress_bar(timesteps)):
                if use_reference and fixed_timestep is None:
                    # a fresh bank for every U-Net call: a second-order scheduler's two calls in
                    # one step are at different timesteps, and the reference features depend on it
                    fill_bank(timestep)
                # only the noisy latent is scaled (sigma schedulers); the condition channels are
                # clean inputs (DDIM's scaling is the identity: the release's numbers are kept)
                latent_input = self.scheduler.scale_model_input(latents, timestep)
                model_input = torch.cat([latent_input.repeat(len(rows), 1, 1, 1), condition], dim=1)
                noise_pred = self.unet(model_input, timestep, encoder_hidden_states=embeds,
                                       added_cond_kwargs=unet_added, return_dict=False)[0]
                if len(rows) == 2:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise_pred, timestep, latents, **step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    values = callback_on_step_end(self, step, timestep, {"latents": latents, "noise_pred": noise_pred})
                    latents = (values or {}).get("latents", latents)
        finally:
            self.bank.clear()
            self.bank.faithful = False
        return latents

    def scheduler_step_kwargs(self, generator: torch.Generator | None) -> dict:
        """The edit's generator for schedulers whose step draws noise (ancestral ones), so a seed
        gives the same edit; DDIM at eta 0 takes it and draws nothing."""
        accepts = "generator" in inspect.signature(self.scheduler.step).parameters
        return {"generator": generator} if accepts else {}

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """R×R×3 uint8 image of the final latents."""
        with self.vae_precision():
            decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        return imaging.to_uint8_image(decoded[0].float().cpu().numpy())

    @staticmethod
    def depth_preview(depth_map: torch.Tensor, source_shape: tuple[int, ...]) -> PIL.Image.Image:
        """The depth map as an 8-bit image at the source's size (padding cropped away)."""
        depth = depth_map[0, 0].float().cpu().numpy()
        depth = (depth - depth.min()) / max(float(depth.max() - depth.min()), 1e-8)
        height, width = source_shape[:2]
        padding = imaging.SquarePadding(width, height)
        square = PIL.Image.fromarray((depth * 255).astype(np.uint8)).resize((padding.side, padding.side), PIL.Image.BILINEAR)
        return PIL.Image.fromarray(padding.crop(np.asarray(square)))


def check_backbone(stated: str | None, unet, reference_unet, pooled_proj) -> str:
    """The backbone the imitative U-Net makes (`stated`, a saved folder's, must agree), once the
    other components' added-embedding setup fits it; else a one-line WeightsError."""
    try:
        derived = backbones.backbone_of(unet.config)
    except ValueError as error:
        raise WeightsError(f"unet: {error}") from None
    if stated is not None and stated != derived:
        raise WeightsError(f"backbone: the model says {stated!r}, but its imitative U-Net is {derived}-shaped "
                           f"({backbones.added_embedding(unet.config)})")
    try:
        mismatch = backbones.component_mismatch(unet, reference_unet, pooled_proj)
    except ValueError as error:
        mismatch = ("reference_unet", str(error))
    if mismatch is not None:
        raise WeightsError(f"{mismatch[0]}: {mismatch[1]}")
    return derived


def check_reference_timestep(reference_timestep: int | None, num_train_timesteps: int) -> None:
    """None (the bank at every step's timestep) or one of the scheduler's training timesteps."""
    if reference_timestep is None:
        return
    if isinstance(reference_timestep, bool) or not isinstance(reference_timestep, int) \
            or not 0 <= reference_timestep < num_train_timesteps:
        raise ValueError(f"reference_timestep must be None or an integer in [0, {num_train_timesteps}), "
                         f"got {reference_timestep!r}")
