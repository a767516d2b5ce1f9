"""MimicBrush: zero-shot image editing with reference imitation.

Public names are imported lazily so that `import mimicbrush` (and the CLI's --help) stay fast.
diffusers' `from_pretrained` also looks our component classes up on this module by name.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "MimicBrushPipeline": "pipeline",
    "MimicBrushPipelineOutput": "pipeline",
    "ImageProjection": "models.image_encoder",
    "PooledProjection": "models.image_encoder",
    "DepthGuider": "models.depth",
    "PixelShuffleAutoencoder": "models.standins",
    "LuminanceDepth": "models.standins",
    "MimicBrushError": "errors",
    "InputError": "errors",
    "WeightsError": "errors",
    "ConfigError": "errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
