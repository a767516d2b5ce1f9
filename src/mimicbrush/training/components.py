"""Build the model components a training run starts from.

Three starts, chosen by the `model:` section:
- a MimicBrush model to fine-tune (`model.pretrained`: release layout, our folder or hub id);
- pretrained parts (e.g. SD-1.5-inpainting U-Net, SD-1.5 U-Net, sd-vae-ft-mse, CLIP, Depth
  Anything), each `pretrained:` a diffusers/transformers folder or hub id; an imitative U-Net
  with fewer than 13 input channels gets `conv_in` widened, the new channels zero;
- from scratch, each component from a small `config:` (constructor arguments).

The backbone follows from the U-Nets: SDXL-shaped ones (`addition_embed_type: text_time`, e.g.
SDXL-inpainting and SDXL base) give an XL model, with a pooled projection derived like the image
projection (models/backbone.py).

Each role maps class names to a `ComponentClass`, which knows how to check a config, build from
it and load weights. Besides the stock classes, the parameter-free stand-ins
(`PixelShuffleAutoencoder` for the VAE, `LuminanceDepth` for the depth estimator) are registered;
another stand-in (say, a small image encoder) is one more entry in `COMPONENT_CLASSES`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from ..models import backbone


@dataclass(frozen=True)
class ComponentSpec:
    """Where one component comes from: pretrained weights, or a fresh init from `config`."""

    class_name: str
    pretrained: str | None = None  # local path (absolute) or hub id
    subfolder: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)


# appended roles keep the others' init seeds (_component_seed indexes this tuple)
COMPONENT_ROLES = ("unet", "reference_unet", "vae", "image_encoder", "image_proj", "depth_estimator", "depth_guider",
                   "pooled_proj")
DEFAULT_DEPTH_INPUT_SIZE = 518  # Depth Anything's input side in the release


@dataclass(frozen=True)
class ComponentClass:
    """A class usable for one role, built from a config mapping or loaded from weights."""

    name: str
    module: str  # where the class lives

    def resolve(self) -> type:
        return getattr(importlib.import_module(self.module), self.name)

    def allowed_keys(self) -> set[str]:
        return _init_parameters(self.resolve())

    def check_config(self, config: Mapping[str, Any], where: str) -> None:
        allowed = self.allowed_keys()
        for key in config:
            if key not in allowed:
                raise ConfigError(f"{where}.{key}: unknown key for {self.name}")

    def build(self, config: Mapping[str, Any], where: str) -> nn.Module:
        try:
            return self.resolve()(**config)
        except (TypeError, ValueError, KeyError, AssertionError) as error:
            raise ConfigError(f"{where}: {self.name} rejects this config: {error}") from None

    def load(self, pretrained: str, subfolder: str | None, where: str) -> nn.Module:
        kwargs = {"subfolder": subfolder} if subfolder else {}
        try:
            return self.resolve().from_pretrained(pretrained, **kwargs)
        except (OSError, ValueError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise WeightsError(f"{where}: cannot load {self.name} from {pretrained!r}: {message}") from None


class TransformersClass(ComponentClass):
    """A transformers model: `config` holds its config class's arguments."""

    def config_class(self) -> type:
        return self.resolve().config_class

    def allowed_keys(self) -> set[str]:
        return _init_parameters(self.config_class())

    def build(self, config: Mapping[str, Any], where: str) -> nn.Module:
        try:
            return self.resolve()(self.config_class()(**config))
        except (TypeError, ValueError, KeyError, AssertionError) as error:
            raise ConfigError(f"{where}: {self.name} rejects this config: {error}") from None


class DepthAnythingClass(TransformersClass):
    """Depth Anything: `config.backbone_config` is a Dinov2 config mapping; `pretrained` may also
    be an original Depth Anything v1 checkpoint (`depth_anything_vit?14.pth`)."""

    def check_config(self, config: Mapping[str, Any], where: str) -> None:
        super().check_config(config, where)
        backbone = config.get("backbone_config")
        if backbone is not None:
            if not isinstance(backbone, Mapping):
                raise ConfigError(f"{where}.backbone_config: expected a mapping of Dinov2Config arguments")
            from transformers import Dinov2Config

            allowed = _init_parameters(Dinov2Config) | {"model_type"}
            for key in backbone:
                if key not in allowed:
                    raise ConfigError(f"{where}.backbone_config.{key}: unknown key for Dinov2Config")

    def build(self, config: Mapping[str, Any], where: str) -> nn.Module:
        config = dict(config)
        if isinstance(config.get("backbone_config"), Mapping):
            config["backbone_config"] = {"model_type": "dinov2", **config["backbone_config"]}
        return super().build(config, where)

    def load(self, pretrained: str, subfolder: str | None, where: str) -> nn.Module:
        path = Path(pretrained)
        if path.suffix == ".pth":
            from ..weights import load_depth_anything_v1

            if not path.is_file():
                raise WeightsError(f"{where}: file not found: {path}")
            return load_depth_anything_v1(path, torch.float32)
        return super().load(pretrained, subfolder, where)


_UNET = ComponentClass("UNet2DConditionModel", "diffusers")
COMPONENT_CLASSES: dict[str, dict[str, ComponentClass]] = {  # the first class of a role is its default
    "unet": {_UNET.name: _UNET},
    "reference_unet": {_UNET.name: _UNET},
    "vae": {
        "AutoencoderKL": ComponentClass("AutoencoderKL", "diffusers"),
        "PixelShuffleAutoencoder": ComponentClass("PixelShuffleAutoencoder", "mimicbrush.models.standins"),
    },
    "image_encoder": {
        "CLIPVisionModelWithProjection": TransformersClass("CLIPVisionModelWithProjection", "transformers"),
    },
    "image_proj": {"ImageProjection": ComponentClass("ImageProjection", "mimicbrush.models.image_encoder")},
    "depth_estimator": {
        "DepthAnythingForDepthEstimation": DepthAnythingClass("DepthAnythingForDepthEstimation", "transformers"),
        "LuminanceDepth": ComponentClass("LuminanceDepth", "mimicbrush.models.standins"),
    },
    "depth_guider": {"DepthGuider": ComponentClass("DepthGuider", "mimicbrush.models.depth")},
    "pooled_proj": {"PooledProjection": ComponentClass("PooledProjection", "mimicbrush.models.image_encoder")},
}
DEFAULT_CLASSES = {role: next(iter(classes)) for role, classes in COMPONENT_CLASSES.items()}


def _init_parameters(cls: type) -> set[str]:
    """Keyword arguments `cls(...)` accepts: its signature, the public names of private fields
    (transformers 5 takes `out_indices` for `_out_indices`) and a config's attribute aliases."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    names = {p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names | {name.lstrip("_") for name in names} | set(getattr(cls, "attribute_map", {}))


# ---------------------------------------------------------------------------------------------
# Assembly


def build_components(model_config, resolution: int, seed: int) -> dict[str, Any]:
    """Keyword arguments for `MimicBrushPipeline(**components)`, in float32, set up to edit at
    `resolution` (the training resolution)."""
    from ..scheduling import release_scheduler

    if model_config.pretrained is not None:
        components = _from_mimicbrush(model_config.pretrained)
    else:
        components = _from_specs(model_config.components, resolution, seed)
    if model_config.depth_input_size is not None:
        components["depth_input_size"] = model_config.depth_input_size
    components.setdefault("depth_input_size", DEFAULT_DEPTH_INPUT_SIZE)
    # the release's sampler; a fine-tuned model keeps what its U-Net predicts unless told otherwise
    inherited = components.pop("prediction_type", "epsilon")
    components["scheduler"] = release_scheduler(model_config.prediction_type or inherited)
    # the reference U-Net's timestep likewise: a fine-tuned model keeps its kind unless told otherwise
    inherited_timestep = components.pop("reference_timestep", None)
    if model_config.reference_timestep is not None:
        limit = components["scheduler"].config.num_train_timesteps
        if model_config.reference_timestep >= limit:
            raise ConfigError(f"model.reference_timestep: {model_config.reference_timestep} is outside the "
                              f"scheduler's timesteps [0, {limit})")
        components["reference_timestep"] = model_config.reference_timestep
    else:
        components["reference_timestep"] = inherited_timestep
    _fit_to_resolution(components, resolution)
    check_compatible(components, resolution)
    return components


def _from_mimicbrush(pretrained: str) -> dict[str, Any]:
    from ..pipeline import MimicBrushPipeline

    pipe = MimicBrushPipeline.from_pretrained(pretrained, torch_dtype=torch.float32)
    components = {role: getattr(pipe, role) for role in COMPONENT_ROLES}  # pooled_proj: None for SD-1.5
    components["depth_input_size"] = pipe.config.depth_input_size
    components["prediction_type"] = pipe.scheduler.config.prediction_type
    components["reference_timestep"] = pipe.config.reference_timestep
    return components


def _from_specs(specs: Mapping[str, ComponentSpec], resolution: int, seed: int) -> dict[str, Any]:
    """Build in dependency order: the VAE, encoders and guider fix sizes the U-Nets and the
    projection must match."""

    def make(role: str, derived: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None):
        """`derived` values are forced (a config may only repeat them); `defaults` may be overridden."""
        spec = specs.get(role) or ComponentSpec(DEFAULT_CLASSES[role])
        where = f"model.{role}"
        component_class = COMPONENT_CLASSES[role][spec.class_name]
        if spec.pretrained is not None:
            return component_class.load(spec.pretrained, spec.subfolder, f"{where}.pretrained")
        config = {**(defaults or {}), **spec.config}
        for key, value in (derived or {}).items():
            if key in config and config[key] != value:
                raise ConfigError(f"{where}.config.{key}: must be {value!r} here (derived from the other "
                                  f"components), got {config[key]!r}; leave it out")
            config[key] = value
        # each component's init has its own seed, so changing one leaves the others as they were
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_component_seed(seed, role))
            return component_class.build(config, where)

    components: dict[str, Any] = {"vae": make("vae")}
    vae_factor = latent_factor(components["vae"])
    latent_channels = components["vae"].config.latent_channels
    components["image_encoder"] = make("image_encoder")
    components["depth_estimator"] = make("depth_estimator")
    # the release's widths (16, 32, 64, 128) for an 8x VAE: one width per halving
    guider_widths = [16 * 2**i for i in range(int(np.log2(vae_factor)) + 1)]
    components["depth_guider"] = make("depth_guider", {"resolution": resolution},
                                      {"block_out_channels": guider_widths})
    depth_channels = components["depth_guider"].config.out_channels
    sample_size = resolution // vae_factor
    components["unet"] = make("unet", {"in_channels": 2 * latent_channels + 1 + depth_channels,
                                       "out_channels": latent_channels, "sample_size": sample_size})
    if "reference_unet" not in specs:  # the imitative U-Net's architecture (checked to be from-config)
        specs = {**specs, "reference_unet": specs["unet"]}
    components["reference_unet"] = make("reference_unet", {"in_channels": latent_channels,
                                                           "out_channels": latent_channels, "sample_size": sample_size})
    components["image_proj"] = make("image_proj", {
        "in_features": components["image_encoder"].config.hidden_size,
        "cross_attention_dim": components["unet"].config.cross_attention_dim,
    })
    components["pooled_proj"] = None
    unet_config = components["unet"].config
    if unet_config.addition_embed_type == "text_time":
        problem = backbone.unet_problem(unet_config)  # a refiner, say: no width to derive
        if problem is not None:
            raise ConfigError(f"model.unet: {problem}")
        components["pooled_proj"] = make("pooled_proj", {
            "in_features": components["image_encoder"].config.hidden_size,
            "out_features": backbone.pooled_width(unet_config)})
    elif "pooled_proj" in specs:
        raise ConfigError("model.pooled_proj: only an SDXL-shaped imitative U-Net (addition_embed_type text_time) "
                          f"takes a pooled vector; model.unet has addition_embed_type "
                          f"{components['unet'].config.addition_embed_type}")
    return components


def pretrained_conflict(role: str, spec: ComponentSpec, pretrained: str) -> str:
    """The one-line error for a component entry beside `model.pretrained`. An SDXL-shaped U-Net
    entry beside an SD-1.5 MimicBrush folder (the release layout, or ours) says both shapes: the
    backbone comes from the weights, so that pair is neither a fine-tune nor an XL model."""
    generic = f"model.{role}: not allowed with model.pretrained (the whole model comes from it)"
    entry = _unet_config(spec) if role in ("unet", "reference_unet") else None
    model = _mimicbrush_unet_config(Path(pretrained))
    if entry is None or model is None or entry.get("addition_embed_type") != "text_time" \
            or model[1].get("addition_embed_type") is not None:
        return generic
    return (f"model.{role}: SDXL-shaped (addition_embed_type text_time, cross_attention_dim "
            f"{entry.get('cross_attention_dim', 1280)}), but model.pretrained {pretrained} is an SD-1.5 MimicBrush "
            f"({model[0]}: no added embedding, cross_attention_dim {model[1].get('cross_attention_dim')}); the backbone "
            "follows the weights: fine-tune that model without component entries, or train MimicBrush-XL from "
            "SDXL-shaped U-Nets without model.pretrained")


def _unet_config(spec: ComponentSpec) -> Mapping[str, Any] | None:
    """A U-Net entry's config without loading weights (a hub id fetches config.json only); None
    where it cannot be read."""
    if spec.pretrained is None:
        return spec.config
    from diffusers import UNet2DConditionModel

    try:
        return UNet2DConditionModel.load_config(spec.pretrained, subfolder=spec.subfolder)
    except (OSError, ValueError):
        return None


def _mimicbrush_unet_config(folder: Path) -> tuple[str, Mapping[str, Any]] | None:
    """(layout, imitative U-Net config) of a local MimicBrush folder, or None."""
    from ..weights import is_release_layout, read_config

    candidates = [("our format", folder / "unet" / "config.json", (folder / "model_index.json").is_file()),
                  ("release layout", folder / "stable-diffusion-inpainting" / "unet" / "config.json",
                   is_release_layout(folder))]
    for layout, path, recognised in candidates:
        if recognised and path.is_file():
            try:
                return layout, read_config(path)
            except WeightsError:
                return None
    return None


def latent_factor(vae) -> int:
    """Pixels per latent cell along a side, as `MimicBrushPipeline.vae_scale_factor` reads it."""
    return getattr(vae.config, "downsample_factor", None) or 2 ** (len(vae.config.block_out_channels) - 1)


def _component_seed(seed: int, role: str) -> int:
    return int(np.random.SeedSequence([seed, COMPONENT_ROLES.index(role)]).generate_state(1)[0])


def widen_conv_in(unet, in_channels: int) -> None:
    """Give `unet.conv_in` more input channels: the old weights stay, the new ones are zero, so
    the widened U-Net computes exactly what it did while the new inputs are untrained."""
    old = unet.conv_in
    if old.in_channels > in_channels:
        raise ConfigError(f"model.unet: conv_in has {old.in_channels} input channels, more than {in_channels}")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)


def _fit_to_resolution(components: dict[str, Any], resolution: int) -> None:
    """Widen a 9-channel (inpainting) U-Net, and record the training resolution in the configs so
    the exported pipeline edits at the resolution it was trained at."""
    vae = components["vae"]
    vae_factor = latent_factor(vae)
    if resolution % vae_factor:
        raise ConfigError(f"data.resolution: {resolution} is not a multiple of the VAE's factor {vae_factor}")
    needed = 2 * vae.config.latent_channels + 1 + components["depth_guider"].config.out_channels
    if components["unet"].config.in_channels < needed:
        widen_conv_in(components["unet"], needed)
    for role in ("unet", "reference_unet"):
        components[role].register_to_config(sample_size=resolution // vae_factor)
    components["depth_guider"].register_to_config(resolution=resolution)


def check_compatible(components: Mapping[str, Any], resolution: int) -> None:
    """Sizes that must agree between components, reported with the key to change."""
    unet, reference, vae = components["unet"], components["reference_unet"], components["vae"]
    image_proj, encoder, guider = components["image_proj"], components["image_encoder"], components["depth_guider"]
    latent, vae_factor = vae.config.latent_channels, latent_factor(vae)
    needed_inputs = 2 * latent + 1 + guider.config.out_channels
    guider_factor = 2 ** (len(guider.config.block_out_channels) - 1)
    halvings = len(unet.config.block_out_channels) - 1
    context = unet.config.cross_attention_dim

    def require(ok: bool, where: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: {message}")

    require(unet.config.in_channels == needed_inputs, "model.unet",
            f"needs {needed_inputs} input channels (latent, mask, masked latent, depth), has {unet.config.in_channels}")
    require(unet.config.out_channels == latent, "model.unet",
            f"out_channels {unet.config.out_channels} != the VAE's latent_channels {latent}")
    require(reference.config.in_channels == latent, "model.reference_unet",
            f"in_channels {reference.config.in_channels} != the VAE's latent_channels {latent}")
    require(reference.config.cross_attention_dim == context, "model.reference_unet",
            f"cross_attention_dim {reference.config.cross_attention_dim} != the imitative U-Net's {context}")
    require(image_proj.config.cross_attention_dim == context, "model.image_proj",
            f"cross_attention_dim {image_proj.config.cross_attention_dim} != the U-Nets' {context}")
    require(image_proj.config.in_features == encoder.config.hidden_size, "model.image_proj",
            f"in_features {image_proj.config.in_features} != the image encoder's hidden_size "
            f"{encoder.config.hidden_size}")
    # the added embedding: SDXL's U-Nets both take a pooled vector and six time ids, SD-1.5's none
    for role in ("unet", "reference_unet"):
        try:
            backbone.backbone_of(components[role].config)
        except ValueError as error:
            raise ConfigError(f"model.{role}: {error}") from None
    mismatch = backbone.component_mismatch(unet, reference, components.get("pooled_proj"))
    if mismatch is not None:
        raise ConfigError(f"model.{mismatch[0]}: {mismatch[1]}")
    pooled_proj = components.get("pooled_proj")
    if pooled_proj is not None:
        require(pooled_proj.config.in_features == encoder.config.hidden_size, "model.pooled_proj",
                f"in_features {pooled_proj.config.in_features} != the image encoder's hidden_size "
                f"{encoder.config.hidden_size}")
    require(guider_factor == vae_factor, "model.depth_guider",
            f"block_out_channels give a {guider_factor}x smaller map, the VAE {vae_factor}x: "
            f"use {int(np.log2(vae_factor)) + 1} widths")
    require(resolution // vae_factor % 2**halvings == 0, "data.resolution",
            f"{resolution} gives a {resolution // vae_factor}-pixel latent the U-Net cannot halve {halvings} times")
    patch = getattr(getattr(components["depth_estimator"], "config", None), "patch_size", None)
    if isinstance(patch, int):
        require(components["depth_input_size"] % patch == 0, "model.depth_input_size",
                f"{components['depth_input_size']} is not a multiple of the depth estimator's patch size {patch}")
