"""The edit's options in one place: names, defaults, checks, and the limits each front end sets.

The command line (cli/edit.py), the web app's service (app/service.py) and API, the ComfyUI
nodes (comfyui/nodes.py) and the Python API all take these; each front end only adapts them to
its widgets. What differs per front end is a `Limits`: the app caps steps and seeds for a shared
server, ComfyUI's seed widget runs to 2⁶⁴−1. No argparse or UI code here.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from . import editing, samplers
from .errors import InputError

DEFAULT_STEPS = 50  # the release's
DEFAULT_GUIDANCE = 5.0  # the release's
DEFAULT_SCHEDULER = samplers.DEFAULT_SAMPLER
DEFAULT_ZOOM = "off"  # the release's behaviour; parity runs with it off
ZOOM_MODES = editing.ZOOM_MODES
SCHEDULERS = tuple(samplers.SAMPLERS)
PIPELINE_MAX_STEPS = 1000  # MimicBrushPipeline.check_inputs: a 1000-step training schedule
# torch.Generator.manual_seed takes any 64-bit value, so every seed a front end offers is one
# generator seed: the same number gives the same edit in the CLI, the app and ComfyUI.
MAX_SEED = 2**64 - 1
RANDOM_SEED_BOUND = 2**31  # a seed drawn for the user stays short enough to read and retype


@dataclass(frozen=True)
class Limits:
    """What one front end accepts. `where` names it in messages."""

    where: str
    max_steps: int = PIPELINE_MAX_STEPS
    max_guidance: float = math.inf
    max_seed: int = MAX_SEED


COMMAND_LINE = Limits("the command line")
# a web app shared by many users: one request must not hold the model for minutes
WEB_APP = Limits("this app", max_steps=200, max_guidance=30.0, max_seed=2**31 - 1)
# ComfyUI: its INT widget for seeds goes to 0xffffffffffffffff
COMFYUI = Limits("ComfyUI")


def check_steps(steps, limits: Limits = COMMAND_LINE) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limits.max_steps:
        raise InputError(f"steps must be a whole number from 1 to {limits.max_steps} in {limits.where}, "
                         f"got {steps!r}")
    return steps


def check_guidance(guidance, limits: Limits = COMMAND_LINE) -> float:
    upper = "" if math.isinf(limits.max_guidance) else f" and at most {limits.max_guidance:g} in {limits.where}"
    try:
        value = float(guidance)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= limits.max_guidance:
        raise InputError(f"guidance must be a finite number >= 0{upper}, got {guidance!r}")
    return value


def check_seed(seed, limits: Limits = COMMAND_LINE) -> int | None:
    """None (draw a random one) or a seed from 0 to the front end's maximum."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= limits.max_seed:
        raise InputError(f"the seed must be a whole number from 0 to {limits.max_seed} in {limits.where}, "
                         f"got {seed!r}")
    return seed


def check_zoom(zoom) -> str:
    if zoom not in ZOOM_MODES:
        raise InputError(f"zoom must be one of {', '.join(ZOOM_MODES)}, got {zoom!r}")
    return zoom


def check_scheduler(name, offered=SCHEDULERS, offered_by: str = "") -> str:
    """A name from `offered` (every name by default; the app offers those its model supports,
    `offered_by` " with this model"). Whether the loaded model can use a name is checked when its
    scheduler is built (samplers.make_scheduler)."""
    if name not in offered:
        raise InputError(f"the scheduler must be one of {', '.join(offered)}{offered_by}, got {name!r}")
    return name


def random_seed() -> int:
    return secrets.randbelow(RANDOM_SEED_BOUND)


def edit_seed(seed, limits: Limits = COMMAND_LINE) -> int:
    """The seed an edit runs with: the user's, checked, or a random one."""
    checked = check_seed(seed, limits)
    return random_seed() if checked is None else checked


def generator(seed: int):
    """The CPU generator every front end seeds (the pipeline draws its noise on the CPU, so a
    seed gives the same edit on every device)."""
    import torch

    return torch.Generator("cpu").manual_seed(seed)


def check_generator(generator) -> None:
    """The pipeline's generator is a CPU one (or None): a CUDA or MPS generator would make a seed's
    edit depend on the device, and torch cannot draw CPU noise from it."""
    device = getattr(generator, "device", None)
    if device is not None and device.type != "cpu":
        raise InputError(f"generator: a {device.type} generator was given, but the edit's noise is drawn on the "
                         "CPU so that a seed gives the same edit on every device: pass "
                         "torch.Generator('cpu').manual_seed(seed)")


def unet_calls(scheduler, steps: int, mask01, zoom: str) -> int:
    """How many U-Net calls one edit makes, known before it runs (for progress bars): the
    scheduler's for `steps` (heun 2N−1), once per region a zoomed edit makes (editing.plan_regions;
    a reference hint alone keeps one region)."""
    regions = 1 if zoom == "off" else len(editing.plan_regions(mask01, zoom=zoom))
    return samplers.unet_calls(scheduler, steps) * regions
