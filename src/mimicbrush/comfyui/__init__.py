"""MimicBrush nodes for ComfyUI (classic schema: NODE_CLASS_MAPPINGS), docs/comfyui.md.

    nodes.py    Load MimicBrush and MimicBrush Edit
    model.py    the MIMICBRUSH_MODEL object: loading, schedulers, ComfyUI's model management
    tensors.py  IMAGE / MASK tensors ↔ 8-bit pixels, by the command line's rules
    host.py     what is used of ComfyUI (folder_paths, model management, progress, interrupt),
                imported only when used, so this package imports (and is tested) without it

Loaded by installable ComfyUIs through the `comfyui.custom_nodes` entry point (pyproject.toml),
and by any ComfyUI from custom_nodes/mimicbrush/, a clone of the repository, whose __init__.py
finds this package and exports these mappings.
Importing this does no work: no model is loaded and nothing is downloaded until a node runs.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
