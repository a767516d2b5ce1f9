"""The backbone, SD-1.5 or SDXL, follows from the imitative U-Net: one whose config says
`addition_embed_type: text_time` is SDXL-shaped. Nothing else in the model is configured for it.

SDXL's U-Nets add a term to their time embedding: a pooled vector (`text_embeds`, 1280 wide for
SDXL, the pooled text embedding there) and six Fourier-embedded `time_ids`. MimicBrush has no
text, so here:
- `text_embeds` is a trainable projection (`PooledProjection`) of the frozen image encoder's first
  (CLS) penultimate token, the same tokens the image tokens come from (no extra encoder pass);
  with K references the imitative row takes the mean of their K pooled vectors;
- `time_ids` are (original size, crop top-left, target size) = (R, R, 0, 0, R, R) at the edit's
  (or training) resolution R, what SDXL's pipelines give an uncropped square;
- the reference U-Net keeps its added embedding and receives the same conditions as the rows it
  serves, each reference its own pooled vector. It starts from SDXL base, every block of which
  was trained with that term in its time embedding: dropping it (as IDM-VTON's garment U-Net
  does) would change the features the bank receives from what the pretrained U-Net computes, and
  keeping it costs one small MLP. So both U-Nets must have the same added-embedding setup.

The conditions are data: `AddedConditions` builds the `added_cond_kwargs` each U-Net call takes,
as diffusers' SDXL pipelines pass them. For SD-1.5 there are none and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SD15, SDXL = "sd15", "sdxl"
BACKBONES = (SD15, SDXL)
TIME_IDS = 6  # original height and width, crop top and left, target height and width
# SDXL's pooled width (OpenCLIP ViT-bigG/14's text projection); the refiner's added embedding is
# 2560 = 5 × 256 + 1280: this width beside five time ids (an aesthetic score replaces the target size)
SDXL_POOLED_WIDTH = 1280


def backbone_of(unet_config) -> str:
    """"sdxl" for a U-Net with SDXL's added embedding, "sd15" for one without; ValueError for the
    other added embeddings diffusers knows (text, image, ...), which no MimicBrush backbone uses."""
    kind = unet_config.addition_embed_type
    if kind == "text_time":
        return SDXL
    if kind is None:
        return SD15
    raise ValueError(f"addition_embed_type {kind!r} is not a MimicBrush backbone (SD-1.5: none; SDXL: 'text_time')")


def added_embedding(unet_config) -> str:
    """The U-Net's added-embedding setup, for messages."""
    if unet_config.addition_embed_type != "text_time":
        return f"addition_embed_type {unet_config.addition_embed_type}"
    return (f"text_time, projection_class_embeddings_input_dim {unet_config.projection_class_embeddings_input_dim}"
            f" with addition_time_embed_dim {unet_config.addition_time_embed_dim}")


def pooled_width(unet_config) -> int:
    """Width of the pooled vector an SDXL-shaped U-Net takes beside its six time ids."""
    return unet_config.projection_class_embeddings_input_dim - TIME_IDS * unet_config.addition_time_embed_dim


def unet_problem(unet_config) -> str | None:
    """Why an SDXL-shaped U-Net cannot take six time ids and a pooled vector, or None.

    Refiner rule: an added-embedding input of 5 × addition_time_embed_dim + 1280 is SDXL-refiner's
    (2560 = 5·256 + 1280: SDXL's pooled width beside five time ids). Its weights expect the pooled
    vector where six ids would put their first columns, so it is refused rather than fed six ids."""
    if backbone_of(unet_config) != SDXL:
        return None
    total, step = unet_config.projection_class_embeddings_input_dim, unet_config.addition_time_embed_dim
    if total - 5 * step == SDXL_POOLED_WIDTH:
        return (f"a refiner-style added embedding: projection_class_embeddings_input_dim {total} = 5 × "
                f"addition_time_embed_dim {step} + {SDXL_POOLED_WIDTH} (five time ids, as SDXL-refiner's), but "
                f"MimicBrush-XL gives six ({TIME_IDS} × {step} + a pooled vector); start from SDXL base or inpainting")
    if total - TIME_IDS * step <= 0:
        return (f"projection_class_embeddings_input_dim {total} leaves no room for a pooled vector beside "
                f"{TIME_IDS} time ids of addition_time_embed_dim {step}")
    return None


def component_mismatch(unet, reference_unet, pooled_proj) -> tuple[str, str] | None:
    """(component, message) for the first added-embedding setup that does not fit the imitative
    U-Net's, or None. Used on load (pipeline) and before training (components)."""
    problem = unet_problem(unet.config)
    if problem is not None:
        return "unet", problem
    backbone, reference_backbone = backbone_of(unet.config), backbone_of(reference_unet.config)
    if backbone == SDXL:
        if reference_backbone != SDXL or any(
                getattr(reference_unet.config, key) != getattr(unet.config, key)
                for key in ("addition_time_embed_dim", "projection_class_embeddings_input_dim")):
            return "reference_unet", (
                f"{added_embedding(reference_unet.config)}, but the imitative U-Net has {added_embedding(unet.config)}: "
                "the reference U-Net keeps SDXL's added embedding and takes the same conditions (docs/training.md)")
        width = pooled_width(unet.config)
        if pooled_proj is None:
            return "pooled_proj", f"missing: an SDXL-shaped U-Net takes a {width}-wide pooled vector"
        if pooled_proj.config.out_features != width:
            return "pooled_proj", (
                f"out_features {pooled_proj.config.out_features} != {width}, the pooled width of the imitative U-Net "
                f"(projection_class_embeddings_input_dim {unet.config.projection_class_embeddings_input_dim} − "
                f"{TIME_IDS} × addition_time_embed_dim {unet.config.addition_time_embed_dim})")
        return None
    if reference_backbone != SD15:
        return "reference_unet", (f"SDXL-shaped ({added_embedding(reference_unet.config)}), but the imitative U-Net "
                                  "is SD-1.5-shaped (no added embedding)")
    if pooled_proj is not None:
        return "pooled_proj", ("an SD-1.5-shaped imitative U-Net (no added embedding) takes no pooled vector; "
                               "only an SDXL-shaped one (addition_embed_type text_time) does")
    return None


def time_ids(resolution: int, rows: int, device, dtype) -> torch.Tensor:
    """rows × 6: (R, R, 0, 0, R, R), SDXL's pipelines' time ids for an uncropped R×R square."""
    ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], device=device, dtype=dtype)
    return ids.expand(rows, TIME_IDS)


@dataclass
class AddedConditions:
    """SDXL's added conditions, per guidance row: each reference's pooled vector (R×K×P, the K
    references side by side, as the image tokens are) and the time ids (R×6)."""

    pooled: torch.Tensor
    time_ids: torch.Tensor

    def for_unet(self) -> dict[str, torch.Tensor]:
        """The imitative U-Net's `added_cond_kwargs`: the mean of the references' pooled vectors."""
        return {"text_embeds": self.pooled.mean(dim=1), "time_ids": self.time_ids}

    def for_reference_unet(self, rows, count: int) -> dict[str, torch.Tensor]:
        """The reference U-Net's, for its batch of (reference, row) pairs of `rows`, reference-major
        as `split_references` orders the image tokens: each reference its own pooled vector."""
        pooled = self.pooled[rows]
        return {"text_embeds": pooled.transpose(0, 1).reshape(-1, pooled.shape[-1]),
                "time_ids": self.time_ids[rows].repeat(count, 1)}
