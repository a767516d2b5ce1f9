"""The training loss: the imitative U-Net's denoising MSE (noise, velocity or clean-latent
prediction, as the scheduler's prediction_type says), as one module.

Per sample (all draws from one generator seeded by (seed, epoch, index), so a sample's noise does
not depend on the batch size, the process count or a resume):
- the source is VAE-encoded and noised at a timestep t; the imitative U-Net predicts the noise
  from [noisy latent 4, mask 1, masked-image latent 4, depth feature 4], exactly the 13 channels
  `MimicBrushPipeline.denoise` assembles;
- the masked-image latent encodes the collage (the source with the masked region black, -1);
- the reference U-Net runs on the clean reference latent at the same t (or, for a model with a
  fixed `reference_timestep`, at that timestep whatever t is) and fills the bank; a
  sample that keeps its reference reads it (it is in `bank.rows`); a dropped one (a share
  `reference_drop`) gets the unconditional image embedding (the encoder on all-zero pixels) and
  plain self-attention, as the guidance row at inference;
- the depth input is zeroed for a share `depth_drop`, as inference does without shape control;
- for an SDXL backbone both U-Nets also take the added conditions the pipeline gives them
  (`prepare_added_conditions`): each sample's pooled vector (its reference's, or the
  unconditional one for a dropped reference) and the time ids of the training resolution.

All components run inside this module's forward, so DDP wraps one forward per step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import backbone
from ..models.backbone import AddedConditions
from ..models.depth import estimate_depth
from ..models.image_encoder import penultimate_hidden_states
from ..models.reference_attention import run_reference_unet
from .components import COMPONENT_ROLES
from .correspondence import correspondence_loss

_DRAW_STREAM = 0x6D62  # keeps these draws independent of the dataset's, which share the seed tuple


@dataclass(frozen=True)
class DrawSettings:
    seed: int
    reference_drop: float
    depth_drop: float
    num_train_timesteps: int
    latent_shape: tuple[int, int, int]  # C×h×w


def draw_sample_randomness(settings: DrawSettings, epoch: int, index: int) -> dict[str, torch.Tensor]:
    """Every random choice the loss makes for one sample, in a fixed order, on the CPU in float32
    (the same numbers on every device)."""
    entropy = np.random.SeedSequence([settings.seed, epoch, index, _DRAW_STREAM]).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(entropy))
    keep_reference = torch.rand((), generator=generator) >= settings.reference_drop
    keep_depth = torch.rand((), generator=generator) >= settings.depth_drop
    timestep = torch.randint(0, settings.num_train_timesteps, (), generator=generator)
    noise = torch.randn(settings.latent_shape, generator=generator)
    # posterior samples of the VAE for the source, the collage and the reference, in that order
    posterior_noise = torch.randn((3, *settings.latent_shape), generator=generator)
    return {"keep_reference": keep_reference, "keep_depth": keep_depth, "timestep": timestep,
            "noise": noise, "posterior_noise": posterior_noise}


@dataclass
class Prediction:
    prediction: torch.Tensor  # the imitative U-Net's output
    latents: torch.Tensor  # the clean source latent
    noisy_latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    latent_mask: torch.Tensor  # 1 = masked, at the latent's size
    participation: torch.Tensor  # a zero that keeps every reference U-Net parameter in the graph


class MimicBrushObjective(nn.Module):
    """forward(batch) -> scalar loss. Trainable components are submodules (so DDP, the optimizer
    and checkpoints see only them); frozen ones are held in a plain dict."""

    def __init__(self, pipeline, trainable: Sequence[str], mask_loss_weight: float = 1.0,
                 correspondence_weight: float = 0.0):
        super().__init__()
        self.mask_loss_weight = mask_loss_weight
        self.correspondence_weight = correspondence_weight
        self.attention_accuracy: float | None = None  # of the last forward with correspondence supervision
        # the model's components (an SD-1.5 model has no pooled projection)
        self.parts: Mapping[str, nn.Module] = {role: getattr(pipeline, role) for role in COMPONENT_ROLES
                                               if getattr(pipeline, role) is not None}
        self.trainable = nn.ModuleDict({role: self.parts[role] for role in trainable})
        self.bank = pipeline.bank
        # the model's kind (MimicBrushPipeline's config): None runs the reference U-Net at the
        # noisy sample's timestep, an integer at that one timestep for every sample
        self.reference_timestep = pipeline.config.reference_timestep
        self.noise_scheduler = pipeline.scheduler.__class__.from_config(pipeline.scheduler.config)
        self.resolution = pipeline.resolution
        self.vae_in_float32 = pipeline.vae_needs_float32  # SDXL's VAE: never under fp16 autocast

    def _grad(self, role: str):
        """Frozen components run without building a graph."""
        return nullcontext() if role in self.trainable else torch.no_grad()

    def _vae_autocast(self, device: torch.device):
        """Mixed precision's autocast off for a VAE that overflows in float16 (SDXL's): it runs in
        the dtype it is stored in, float32 (the trainer keeps it so)."""
        return torch.autocast(device.type, enabled=False) if self.vae_in_float32 else nullcontext()

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.bank.record_logits = self.correspondence_weight > 0 and "source_to_reference" in batch
        try:
            step = self.predict(batch)
        finally:
            self.bank.record_logits = False
        target = self.target(step.latents, step.noise, step.timesteps)
        if self.mask_loss_weight == 1.0:
            loss = F.mse_loss(step.prediction.float(), target)
        else:
            # the masked region, the only part the condition does not give away, counts more
            weight = 1.0 + (self.mask_loss_weight - 1.0) * step.latent_mask
            loss = (weight * (step.prediction.float() - target) ** 2).mean()
        if self.bank.logits:
            supervision, self.attention_accuracy = correspondence_loss(
                self.bank.logits, self.bank.rows, batch["source_to_reference"], batch["mask"])
            loss = loss + self.correspondence_weight * supervision
        self.bank.logits.clear()
        # the bank stays filled until the next forward: gradient checkpointing re-reads it in backward
        return loss + step.participation

    def predict(self, batch: Mapping[str, torch.Tensor]) -> Prediction:
        """The imitative U-Net's prediction for a batch, with what the loss compares it to."""
        parts = self.parts
        source, reference, mask = batch["source"], batch["reference"], batch["mask"]
        keep_reference, keep_depth, timesteps = batch["keep_reference"], batch["keep_depth"], batch["timestep"]
        noise = batch["noise"]
        batch_size = source.shape[0]

        # one VAE pass for source, collage (masked region black) and reference
        collage = torch.where(mask > 0.5, torch.full_like(source, -1.0), source)
        with self._grad("vae"), self._vae_autocast(source.device):
            posterior = parts["vae"].encode(torch.cat([source, collage, reference]).to(parts["vae"].dtype)).latent_dist
        posterior_noise = batch["posterior_noise"].transpose(0, 1).reshape(3 * batch_size, *noise.shape[1:])
        scale = parts["vae"].config.scaling_factor
        latents_all = (posterior.mean.float() + posterior.std.float() * posterior_noise) * scale
        latents, masked_latents, reference_latents = latents_all.chunk(3)

        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        latent_mask = F.interpolate(mask, size=latents.shape[-2:], mode="nearest")

        # dropped references see what the guidance row sees: the encoder on all-zero pixels
        clip_pixels = torch.where(keep_reference.view(-1, 1, 1, 1), batch["clip_pixels"], 0.0)
        with self._grad("image_encoder"):
            tokens = penultimate_hidden_states(parts["image_encoder"], clip_pixels.to(parts["image_encoder"].dtype))
        embeds = parts["image_proj"](tokens.to(parts["image_proj"].dtype))
        added = self.added_conditions(tokens)

        depth_pixels = torch.where(keep_depth.view(-1, 1, 1, 1), batch["depth_pixels"], 0.0)
        with self._grad("depth_estimator"):
            depth_map = estimate_depth(parts["depth_estimator"], depth_pixels.to(parts["depth_estimator"].dtype))
        depth_feature = parts["depth_guider"](depth_map.to(parts["depth_guider"].dtype), self.resolution)

        participation = self._fill_bank(reference_latents, self.reference_timesteps(timesteps), embeds,
                                        keep_reference, added)
        model_input = torch.cat([noisy_latents, latent_mask, masked_latents, depth_feature.float()], dim=1)
        # the latents are float32; a U-Net stored in half precision without autocast (DeepSpeed's
        # bf16) takes them in its dtype
        prediction = parts["unet"](model_input.to(parts["unet"].dtype), timesteps, encoder_hidden_states=embeds,
                                   added_cond_kwargs=None if added is None else added.for_unet(), return_dict=False)[0]
        return Prediction(prediction, latents, noisy_latents, noise, timesteps, latent_mask, participation)

    def added_conditions(self, tokens: torch.Tensor) -> AddedConditions | None:
        """SDXL's added conditions per sample, as the pipeline builds them: the pooled projection
        of the first (CLS) penultimate token, and the time ids of the training resolution."""
        if "pooled_proj" not in self.parts:
            return None
        pooled = self.parts["pooled_proj"](tokens[:, 0].to(self.parts["pooled_proj"].dtype))
        ids = backbone.time_ids(self.resolution, len(pooled), pooled.device, pooled.dtype)
        return AddedConditions(pooled[:, None], ids)

    def predicted_latents(self, step: Prediction) -> torch.Tensor:
        """The clean latent the prediction implies, whatever the prediction type."""
        kind = self.noise_scheduler.config.prediction_type
        prediction = step.prediction.float()
        if kind == "sample":
            return prediction
        alphas = self.noise_scheduler.alphas_cumprod.to(prediction.device)[step.timesteps].view(-1, 1, 1, 1)
        if kind == "epsilon":
            return (step.noisy_latents - (1 - alphas).sqrt() * prediction) / alphas.sqrt()
        if kind == "v_prediction":
            return alphas.sqrt() * step.noisy_latents - (1 - alphas).sqrt() * prediction
        raise ValueError(f"unsupported prediction_type {kind!r}")

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the U-Net learns to predict, as the scheduler's `prediction_type` says (the sampler
        reads the same setting, so training and inference agree)."""
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, timesteps)
        if kind == "sample":
            return latents
        raise ValueError(f"unsupported prediction_type {kind!r}")

    def reference_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The timesteps the reference U-Net runs at for samples noised at `timesteps`."""
        if self.reference_timestep is None:
            return timesteps
        return torch.full_like(timesteps, self.reference_timestep)

    def _fill_bank(self, reference_latents, timesteps, embeds, keep_reference,
                   added: AddedConditions | None) -> torch.Tensor:
        """Run the reference U-Net for the samples that keep their reference; returns a zero term
        for the loss (see below)."""
        self.bank.clear()
        kept = keep_reference.nonzero().flatten()
        rows = kept if len(kept) else kept.new_zeros(1)
        reference_added = None if added is None else added.for_reference_unet(rows, 1)
        reference_unet = self.parts["reference_unet"]
        run_reference_unet(reference_unet, reference_latents[rows].to(reference_unet.dtype), timesteps[rows],
                           embeds[rows], self.bank, added_cond_kwargs=reference_added)
        if len(kept):
            self.bank.rows = kept
            return reference_latents.new_zeros(())
        # No sample keeps its reference: the imitative U-Net reads nothing, but the reference
        # U-Net still ran on one row and joins the loss with weight 0, so its parameters get a
        # (zero) gradient: DDP needs every trainable parameter in every backward pass.
        participation = sum(feature.float().sum() for feature in self.bank.features.values()) * 0.0
        self.bank.clear()
        return participation


def batch_to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
