"""The sampler table: the names the command line, the app and the benchmark take for diffusers
schedulers, and the check that a scheduler can serve what the model predicts.

Every scheduler here is built from the model's own scheduler config (`from_config`), so it keeps
the model's betas, timestep spacing and prediction type; a name only changes what it says.
`--steps N` counts scheduler steps: a second-order scheduler (heun) calls the U-Nets twice per
step but the first, `unet_calls` tells how many calls N steps make.
The table names classes as strings and imports diffusers only when one is built, so the front ends
that list the names (cli/options.py, the ComfyUI nodes) stay fast to import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

DEFAULT_SAMPLER = "ddim"


@dataclass(frozen=True)
class Sampler:
    """A name for a diffusers scheduler class with config overrides."""

    name: str
    scheduler_class: str  # its name in diffusers
    overrides: dict = field(default_factory=dict)
    calls_for_steps: str = "N"  # U-Net calls for N steps, for the docs and --help

    def make(self, model_config) -> SchedulerMixin:
        """This sampler, built from the model's scheduler config."""
        scheduler_class = getattr(importlib.import_module("diffusers"), self.scheduler_class)
        return scheduler_class.from_config(model_config, **self.overrides)


SAMPLERS = {sampler.name: sampler for sampler in (
    Sampler("ddim", "DDIMScheduler"),  # the release's
    Sampler("dpm++", "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    Sampler("dpm++-karras", "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    Sampler("unipc", "UniPCMultistepScheduler"),
    Sampler("euler", "EulerDiscreteScheduler"),
    Sampler("euler-a", "EulerAncestralDiscreteScheduler"),
    Sampler("heun", "HeunDiscreteScheduler", calls_for_steps="2N-1"),
)}


def make_scheduler(name: str, model_config) -> SchedulerMixin:
    """The scheduler called `name`, built from the model's scheduler config; an InputError when
    the name is unknown or the scheduler cannot serve the model's prediction type."""
    if name not in SAMPLERS:
        raise InputError(f"unknown scheduler {name!r}; choose one of {', '.join(SAMPLERS)}")
    scheduler = SAMPLERS[name].make(model_config)
    check_prediction_type(scheduler, model_config["prediction_type"], label=name)
    return scheduler


def use_sampler(pipe, name: str) -> None:
    """Give `pipe` the scheduler called `name` (checked against its model)."""
    pipe.scheduler = make_scheduler(name, pipe.scheduler.config)


def supported_samplers(model_config) -> list[str]:
    """The names whose schedulers can serve the model's prediction type, in the table's order."""
    return [name for name, sampler in SAMPLERS.items()
            if _step_failure(sampler.make(model_config)) is None]


def check_prediction_type(scheduler: SchedulerMixin, model_prediction_type: str, label: str | None = None) -> None:
    """An InputError naming the scheduler and the prediction type when `scheduler` cannot sample a
    model that predicts `model_prediction_type` (configured for another one, or its step does not
    implement that one)."""
    label = label or type(scheduler).__name__
    configured = scheduler.config.get("prediction_type", model_prediction_type)
    if configured != model_prediction_type:
        raise InputError(
            f"scheduler {label} is set for prediction type {configured!r} but this model predicts "
            f"{model_prediction_type!r}: build it from the model's config (from_config(pipe.scheduler.config))"
        )
    failure = _step_failure(scheduler)
    if failure is not None:
        can = supported_samplers(scheduler.config)
        raise InputError(
            f"scheduler {label} does not support prediction type {model_prediction_type!r}, which this model "
            f"predicts (diffusers: {failure}); schedulers that can: {', '.join(can) or 'none'}"
        )


def _step_failure(scheduler: SchedulerMixin) -> str | None:
    """Why a fresh copy of `scheduler` cannot run two steps on a tiny latent, or None if it can.

    diffusers schedulers refuse a prediction type they do not implement only when they step
    (NotImplementedError or ValueError), so this steps a copy rather than keep a list that would
    drift from diffusers. The global RNG is left as it was (ancestral steps draw noise).
    """
    import torch

    probe = type(scheduler).from_config(scheduler.config)
    with torch.random.fork_rng(devices=[]):
        try:
            probe.set_timesteps(2)
            latents = torch.zeros(1, 1, 2, 2)
            for timestep in probe.timesteps:
                model_input = probe.scale_model_input(latents, timestep)
                latents = probe.step(torch.zeros_like(model_input), timestep, latents, return_dict=False)[0]
        except (NotImplementedError, ValueError) as error:
            return (str(error).strip().splitlines() or [type(error).__name__])[0]
    return None


def unet_calls(scheduler: SchedulerMixin, steps: int) -> int:
    """How many times each U-Net runs for `steps` steps of `scheduler` (one per timestep)."""
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(steps)
    return len(probe.timesteps)
