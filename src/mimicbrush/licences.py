"""The licences of the weights a MimicBrush model can start from, for its model card.

`SOURCES` maps each well-known source (a hub id, or the file name of a checkpoint distributed
outside the hub) to the licence its publisher gives it, as its hub page states (checked when
this table was written; `docs/training.md`, "Model cards", says which could not be checked).
`derived_from` names the sources a model was itself made from whose terms it carries on: the
CreativeML OpenRAIL licences require derived models to keep their use restrictions. A source
missing from the table is reported as unknown, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

UNKNOWN = "unknown: check before you share"


@dataclass(frozen=True)
class Licence:
    id: str  # Hugging Face's licence identifier, as a model card's `license:` gives it
    name: str
    url: str
    # terms beyond attribution that bind users of a derived model (use restrictions,
    # non-commercial use); permissive licences only ask to keep their notice
    restricts_use: bool


LICENCES = {licence.id: licence for licence in (
    Licence("creativeml-openrail-m", "CreativeML OpenRAIL-M",
            "https://huggingface.co/spaces/CompVis/stable-diffusion-license", True),
    Licence("openrail++", "CreativeML Open RAIL++-M",
            "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md", True),
    Licence("cc-by-nc-4.0", "CC BY-NC 4.0", "https://creativecommons.org/licenses/by-nc/4.0/", True),
    Licence("mit", "MIT", "https://opensource.org/license/mit", False),
    Licence("apache-2.0", "Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0", False),
)}


@dataclass(frozen=True)
class Source:
    licence: str  # a key of LICENCES
    what: str
    derived_from: tuple[str, ...] = ()  # keys of SOURCES whose terms carry over


_SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
_SD15_INPAINTING = "stable-diffusion-v1-5/stable-diffusion-inpainting"
_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
_OPENCLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
_DEPTH_ANYTHING_B = "LiheYoung/depth-anything-base-hf"

SOURCES = {
    _SD15: Source("creativeml-openrail-m", "Stable Diffusion 1.5"),
    "runwayml/stable-diffusion-v1-5": Source("creativeml-openrail-m", "Stable Diffusion 1.5 (its first hub id)"),
    _SD15_INPAINTING: Source("creativeml-openrail-m", "Stable Diffusion 1.5 inpainting", (_SD15,)),
    "runwayml/stable-diffusion-inpainting": Source("creativeml-openrail-m",
                                                   "Stable Diffusion 1.5 inpainting (its first hub id)", (_SD15,)),
    "stabilityai/sd-vae-ft-mse": Source("mit", "SD VAE fine-tuned with MSE (the release's VAE)"),
    _SDXL: Source("openrail++", "SDXL 1.0 base"),
    "diffusers/stable-diffusion-xl-1.0-inpainting-0.1": Source("openrail++", "SDXL 1.0 inpainting 0.1", (_SDXL,)),
    "stabilityai/sdxl-vae": Source("mit", "SDXL VAE"),
    "madebyollin/sdxl-vae-fp16-fix": Source("mit", "SDXL VAE, fp16 fix", ("stabilityai/sdxl-vae",)),
    _OPENCLIP_H: Source("mit", "OpenCLIP ViT-H/14, LAION-2B"),
    "h94/IP-Adapter": Source("apache-2.0", "IP-Adapter (models/image_encoder: OpenCLIP ViT-H/14)", (_OPENCLIP_H,)),
    "LiheYoung/depth-anything-small-hf": Source("apache-2.0", "Depth Anything v1 ViT-S/14"),
    _DEPTH_ANYTHING_B: Source("apache-2.0", "Depth Anything v1 ViT-B/14"),
    "LiheYoung/depth-anything-large-hf": Source("apache-2.0", "Depth Anything v1 ViT-L/14"),
    # the original checkpoints (LiheYoung/Depth-Anything, Apache-2.0, which gives them no other terms)
    "depth_anything_vits14.pth": Source("apache-2.0", "Depth Anything v1 ViT-S/14 checkpoint"),
    "depth_anything_vitb14.pth": Source("apache-2.0", "Depth Anything v1 ViT-B/14 checkpoint"),
    "depth_anything_vitl14.pth": Source("apache-2.0", "Depth Anything v1 ViT-L/14 checkpoint"),
    # the authors' release: its U-Nets are fine-tuned from SD-1.5, whose use restrictions they keep
    "xichenhku/MimicBrush": Source("apache-2.0", "MimicBrush, the authors' release",
                                   (_SD15_INPAINTING, _SD15, "stabilityai/sd-vae-ft-mse", _OPENCLIP_H,
                                    "depth_anything_vitb14.pth")),
}
RELEASE = "xichenhku/MimicBrush"


def known_source(source: str) -> str | None:
    """The SOURCES key a source names: a hub id, a checkpoint's file name, or a Hugging Face
    cache folder (`…/models--owner--name/snapshots/…`); None when the table does not know it."""
    if source in SOURCES:
        return source
    path = Path(source)
    if path.name in SOURCES:
        return path.name
    cached = re.search(r"models--([^/\\]+?)--([^/\\]+)", source)
    if cached and f"{cached[1]}/{cached[2]}" in SOURCES:
        return f"{cached[1]}/{cached[2]}"
    return None


def carried_licences(key: str) -> list[str]:
    """A known source's own licence and those of every source it derives from, in order."""
    found: list[str] = []
    pending = [key]
    while pending:
        source = SOURCES[pending.pop(0)]
        if source.licence not in found:
            found.append(source.licence)
        pending += source.derived_from
    return found


def describe(licence_id: str) -> str:
    """`CreativeML Open RAIL++-M (openrail++)`; an id the table does not know as it is."""
    licence = LICENCES.get(licence_id)
    return f"{licence.name} (`{licence.id}`)" if licence else f"`{licence_id}`"


def model_licence(licences: list[str | None]) -> str:
    """The `license:` of a model whose weights carry all of `licences` (None: a source of
    unknown licence), the way derived models on the Hub declare theirs: `unknown` if any is
    unknown; the licence itself if there is one; else the one licence with use terms beyond
    attribution, when there is exactly one (the permissive ones only ask that their notices be
    kept, which the card does); else `other`, and the card names them all."""
    distinct = list(dict.fromkeys(licences))
    if not distinct or None in distinct:
        return "unknown"
    if len(distinct) == 1:
        return distinct[0]
    binding = [licence for licence in distinct if LICENCES.get(licence, Licence(licence, "", "", True)).restricts_use]
    return binding[0] if len(binding) == 1 else "other"
