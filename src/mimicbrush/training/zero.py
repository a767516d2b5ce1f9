"""The trainer under DeepSpeed ZeRO stages 1 and 2, launched by `accelerate launch` with a
DeepSpeed config (configs/accelerate/ds-zero2.yaml).

What DeepSpeed changes, and how the trainer meets it:
- its engine steps, clips and accumulates inside `accelerator.backward`, with the micro-batch,
  accumulation and clipping of its own config, and accelerate feeds it no DataLoader to read the
  batch from: `configure_deepspeed` writes the training config's values into it and refuses an
  accelerate file that says otherwise (so `train.*` stays the one place to set them);
- under bf16 or fp16 it stores the prepared module (the trainable components) in that dtype and
  accelerate turns autocast off: the objective casts the U-Nets' inputs to their dtype, the
  weight average keeps float32 copies, and the export reads the float32 master weights;
- its checkpoints hold the optimizer state (and the float32 master weights) sharded per process,
  in DeepSpeed's own files: `full_precision_state_dict` gathers the master weights so that a
  checkpoint also holds `model.safetensors`, as without DeepSpeed, for `--export`.

Stage 3 shards the weights themselves, which the sample edits, the imitation metric and the
export read on one process: it is refused.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import ConfigError

MAX_ZERO_STAGE = 2


def launched_with_deepspeed() -> bool:
    """`accelerate launch` with a DeepSpeed config says so in the environment of every process."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerator_options() -> dict:
    """Extra `Accelerator` arguments for a DeepSpeed launch. Without a GPU, DeepSpeed runs on its
    CPU accelerator (how it is tested here), and accelerate must be told the process group's
    backend: it knows none for CPU processes unless they are its own `cpu=True` ones, which
    leave DeepSpeed out."""
    from accelerate.utils import InitProcessGroupKwargs

    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("the accelerate config launches DeepSpeed, which is not installed: pip install deepspeed")
    if torch.cuda.is_available():
        return {}
    return {"kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}


def zero_stage(accelerator) -> int | None:
    """The ZeRO stage of a DeepSpeed run; None without DeepSpeed."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def configure_deepspeed(accelerator, train) -> None:
    """Put the training config's micro-batch, accumulation and clipping into DeepSpeed's config,
    before `accelerator.prepare` builds the engine."""
    plugin = accelerator.state.deepspeed_plugin
    stage = zero_stage(accelerator)
    if stage > MAX_ZERO_STAGE:
        raise ConfigError(f"DeepSpeed ZeRO stage {stage}: the trainer supports stages 1 and 2 (stage 3 shards the "
                          "weights, which the sample edits, the imitation metric and the export read whole)")
    owned = {  # DeepSpeed key -> (training config key, value)
        "train_micro_batch_size_per_gpu": ("train.batch_size", train.batch_size),
        "gradient_accumulation_steps": ("train.gradient_accumulation_steps", train.gradient_accumulation_steps),
        # DeepSpeed clips inside its step (0: no clipping); the trainer's own clipping is then off
        "gradient_clipping": ("train.max_grad_norm", 0.0 if train.max_grad_norm is None else train.max_grad_norm),
        "train_batch_size": ("train.batch_size × train.gradient_accumulation_steps × processes",
                             train.batch_size * train.gradient_accumulation_steps * accelerator.num_processes),
    }
    for key, (source, value) in owned.items():
        given = plugin.get_value(key)
        if given in (None, "auto"):
            plugin.deepspeed_config[key] = value
        elif float(given) != float(value):
            raise ConfigError(f"the DeepSpeed config sets {key} {given}, but {source} is {value}: leave it out of the "
                              "accelerate/DeepSpeed file (the trainer fills it in) or make them equal")
    fp16 = plugin.deepspeed_config.get("fp16") or {}
    if str(fp16.get("enabled")).lower() == "true":
        # the objective casts each component's inputs itself; DeepSpeed's auto_cast (accelerate's
        # default for fp16) would first round the whole batch, noise included, to fp16
        fp16["auto_cast"] = False


def full_precision_state_dict(module: nn.Module, keep: bool) -> dict[str, torch.Tensor] | None:
    """The state dict of a DeepSpeed-prepared module with its float32 master weights, on the CPU
    (every other floating tensor upcast to float32). Collective: every process calls it; the
    result is kept (returned) where `keep`, else None. A trained parameter's master copy is
    sharded across the processes and gathered one parameter at a time."""
    from deepspeed.utils import safe_get_full_fp32_param

    masters = {}
    for name, parameter in module.named_parameters():
        full = safe_get_full_fp32_param(parameter)  # None for a parameter the optimizer does not hold
        if full is not None and keep:
            masters[name] = full.cpu()
    if not keep:
        return None
    state = {}
    for name, tensor in module.state_dict().items():
        if name in masters:
            state[name] = masters[name]
        elif tensor.is_floating_point():
            state[name] = tensor.detach().to("cpu", torch.float32, copy=True)
        else:
            state[name] = tensor.detach().to("cpu", copy=True)
    return state


def load_full_precision(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Upcast `module` to float32 and load `state` (from `full_precision_state_dict`): after
    training, so that what is measured last and exported are the master weights, not their
    half-precision copies."""
    module.to(dtype=torch.float32)
    module.load_state_dict(state, strict=True)
