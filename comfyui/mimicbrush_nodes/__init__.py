"""MimicBrush's ComfyUI nodes, for ComfyUIs that load packs from their custom_nodes folder.

Link or copy this folder into ComfyUI/custom_nodes/ after `pip install mimicbrush` into ComfyUI's
Python (docs/comfyui.md). Keep a folder name other than `mimicbrush`: ComfyUI imports a pack under
its folder's name, which would hide the mimicbrush package itself.
"""

if __name__ == "mimicbrush":
    import sys

    del sys.modules[__name__]  # ComfyUI put this folder there: give the name back to the package
    raise ImportError("this custom_nodes folder is named 'mimicbrush', which hides the mimicbrush package: "
                      "rename it (e.g. custom_nodes/mimicbrush_nodes)")

from mimicbrush.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
