"""Load a pipeline for the CLI, the app and the benchmark: the model's choice, on the device and
in the dtype that devices.py's rule picks."""

from __future__ import annotations

from pathlib import Path

from .devices import DTYPES, resolve_device, resolve_dtype  # noqa: F401  (the package's names for them)
from .errors import WeightsError

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
    from .devices import check_offload
    from .pipeline import MimicBrushPipeline

    target = resolve_device(device)  # a device that is not there, or offload without one, fail before loading
    torch_dtype = resolve_dtype(dtype, target)
    check_offload(offload, target)
    pipe = MimicBrushPipeline.from_pretrained(model if model is not None else default_model(), torch_dtype=torch_dtype,
                                              cache_dir=cache_dir)
    pipe = place_pipeline(pipe, target, offload)
    if compiled:
        compile_unets(pipe)
    return pipe
