"""Shape control: a frozen depth estimator and the trainable depth guider that turns its map
into a 4-channel feature at latent resolution (channels 9–12 of the imitative U-Net input)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class DepthGuider(ModelMixin, ConfigMixin):
    """Resize the depth map to the model resolution, then 3×3 convolutions with SiLU between.

    With block_out_channels (16, 32, 64, 128): conv_in 1→16, then per width a same-width conv and
    a stride-2 conv to the next width, then conv_out → 4: an 8× smaller feature map (512 → 64).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 4,
        block_out_channels: tuple[int, ...] = (16, 32, 64, 128),
        resolution: int = 512,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        blocks = []
        for width, next_width in zip(block_out_channels[:-1], block_out_channels[1:]):
            blocks.append(nn.Conv2d(width, width, 3, padding=1))
            blocks.append(nn.Conv2d(width, next_width, 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(block_out_channels[-1], out_channels, 3, padding=1)

    def forward(self, depth_map: torch.Tensor, resolution: int | None = None) -> torch.Tensor:
        size = resolution or self.config.resolution
        hidden = F.interpolate(depth_map, size=(size, size), mode="bilinear", align_corners=True)
        hidden = F.silu(self.conv_in(hidden))
        for block in self.blocks:
            hidden = F.silu(block(hidden))
        return self.conv_out(hidden)


def estimate_depth(depth_estimator: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """B×1×H×W depth map from a transformers depth model or any module returning one."""
    output = depth_estimator(pixel_values=pixel_values)
    depth = output.predicted_depth if hasattr(output, "predicted_depth") else output
    return depth if depth.ndim == 4 else depth.unsqueeze(1)
