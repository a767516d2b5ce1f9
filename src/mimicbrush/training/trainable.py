"""Which parameters train: the configured components, minus what the loss can never reach."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError


def trainable_roles(configured: Sequence[str], given: bool, components: Mapping[str, nn.Module]) -> tuple[str, ...]:
    """`train.trainable` less the roles this model lacks: the default names an SDXL model's pooled
    projection, which an SD-1.5 model does not have. Naming it in a config (`given`) for such a
    model is an error."""
    missing = [role for role in configured if role not in components]
    if given and missing:
        raise ConfigError(f"train.trainable: {missing[0]}, but this model has none (an SD-1.5 backbone: only "
                          "SDXL-shaped U-Nets, addition_embed_type text_time, take a pooled vector)")
    return tuple(role for role in configured if role in components)


def set_trainable(components: Mapping[str, nn.Module | None], trainable: Sequence[str]) -> None:
    """Trainable components in train mode with gradients; the others frozen, in eval mode. A role
    the model lacks (None: an SD-1.5 model's pooled projection) has nothing to set."""
    for role, module in components.items():
        if module is None:
            continue
        module.requires_grad_(role in trainable)
        module.train(role in trainable)


def enable_gradient_checkpointing(modules: Iterable[nn.Module]) -> None:
    """Recompute activations in backward for every module that supports it (diffusers or
    transformers), trading compute for memory."""
    for module in modules:
        if getattr(module, "_supports_gradient_checkpointing", False):  # diffusers
            module.enable_gradient_checkpointing()
        elif getattr(module, "supports_gradient_checkpointing", False):  # transformers
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def probe_batch(resolution: int, latent_shape: tuple[int, int, int], clip_size: int, depth_size: int,
                device: torch.device) -> dict[str, torch.Tensor]:
    """One synthetic sample that uses every input path (reference kept, depth on)."""
    generator = torch.Generator().manual_seed(0)
    batch = {
        "source": torch.rand(1, 3, resolution, resolution, generator=generator) * 2 - 1,
        "reference": torch.rand(1, 3, resolution, resolution, generator=generator) * 2 - 1,
        "mask": (torch.rand(1, 1, resolution, resolution, generator=generator) > 0.5).float(),
        "clip_pixels": torch.randn(1, 3, clip_size, clip_size, generator=generator),
        "depth_pixels": torch.randn(1, 3, depth_size, depth_size, generator=generator),
        "keep_reference": torch.ones(1, dtype=torch.bool),
        "keep_depth": torch.ones(1, dtype=torch.bool),
        "timestep": torch.full((1,), 500),
        "noise": torch.randn(1, *latent_shape, generator=generator),
        "posterior_noise": torch.randn(1, 3, *latent_shape, generator=generator),
    }
    return {key: value.to(device) for key, value in batch.items()}


def freeze_unreached(objective: nn.Module, batch: Mapping[str, torch.Tensor]) -> list[str]:
    """Freeze the trainable parameters that get no gradient from one loss evaluation, and return
    their names. These are parts whose output the loss never uses: the reference U-Net after its
    last recorded block, the image encoder's last layer and projection head (the condition is
    its penultimate layer), the VAE decoder. Frozen, DDP needs no search for unused parameters
    and the optimizer keeps no state for them."""
    objective.zero_grad(set_to_none=True)
    objective(batch).backward()
    unreached = []
    for name, parameter in objective.named_parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.requires_grad_(False)
            unreached.append(name)
    objective.zero_grad(set_to_none=True)
    objective.bank.clear()
    return unreached


def summarize_unreached(names: Sequence[str], shown: int = 3) -> str:
    """`reference_unet: 15 tensors (conv_norm_out, conv_out, ...)` for one log line."""
    modules: dict[str, list[str]] = {}
    for name in names:
        role, _, rest = name.removeprefix("trainable.").partition(".")
        module = rest.rsplit(".", 1)[0]
        modules.setdefault(role, [])
        if module not in modules[role]:
            modules[role].append(module)
    counts = {role: sum(name.startswith(f"trainable.{role}.") for name in names) for role in modules}
    parts = []
    for role, paths in modules.items():
        listed = ", ".join(paths[:shown]) + (", ..." if len(paths) > shown else "")
        parts.append(f"{role}: {counts[role]} tensors ({listed})")
    return "; ".join(parts)
