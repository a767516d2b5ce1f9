"""Parameter-free stand-ins for the release's frozen encoders, for small models trained from
scratch (the bundled demo model): no weights from elsewhere are needed.

- `PixelShuffleAutoencoder` replaces the VAE: the "latent" of an image is its pixel-unshuffle
  (each f×f patch becomes 3·f² channels), decoding is the exact inverse.
- `LuminanceDepth` replaces Depth Anything: a smoothed luminance map, a crude but free cue to
  shape and shading for texture transfer.
Both follow the interfaces the pipeline uses (`encode().latent_dist`, `decode()`, a depth map
from `pixel_values`), so `MimicBrushPipeline` and `save_pretrained` treat them like the real ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..imaging import IMAGENET_MEAN, IMAGENET_STD


class _ParameterFree(ModelMixin, ConfigMixin):
    def __init__(self):
        super().__init__()
        # no weights: an empty buffer carries the module's device and dtype for the pipeline
        self.register_buffer("dtype_anchor", torch.zeros(0), persistent=False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, **kwargs):
        """Only a config is saved; loading options about weights (dtype, device map) do not apply."""
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder)
        return cls.from_config(config)


class PixelShuffleAutoencoder(_ParameterFree):
    """Lossless "VAE": pixel-unshuffle by `downsample_factor`, times `scaling_factor`."""

    @register_to_config
    def __init__(self, downsample_factor: int = 4, in_channels: int = 3, latent_channels: int | None = None,
                 scaling_factor: float = 1.0):
        super().__init__()
        expected = in_channels * downsample_factor**2
        if latent_channels not in (None, expected):
            raise ValueError(f"latent_channels must be {expected} for factor {downsample_factor}")
        self.register_to_config(latent_channels=expected)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        mean = F.pixel_unshuffle(x, self.config.downsample_factor)
        # a posterior with zero variance: sampling returns the mean exactly
        distribution = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], 1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=distribution) if return_dict else (distribution,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        sample = F.pixel_shuffle(z, self.config.downsample_factor)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latent_dist.mode()).sample


class LuminanceDepth(_ParameterFree):
    """Smoothed luminance in [0, 1] as a depth map (B×1×H×W) of the pipeline's depth input.

    The pipeline feeds depth models the release's input, (x − mean)/std/255 on 0..255 values;
    this undoes it to get the image back.
    """

    @register_to_config
    def __init__(self, blur_kernel: int = 5):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = (pixel_values * 255 * self.std.to(pixel_values) + self.mean.to(pixel_values)) / 255
        luminance = (image * self.luma.to(pixel_values)).sum(1, keepdim=True).clamp(0, 1)
        kernel = self.config.blur_kernel
        return F.avg_pool2d(luminance, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
