"""The device and dtype rule: which device `auto` means, each device's default dtype, and the
checks that fail before a model loads. Edits, the app, `bench run` (pipeline and scorers) and
`edit --batch` go through `resolve_device`; the trainer lets accelerate choose, whose order is the
same (CUDA, then MPS, then the CPU).
"""

from __future__ import annotations

import warnings

import torch

from .errors import InputError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"

# fp16's time over fp32's on the CPU, measured by bench_inference.py --dtypes on the bundled model's
# architecture (9×) and the narrow SD-1.5 one (33×): docs/performance.md, "Half precision on the CPU"
FP16_CPU_SLOWDOWN = "10–35×"


class SlowDtypeWarning(UserWarning):
    """A dtype that works on this device but runs much slower than its default."""


def mps_available() -> bool:
    """Apple's GPU (Metal Performance Shaders) is usable by this PyTorch on this machine."""
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto`: CUDA, else MPS, else the CPU. A device that is not there is one clear InputError."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        target = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r} (use {DEVICE_NAMES})") from None
    if target.type == "cuda":
        _check_cuda(target)
    elif target.type == "mps":
        _check_mps()
    elif target.type != "cpu":
        raise InputError(f"device {name!r} is not supported (use {DEVICE_NAMES})")
    return target


def _check_cuda(target: torch.device) -> None:
    if not torch.cuda.is_available():
        raise InputError(f"--device {target} was asked for, but no CUDA GPU is available")
    count = torch.cuda.device_count()
    if target.index is not None and target.index >= count:
        raise InputError(f"--device {target} was asked for, but this machine has {count} CUDA GPU(s): "
                         f"cuda:0 to cuda:{count - 1}")


def _check_mps() -> None:
    if mps_available():
        return
    backend = getattr(torch.backends, "mps", None)
    if backend is None or not backend.is_built():
        why = "this PyTorch build has no MPS support (MPS is the GPU of Apple-silicon Macs)"
    else:
        why = "MPS needs an Apple-silicon Mac with macOS 12.3 or later"
    raise InputError(f"--device mps was asked for, but Apple's MPS is not available: {why}")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: fp16 on CUDA (the release's) and on MPS (half the memory, which a Mac shares with
    everything else; bf16 needs macOS 14 there), fp32 on the CPU (fast and exact; fp16 is slow)."""
    if dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (use auto, fp32, fp16 or bf16)")
    return DTYPES[dtype]


def check_offload(offload: str, device: torch.device) -> None:
    """Offload streams weights from CPU memory to a GPU: refused on the CPU, before any loading."""
    if offload != "none" and device.type == "cpu":
        raise InputError(f"--offload {offload} streams weights from CPU memory to a GPU, and this run is on the CPU: "
                         "drop --offload, or pass --device cuda or mps where there is one")


def notice_slow_dtype(device: torch.device, dtype: torch.dtype) -> None:
    """One line where fp16 runs on the CPU: it works, but CPUs have no fast fp16 arithmetic."""
    if device.type == "cpu" and dtype == torch.float16:
        warnings.warn(f"fp16 on the CPU works but runs about {FP16_CPU_SLOWDOWN} slower than fp32, the CPU's "
                      "default (docs/performance.md)", SlowDtypeWarning, stacklevel=3)
