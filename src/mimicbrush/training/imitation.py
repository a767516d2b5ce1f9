"""Does the model use its reference? The trainer's imitation metric.

A fixed held-out set of training-style pairs (the config's `imitation.data`, clips the run does
not train on) is noised at a few fixed timesteps; the imitative U-Net predicts the clean latent
once with each pair's own reference and once with another pair's (pair i gets pair i+1's), and
the squared error inside the mask is compared:

- gain: relative reduction of the mean masked error by the true reference,
  1 - mean(error_true) / mean(error_mismatched); 0 means the reference is ignored;
- win: the share of pairs whose error is lower with the true reference.

Everything else (noise, depth off as in an edit without shape control) is the same in both
arms, so the difference is the reference's doing alone. The loss cannot show this: a model can
reach a low loss by inpainting from context while ignoring the reference.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..data import DataConfig, build_dataset
from ..data.sources import data_sources
from ..errors import ConfigError
from .batches import TrainingSamples, loss_inputs
from .config import ImitationConfig
from .objective import DrawSettings, MimicBrushObjective, batch_to_device

_CHUNK = 16  # pairs per forward


def check_held_out(training: DataConfig, held_out: DataConfig, where: str = "imitation.data") -> None:
    """A held-out pair must not come from a clip or image the run trains on."""
    trained = set(data_sources(training, "data"))
    for name in sorted(data_sources(held_out, where)):
        if name in trained:
            raise ConfigError(f"{where}: {name} is also in the training data (data:); the held-out set must be "
                              "clips and images the run does not train on")


class ImitationProbe:
    """A fixed held-out batch; `measure(objective)` runs both arms at every timestep."""

    def __init__(self, batch: dict[str, torch.Tensor], timesteps: tuple[int, ...]):
        self.batch = batch
        self.timesteps = tuple(timesteps)

    @classmethod
    def from_config(cls, config: ImitationConfig, objective: MimicBrushObjective, latent_shape: tuple[int, int, int],
                    clip_size: int, depth_size: int) -> ImitationProbe:
        """The first `num_pairs` pairs of `config.data`, drawn with `config.seed`."""
        if config.data is None:
            raise ConfigError("imitation.data: required to measure imitation")
        limit = objective.noise_scheduler.config.num_train_timesteps
        for timestep in config.timesteps:
            if not 0 <= timestep < limit:
                raise ConfigError(f"imitation.timesteps: {timestep} is outside the scheduler's [0, {limit})")
        pairs = build_dataset(config.data, seed=config.seed)
        if len(pairs) < config.num_pairs:
            raise ConfigError(f"imitation.num_pairs: {config.num_pairs} is more than imitation.data.samples_per_epoch "
                              f"({len(pairs)})")
        samples = TrainingSamples(pairs, probe_draws(config.seed, objective, latent_shape), clip_size, depth_size)
        items = [samples[index] for index in range(config.num_pairs)]
        return cls({key: torch.stack([item[key] for item in items]) for key in items[0]}, config.timesteps)

    @classmethod
    def from_images(cls, pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], timesteps: tuple[int, ...],
                    seed: int, objective: MimicBrushObjective, latent_shape: tuple[int, int, int], clip_size: int,
                    depth_size: int) -> ImitationProbe:
        """Pairs given as (source S×S×3 uint8, reference S×S×3 uint8, mask S×S in {0, 1})."""
        draws = probe_draws(seed, objective, latent_shape)
        items = [loss_inputs(source, reference, mask, draws, index, clip_size, depth_size)
                 for index, (source, reference, mask) in enumerate(pairs)]
        return cls({key: torch.stack([item[key] for item in items]) for key in items[0]}, timesteps)

    @torch.no_grad()
    def measure(self, objective: MimicBrushObjective, device: torch.device | str = "cpu") -> dict:
        """{"t500": {"gain", "win", "error_true", "error_mismatched"}, ...}; modules are put in
        eval mode for the measurement and restored after."""
        modules = list(objective.parts.values())
        modes = [module.training for module in modules]
        for module in modules:
            module.eval()
        try:
            results = {}
            for timestep in self.timesteps:
                true_error = self._masked_errors(objective, timestep, mismatched=False, device=device)
                wrong_error = self._masked_errors(objective, timestep, mismatched=True, device=device)
                results[f"t{timestep}"] = {
                    "gain": float(1.0 - true_error.mean() / wrong_error.mean()),
                    "win": float((true_error < wrong_error).mean()),
                    "error_true": float(true_error.mean()),
                    "error_mismatched": float(wrong_error.mean()),
                }
            return results
        finally:
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)
            objective.bank.clear()

    def _masked_errors(self, objective, timestep: int, *, mismatched: bool, device) -> np.ndarray:
        batch = dict(self.batch)
        batch["timestep"] = torch.full_like(batch["timestep"], timestep)
        if mismatched:  # pair i reads pair i+1's reference (image and encoder input alike)
            for key in ("reference", "clip_pixels"):
                batch[key] = batch[key].roll(-1, dims=0)
        errors = []
        for start in range(0, len(batch["source"]), _CHUNK):
            chunk = batch_to_device({key: value[start:start + _CHUNK] for key, value in batch.items()}, device)
            step = objective.predict(chunk)
            squared = (objective.predicted_latents(step) - step.latents).pow(2).mean(dim=1, keepdim=True)
            mask = step.latent_mask
            errors.append(((squared * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp(min=1)).cpu())
        objective.bank.clear()
        return torch.cat(errors).numpy()


def probe_draws(seed: int, objective: MimicBrushObjective, latent_shape: tuple[int, int, int]) -> DrawSettings:
    """Every pair keeps its reference; depth is off, as in an edit without shape control."""
    return DrawSettings(seed=seed, reference_drop=0.0, depth_drop=1.0,
                        num_train_timesteps=objective.noise_scheduler.config.num_train_timesteps,
                        latent_shape=latent_shape)


def flatten_for_log(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{"imitation/gain_t500": ...} for TensorBoard."""
    return {f"imitation/{name}_{timestep}": value
            for timestep, values in results.items() for name, value in values.items()}


def measure_model(model: str, config: ImitationConfig, device: str = "auto") -> dict:
    """The metric on a saved model (a folder or hub id, as `--model` takes), e.g. before
    fine-tuning it or on the shipped weights; in fp32 on the device the package's rule picks
    (devices.py; the draws are the same on every device)."""
    from ..devices import resolve_device
    from ..loading import load_pipeline

    device = resolve_device(device)
    pipeline = load_pipeline(model, device=str(device), dtype="fp32")
    if config.data.resolution != pipeline.resolution:
        raise ConfigError(f"imitation.data.resolution: {config.data.resolution}, but the model edits at "
                          f"{pipeline.resolution}²; measure at the model's resolution")
    objective = MimicBrushObjective(pipeline, trainable=())
    side = config.data.resolution // pipeline.vae_scale_factor
    probe = ImitationProbe.from_config(config, objective, (pipeline.vae.config.latent_channels, side, side),
                                       pipeline.clip_input_size, pipeline.config.depth_input_size)
    return probe.measure(objective, device)
