"""Speed and memory options: CPU offload (model-wise or module-wise) and compiled U-Nets."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .devices import check_offload
from .errors import InputError

OFFLOAD_MODES = ("none", "model", "sequential")


def place_pipeline(pipe, device: torch.device, offload: str = "none"):
    """Move `pipe` to `device`, or keep it in CPU memory and stream it to the GPU.

    model: each component moves to the GPU when it runs and back after (diffusers' model
    offload; the U-Nets dominate the peak). sequential: submodule by submodule (lowest memory,
    slowest).
    """
    if offload not in OFFLOAD_MODES:
        raise InputError(f"unknown offload mode {offload!r} (use {', '.join(OFFLOAD_MODES)})")
    check_offload(offload, device)
    if offload == "none":
        return pipe.to(device)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    return pipe


class CompiledForward:
    """A module's forward through torch.compile, falling back to eager (with one warning) when
    compilation fails, e.g. without a C++ compiler or Triton. Shapes are static: an edit's U-Net
    inputs do not depend on its seed, images or mask, so a process compiles once per setting
    (tests/test_compile_once.py)."""

    def __init__(self, module: nn.Module, mode: str | None, backend: str = "inductor"):
        self.eager = module.forward
        self.compiled = torch.compile(module.forward, mode=mode, backend=backend, dynamic=False)
        self.failed = False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # dynamo/inductor raise many types; all mean "cannot compile"
                self.failed = True
                warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                              "running eagerly", stacklevel=2)
        return self.eager(*args, **kwargs)


def compile_unets(pipe, mode: str | None = None, backend: str = "inductor") -> None:
    """Compile both U-Nets (static shapes). On CUDA the default mode replays CUDA graphs, which
    removes the launch overhead that dominates an eager SD-1.5 step. The reference U-Net then runs
    to its end: an early exit would break the graph. `backend="eager"` captures the graphs without
    generating code (gpu_check's CPU rehearsal, tests/test_compile_once.py: dynamo's path, guards and
    recompilations included, in seconds, not minutes); only inductor takes a mode."""
    if backend != "inductor":
        mode = None
    elif mode is None:
        mode = "reduce-overhead" if pipe.unet.device.type == "cuda" else "default"
    for unet in (pipe.unet, pipe.reference_unet):
        unet.to(memory_format=torch.channels_last)
        unet.forward = CompiledForward(unet, mode, backend)
    pipe.reference_unet_runs_to_end = True
