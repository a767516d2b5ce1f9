"""Tiny MimicBrush components (32–64 channels, random weights, fixed seed) for fast tests, in
SD-1.5's shape (`tiny_pipeline`) and in SDXL's (`tiny_xl_pipeline`)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from mimicbrush import DepthGuider, ImageProjection, MimicBrushPipeline, PooledProjection
from mimicbrush.scheduling import release_scheduler

CROSS_ATTENTION_DIM = 32


def tiny_unet(in_channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )


# SDXL's U-Net structure in miniature: no attention in the first block, then cross-attention
# blocks with more transformer layers the deeper they are ([1, 2, 10] in SDXL), linear
# projections, and SDXL's added embedding (a 16-wide pooled vector beside six time ids of 8).
XL_CROSS_ATTENTION_DIM = 48
XL_POOLED_WIDTH = 16
TINY_XL_UNET = dict(
    block_out_channels=[32, 32, 64],
    layers_per_block=1,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 1, 2],
    attention_head_dim=[2, 4, 8],
    cross_attention_dim=XL_CROSS_ATTENTION_DIM,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + XL_POOLED_WIDTH,
    norm_num_groups=32,
)


def tiny_xl_unet(in_channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(sample_size=16, in_channels=in_channels, out_channels=4, **TINY_XL_UNET)


def tiny_vae(**changes) -> AutoencoderKL:
    return AutoencoderKL(**{
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (32, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2,
        "layers_per_block": 1, "norm_num_groups": 32, "sample_size": 32, **changes,
    })


def tiny_components(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    vae = tiny_vae()
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=16,
    ))
    depth_estimator = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=14,
                                     image_size=28, out_indices=[1, 2, 3, 4], apply_layernorm=True,
                                     reshape_hidden_states=False),
        patch_size=14, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        head_hidden_size=8,
    ))
    return dict(
        unet=tiny_unet(13),
        reference_unet=tiny_unet(4),
        vae=vae,
        image_encoder=image_encoder,
        image_proj=ImageProjection(32, CROSS_ATTENTION_DIM),
        depth_estimator=depth_estimator,
        depth_guider=DepthGuider(block_out_channels=(8, 16), resolution=32),
        scheduler=release_scheduler(),
        depth_input_size=28,
    )


def tiny_xl_components(seed: int = 0) -> dict:
    """The tiny components with SDXL-shaped U-Nets, SDXL's VAE scaling factor (and its
    force_upcast), and a pooled projection with random weights (a trained one is not zero)."""
    components = tiny_components(seed)
    torch.manual_seed(seed + 1)
    pooled_proj = PooledProjection(32, XL_POOLED_WIDTH)
    pooled_proj.projector.reset_parameters()
    return {
        **components,
        "unet": tiny_xl_unet(13),
        "reference_unet": tiny_xl_unet(4),
        "vae": tiny_vae(scaling_factor=0.13025, force_upcast=True),
        "image_proj": ImageProjection(32, XL_CROSS_ATTENTION_DIM),
        "pooled_proj": pooled_proj,
    }


def _pipeline(components: dict) -> MimicBrushPipeline:
    pipe = MimicBrushPipeline(**{k: v.eval() if hasattr(v, "eval") else v for k, v in components.items()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline(seed: int = 0) -> MimicBrushPipeline:
    return _pipeline(tiny_components(seed))


def tiny_xl_pipeline(seed: int = 0) -> MimicBrushPipeline:
    return _pipeline(tiny_xl_components(seed))


def saved_tiny_pipeline(folder, xl: bool = False):
    """A tiny pipeline (SDXL-shaped with `xl`) saved as a model folder (what --model takes);
    returns the folder."""
    (tiny_xl_pipeline() if xl else tiny_pipeline()).save_pretrained(folder, safe_serialization=True)
    return folder
