"""Image condition: an image encoder's penultimate hidden states, projected to the U-Nets'
cross-attention width. They replace the text embedding in every cross-attention; for an SDXL
backbone, the first (CLS) of those tokens, projected, also replaces SDXL's pooled text embedding."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class ImageProjection(ModelMixin, ConfigMixin):
    """Linear map from the image encoder's hidden size to the cross-attention dim (1280 → 768)."""

    @register_to_config
    def __init__(self, in_features: int = 1280, cross_attention_dim: int = 768):
        super().__init__()
        self.projector = nn.Linear(in_features, cross_attention_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.projector(hidden_states)


class PooledProjection(ModelMixin, ConfigMixin):
    """Linear map from the image encoder's hidden size to an SDXL U-Net's pooled width (1280 → 1280).

    Its input is the first (CLS) token of the penultimate tokens the image projection reads. It
    starts at zero: SDXL's pipelines give an empty prompt an all-zero pooled vector
    (`force_zeros_for_empty_prompt`), so a pretrained SDXL U-Net starts in its own "no text" state
    and training moves the vector from there."""

    @register_to_config
    def __init__(self, in_features: int = 1280, out_features: int = 1280):
        super().__init__()
        self.projector = nn.Linear(in_features, out_features)
        nn.init.zeros_(self.projector.weight)
        nn.init.zeros_(self.projector.bias)

    def forward(self, cls_token: torch.Tensor) -> torch.Tensor:
        return self.projector(cls_token)


def penultimate_hidden_states(image_encoder: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Tokens of the second-to-last encoder layer (B×257×1280 for CLIP ViT-H/14).

    Works for transformers vision models (hidden_states[-2]) and for any module of our own
    that returns the tokens directly from `forward`.
    """
    if hasattr(image_encoder, "penultimate_tokens"):
        return image_encoder.penultimate_tokens(pixel_values)
    output = image_encoder(pixel_values=pixel_values, output_hidden_states=True)
    return output.hidden_states[-2]
