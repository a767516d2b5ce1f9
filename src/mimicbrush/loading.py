"""Load a pipeline for the CLI, the app and the benchmark: device, dtype and model choice."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import InputError, WeightsError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but no CUDA GPU is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (use auto, cpu or cuda)") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: fp16 on CUDA, fp32 elsewhere (half precision on CPU is slow and lossy)."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (use auto, fp32, fp16 or bf16)")
    return DTYPES[dtype]


# said wherever a command falls back on the bundled model: its weights are trained on DAVIS 2016
# (CC BY-NC 4.0), so they are for non-commercial use (model card; docs/demo-model.md says where a
# commercial user goes instead)
BUNDLED_MODEL_NOTICE = ("model: the bundled demo model, CC BY-NC 4.0 (non-commercial use only; its model card "
                        "says why), pass --model for another")


def default_model() -> Path:
    """The bundled demo model, when this install ships one."""
    bundled = Path(__file__).parent / "assets" / "demo-model"
    if not (bundled / "model_index.json").is_file():
        raise WeightsError("no bundled model in this version: pass --model (a release-layout folder, "
                           "a `mimicbrush convert` folder, or a hub id such as xichenhku/MimicBrush)")
    return bundled


def load_pipeline(
    model: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    offload: str = "none",
    compiled: bool = False,
    cache_dir: str | Path | None = None,
):
    """A ready MimicBrushPipeline on `device` (progress bars on stderr); see acceleration.py for
    `offload` (none, model, sequential) and `compiled`; a hub id is downloaded into `cache_dir`
    (default the Hugging Face cache)."""
    from .acceleration import compile_unets, place_pipeline
    from .pipeline import MimicBrushPipeline

    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    pipe = MimicBrushPipeline.from_pretrained(model if model is not None else default_model(), torch_dtype=torch_dtype,
                                              cache_dir=cache_dir)
    pipe = place_pipeline(pipe, target, offload)
    if compiled:
        compile_unets(pipe)
    return pipe
