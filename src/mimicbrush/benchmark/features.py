"""Embedding networks for DINO-I, CLIP-I and CLIP-T, loaded from a local folder or a hub id.

- DINO-I: DINOv2 (`Dinov2Model`), the CLS token of the last hidden state (after the final
  layer norm, i.e. `pooler_output`), cosine ×100.
- CLIP-I: CLIP image embeddings (`visual_projection` of the vision tower's pooled output, which
  is what `CLIPVisionModelWithProjection.image_embeds` computes), cosine ×100.
- CLIP-T: CLIP image embedding vs text embedding, max(100·cosine, 0) as in CLIPScore.

Every image goes in padded to a centred white square and bicubic-resized to the network's input
side (224 for DINOv2, the config's `image_size` for CLIP), normalised with the family's mean/std
(ImageNet for DINOv2, OpenAI CLIP's for CLIP, as all official checkpoints use).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import imaging
from ..errors import WeightsError
from .defaults import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL
from .regions import square_for_embedding

DINO_INPUT_SIDE = 224  # DINOv2's evaluation crop


def load_pretrained(model_class, name_or_path: str, what: str, option: str):
    """`model_class.from_pretrained`, with failures turned into one line naming the fix."""
    local = Path(name_or_path).expanduser()
    if not local.exists() and (local.is_absolute() or str(name_or_path).startswith((".", "~"))):
        raise WeightsError(f"{what} model folder not found: {name_or_path} (set {option} DIR or {option} none)")
    try:
        return model_class.from_pretrained(str(local) if local.exists() else name_or_path)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(
            f"cannot load the {what} model {name_or_path!r} ({reason}); pass a local folder with "
            f"{option} DIR, or skip the metric with {option} none"
        ) from None


def _pixels(images: list[Image.Image], side: int, mean, std, device) -> torch.Tensor:
    squares = np.stack([np.asarray(square_for_embedding(image, side)) for image in images])
    pixels = (squares.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()).to(device)


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(vectors.float(), dim=-1).cpu()


def cosine_percent(first: torch.Tensor, second: torch.Tensor) -> float:
    """100 × cosine of two unit vectors."""
    return float(100.0 * (first * second).sum())


class DinoEmbedder:
    """DINOv2 CLS embeddings (unit length) of whole images."""

    def __init__(self, name_or_path: str = DEFAULT_DINO_MODEL, device: str | torch.device = "cpu"):
        from transformers import Dinov2Model

        self.name = str(name_or_path)
        self.device = torch.device(device)
        self.model = load_pretrained(Dinov2Model, self.name, "DINOv2", "--dino-model").to(self.device).eval()

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = _pixels(images, DINO_INPUT_SIDE, imaging.IMAGENET_MEAN, imaging.IMAGENET_STD, self.device)
        return _unit(self.model(pixel_values=pixels).last_hidden_state[:, 0])


class ClipEmbedder:
    """CLIP image and text embeddings (unit length) in the shared projection space."""

    def __init__(self, name_or_path: str = DEFAULT_CLIP_MODEL, device: str | torch.device = "cpu"):
        from transformers import AutoTokenizer, CLIPModel

        self.name = str(name_or_path)
        self.device = torch.device(device)
        self.model = load_pretrained(CLIPModel, self.name, "CLIP", "--clip-model").to(self.device).eval()
        self.tokenizer = load_pretrained(AutoTokenizer, self.name, "CLIP tokenizer", "--clip-model")
        self.input_side = self.model.config.vision_config.image_size
        self.max_tokens = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = _pixels(images, self.input_side, imaging.CLIP_MEAN, imaging.CLIP_STD, self.device)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return _unit(self.model.visual_projection(pooled))

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        pooled = self.model.text_model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output
        return _unit(self.model.text_projection(pooled))
