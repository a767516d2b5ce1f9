"""The training config: YAML loading, `key=value` overrides and strict validation.

Every key is documented in docs/training.md (the `data:` section in docs/data.md). Unknown keys,
wrong types and out-of-range values raise `ConfigError` naming the key's full dotted path, for
example `optim.lrr: unknown key`. Relative paths are taken relative to the config file's folder.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config_reader import Section, type_name
from ..data.config import DataConfig
from ..devices import DTYPES
from ..errors import ConfigError
from .components import COMPONENT_CLASSES, COMPONENT_ROLES, DEFAULT_CLASSES, ComponentSpec, pretrained_conflict

# pooled_proj: an SDXL model's pooled projection; an SD-1.5 model has none, and trains the rest
DEFAULT_TRAINABLE = ("unet", "reference_unet", "image_proj", "pooled_proj", "depth_guider")
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # diffusers' names, kept in the scheduler config
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
TOP_LEVEL_KEYS = ("seed", "output_dir", "model", "train", "optim", "checkpoint", "logging", "validation",
                  "imitation", "export", "data")


class ConfigLoader(yaml.SafeLoader):
    """YAML 1.1 loader that also reads `1e-5` as a float (PyYAML alone reads it as a string)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$"),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class ModelConfig:
    pretrained: str | None = None  # a MimicBrush model to fine-tune (then `components` is empty)
    depth_input_size: int | None = None  # None: the pretrained model's, else 518
    # what the imitative U-Net predicts; None: the pretrained model's scheduler's, else "epsilon"
    prediction_type: str | None = None
    # the timestep the reference U-Net always runs at (0: once per edit at inference); None: the
    # pretrained model's kind, else the release's (at each sample's noisy timestep)
    reference_timestep: int | None = None
    components: Mapping[str, ComponentSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSettings:
    max_steps: int = 1000
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    trainable: tuple[str, ...] = DEFAULT_TRAINABLE
    reference_drop: float = 0.1
    depth_drop: float = 0.5
    max_grad_norm: float | None = 1.0
    num_workers: int = 2
    allow_tf32: bool = True
    mask_loss_weight: float = 1.0  # weight of the masked region's error in the loss (1: plain MSE)
    correspondence_weight: float = 0.0  # correspondence supervision of the reference attention (0: off)
    ema_decay: float = 0.0  # moving average of the weights, measured and exported instead of them (0: off)


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adamw"
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    lr_scheduler: str = "constant"
    warmup_steps: int = 0


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 500
    keep_last: int | None = 3  # None keeps every checkpoint


@dataclass(frozen=True)
class LoggingConfig:
    every_steps: int = 10


@dataclass(frozen=True)
class ValidationConfig:
    every_steps: int = 500  # 0: no sample edits
    num_samples: int = 4
    cases: Path | None = None  # folder of NAME_source.png / NAME_source_mask.png / NAME_reference.png
    seed: int = 1
    steps: int = 50
    guidance: float = 5.0
    keep_shape: bool = False


@dataclass(frozen=True)
class ImitationConfig:
    """The held-out imitation metric (mimicbrush.training.imitation); off without `data`."""

    every_steps: int = 0  # 0: only at the end of training
    num_pairs: int = 48
    timesteps: tuple[int, ...] = (200, 500, 800)
    seed: int = 7
    data: DataConfig | None = None


@dataclass(frozen=True)
class ExportConfig:
    dtype: str = "fp32"
    data_licence: str | None = None  # the training data's licence, for the model card (a Hub licence id)


@dataclass(frozen=True)
class TrainConfig:
    config_path: Path
    base_dir: Path  # what relative paths in it are relative to: its folder, or `relative_to`
    seed: int
    output_dir: Path
    model: ModelConfig
    train: TrainSettings
    optim: OptimConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    validation: ValidationConfig
    export: ExportConfig
    data: DataConfig
    document: Mapping[str, Any]  # the YAML document after overrides, kept with each run
    imitation: ImitationConfig = ImitationConfig()


def load_train_config(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    max_steps: int | None = None,
    output_dir: str | Path | None = None,
) -> TrainConfig:
    """Read, override and validate a training config. `output_dir` (from the command line) is
    relative to the current directory; everything in the file is relative to the file."""
    path = Path(path)
    document = apply_overrides(read_yaml(path), overrides)
    if max_steps is not None:
        document = apply_overrides(document, [f"train.max_steps={max_steps}"])
    if output_dir is not None:
        document["output_dir"] = os.path.abspath(Path(output_dir).expanduser())
    return parse_train_config(document, path)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from error
    try:
        document = yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from error
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type_name(document)}")
    return document


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-4` -> (['optim', 'lr'], 0.0001); the value is read as YAML."""
    key, separator, value = text.partition("=")
    if not separator or not key or not all(key.split(".")):
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=1e-4")
    try:
        parsed = yaml.load(value, Loader=ConfigLoader) if value else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({' '.join(str(error).split())})") from None
    return key.split("."), parsed


def apply_overrides(document: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `document` with each `dotted.key=value` set; missing mappings are created and
    list items are addressed by index (`data.static.datasets.0.images=...`)."""
    result = copy.deepcopy(dict(document))
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = result
        for depth, key in enumerate(keys[:-1]):
            where = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                node = node[_list_index(key, node, where)]
                continue
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {text!r}: {where} is a {type(node).__name__}, not a mapping")
        if isinstance(node, list):
            node[_list_index(keys[-1], node, ".".join(keys))] = value
        else:
            node[keys[-1]] = value
    return result


def _list_index(key: str, items: list, where: str) -> int:
    if not key.isdigit() or int(key) >= len(items):
        raise ConfigError(f"{where}: expected an index below {len(items)} into a list")
    return int(key)


def parse_train_config(document: Mapping[str, Any], config_path: Path) -> TrainConfig:
    """Validate a whole (already overridden) document."""
    # `relative_to` moves the base of relative paths: a run folder's copy of its config names the
    # original's folder there, so the copy can be trained or measured from where it lies
    root = Section(document, "", config_path.resolve().parent)
    base_dir = root.path("relative_to", None, optional=True) or root.base_dir
    root.base_dir = base_dir
    seed = root.integer("seed", 0, minimum=0)
    output_dir = root.path("output_dir", None, optional=True)
    if output_dir is None:
        output_dir = Path.cwd() / "runs" / config_path.stem  # documented default
    data_raw = root.take("data", None)
    if data_raw is None:
        raise ConfigError("data: required (see docs/data.md)")
    config = TrainConfig(
        config_path=config_path.resolve(),
        base_dir=base_dir,
        seed=seed,
        output_dir=output_dir,
        model=_model(root.child("model")),
        train=_train(root.child("train")),
        optim=_optim(root.child("optim")),
        checkpoint=_checkpoint(root.child("checkpoint")),
        logging=_logging(root.child("logging")),
        validation=_validation(root.child("validation")),
        export=_export(root.child("export")),
        data=DataConfig.from_dict(data_raw, base_dir=base_dir, path="data"),
        document=copy.deepcopy(dict(document)),
        imitation=_imitation(root.child("imitation")),
    )
    root.finish()
    _check_consistency(config)
    return config


def _model(section: Section) -> ModelConfig:
    pretrained = section.source("pretrained")
    depth_input_size = section.integer("depth_input_size", None, minimum=14, optional=True)
    prediction_type = section.choice("prediction_type", None, PREDICTION_TYPES, optional=True)
    reference_timestep = section.integer("reference_timestep", None, minimum=0, optional=True)
    components = {}
    for role in COMPONENT_ROLES:
        entry = section.child(role)
        if not entry.given:
            continue
        components[role] = _component(entry, role)
        if pretrained is not None:
            raise ConfigError(pretrained_conflict(role, components[role], pretrained))
    section.finish()
    if pretrained is None:
        for role in ("unet", "vae", "image_encoder", "depth_estimator"):
            if role not in components:
                raise ConfigError(f"model.{role}: required (give `pretrained` or `config`), "
                                  "or set model.pretrained to fine-tune a MimicBrush model")
    return ModelConfig(pretrained=pretrained, depth_input_size=depth_input_size, prediction_type=prediction_type,
                       reference_timestep=reference_timestep, components=components)


def _component(section: Section, role: str) -> ComponentSpec:
    classes = COMPONENT_CLASSES[role]
    class_name = section.choice("class", DEFAULT_CLASSES[role], tuple(classes))
    pretrained = section.source("pretrained")
    subfolder = section.string("subfolder", None, optional=True)
    config = section.mapping("config")
    section.finish()
    if pretrained is not None and config:
        raise ConfigError(f"{section.name}: give either `pretrained` or `config`, not both")
    if subfolder is not None and pretrained is None:
        raise ConfigError(f"{section.name}.subfolder: only used with `pretrained`")
    classes[class_name].check_config(config, f"{section.name}.config")
    return ComponentSpec(class_name=class_name, pretrained=pretrained, subfolder=subfolder, config=config)


def _train(section: Section) -> TrainSettings:
    defaults = TrainSettings()
    trainable = section.string_list("trainable", defaults.trainable, COMPONENT_ROLES)
    config = TrainSettings(
        max_steps=section.integer("max_steps", defaults.max_steps, minimum=1),
        batch_size=section.integer("batch_size", defaults.batch_size, minimum=1),
        gradient_accumulation_steps=section.integer("gradient_accumulation_steps",
                                                    defaults.gradient_accumulation_steps, minimum=1),
        mixed_precision=section.choice("mixed_precision", defaults.mixed_precision, MIXED_PRECISION),
        gradient_checkpointing=section.boolean("gradient_checkpointing", defaults.gradient_checkpointing),
        trainable=trainable,
        reference_drop=section.number("reference_drop", defaults.reference_drop, minimum=0.0, maximum=1.0),
        depth_drop=section.number("depth_drop", defaults.depth_drop, minimum=0.0, maximum=1.0),
        max_grad_norm=section.number("max_grad_norm", defaults.max_grad_norm, minimum=1e-12, optional=True),
        num_workers=section.integer("num_workers", defaults.num_workers, minimum=0),
        allow_tf32=section.boolean("allow_tf32", defaults.allow_tf32),
        mask_loss_weight=section.number("mask_loss_weight", defaults.mask_loss_weight, minimum=0.0,
                                        exclusive_minimum=True),
        correspondence_weight=section.number("correspondence_weight", defaults.correspondence_weight, minimum=0.0),
        ema_decay=section.number("ema_decay", defaults.ema_decay, minimum=0.0, maximum=1.0),
    )
    section.finish()
    if config.ema_decay == 1.0:
        raise ConfigError("train.ema_decay: must be below 1 (1 would never move from the initial weights; 0 is off)")
    if not trainable:
        raise ConfigError("train.trainable: at least one component must train")
    return config


def _optim(section: Section) -> OptimConfig:
    defaults = OptimConfig()
    betas = section.number_list("betas", defaults.betas, length=2, minimum=0.0, maximum=0.999999)
    config = OptimConfig(
        optimizer=section.choice("optimizer", defaults.optimizer, OPTIMIZERS),
        lr=section.number("lr", defaults.lr, minimum=0.0, exclusive_minimum=True),
        betas=(betas[0], betas[1]),
        weight_decay=section.number("weight_decay", defaults.weight_decay, minimum=0.0),
        eps=section.number("eps", defaults.eps, minimum=0.0, exclusive_minimum=True),
        lr_scheduler=section.choice("lr_scheduler", defaults.lr_scheduler, LR_SCHEDULERS),
        warmup_steps=section.integer("warmup_steps", defaults.warmup_steps, minimum=0),
    )
    section.finish()
    return config


def _checkpoint(section: Section) -> CheckpointConfig:
    defaults = CheckpointConfig()
    config = CheckpointConfig(
        every_steps=section.integer("every_steps", defaults.every_steps, minimum=1),
        keep_last=section.integer("keep_last", defaults.keep_last, minimum=1, optional=True),
    )
    section.finish()
    return config


def _logging(section: Section) -> LoggingConfig:
    config = LoggingConfig(every_steps=section.integer("every_steps", LoggingConfig.every_steps, minimum=1))
    section.finish()
    return config


def _validation(section: Section) -> ValidationConfig:
    defaults = ValidationConfig()
    config = ValidationConfig(
        every_steps=section.integer("every_steps", defaults.every_steps, minimum=0),
        num_samples=section.integer("num_samples", defaults.num_samples, minimum=1),
        cases=section.path("cases", None, optional=True),
        seed=section.integer("seed", defaults.seed, minimum=0),
        steps=section.integer("steps", defaults.steps, minimum=1, maximum=1000),
        guidance=section.number("guidance", defaults.guidance, minimum=0.0),
        keep_shape=section.boolean("keep_shape", defaults.keep_shape),
    )
    section.finish()
    return config


def _imitation(section: Section) -> ImitationConfig:
    defaults = ImitationConfig()
    timesteps = section.take("timesteps", list(defaults.timesteps))
    if (not isinstance(timesteps, list) or not timesteps
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in timesteps)):
        raise ConfigError(f"{section.where('timesteps')}: expected a non-empty list of integers >= 0, "
                          f"got {timesteps!r}")
    data_raw = section.take("data", None)
    config = ImitationConfig(
        every_steps=section.integer("every_steps", defaults.every_steps, minimum=0),
        num_pairs=section.integer("num_pairs", defaults.num_pairs, minimum=2),
        timesteps=tuple(timesteps),
        seed=section.integer("seed", defaults.seed, minimum=0),
        data=None if data_raw is None else DataConfig.from_dict(data_raw, section.base_dir, section.where("data")),
    )
    section.finish()
    if section.given and config.data is None:
        raise ConfigError(f"{section.where('data')}: required (the held-out pairs to measure imitation on)")
    return config


def _export(section: Section) -> ExportConfig:
    config = ExportConfig(dtype=section.choice("dtype", ExportConfig.dtype, tuple(DTYPES)),
                          data_licence=section.string("data_licence", None, optional=True))
    section.finish()
    return config


def _check_consistency(config: TrainConfig) -> None:
    """Constraints between sections."""
    if config.optim.warmup_steps and config.optim.lr_scheduler == "constant":
        raise ConfigError("optim.warmup_steps: the constant schedule has no warmup (use constant_with_warmup)")
    components = config.model.components
    if "unet" in components and "reference_unet" not in components and components["unet"].pretrained is not None:
        raise ConfigError("model.reference_unet: required when model.unet is pretrained "
                          "(only a from-config U-Net can lend its architecture to the reference U-Net)")
