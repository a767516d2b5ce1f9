"""Parameter-free stand-ins (pixel-shuffle autoencoder, luminance depth) in a whole pipeline."""

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from mimicbrush import DepthGuider, ImageProjection, LuminanceDepth, MimicBrushPipeline, PixelShuffleAutoencoder
from mimicbrush.scheduling import release_scheduler


def test_pixel_shuffle_autoencoder_is_lossless_and_deterministic():
    autoencoder = PixelShuffleAutoencoder(downsample_factor=4, scaling_factor=2.0)
    image = torch.rand(2, 3, 16, 24) * 2 - 1
    posterior = autoencoder.encode(image).latent_dist
    assert posterior.mean.shape == (2, 48, 4, 6) and autoencoder.config.latent_channels == 48
    assert float(posterior.std.abs().max()) == 0.0
    torch.testing.assert_close(autoencoder.decode(posterior.mean).sample, image)


def test_luminance_depth_reads_the_release_depth_input():
    from mimicbrush.imaging import to_depth_pixels

    image = np.zeros((20, 20, 3), np.uint8)
    image[:, 10:] = 255
    depth = LuminanceDepth(blur_kernel=1)(torch.from_numpy(to_depth_pixels(image, 20)))
    assert depth.shape == (1, 1, 20, 20)
    assert float(depth[0, 0, :, :8].max()) < 0.01 and float(depth[0, 0, :, 12:].min()) > 0.99


def standin_pipeline() -> MimicBrushPipeline:
    torch.manual_seed(0)
    factor, latent = 4, 48

    def unet(in_channels):
        return UNet2DConditionModel(
            sample_size=8, in_channels=in_channels, out_channels=latent, block_out_channels=(32, 64),
            layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        )

    pipe = MimicBrushPipeline(
        unet=unet(latent + 1 + latent + 4).eval(),
        reference_unet=unet(latent).eval(),
        vae=PixelShuffleAutoencoder(downsample_factor=factor),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8, projection_dim=16)).eval(),
        image_proj=ImageProjection(32, 32),
        depth_estimator=LuminanceDepth(),
        depth_guider=DepthGuider(block_out_channels=(8, 16, 16), resolution=32),
        scheduler=release_scheduler(),
        depth_input_size=32,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_with_standins_edits_and_round_trips(tmp_path):
    pipe = standin_pipeline()
    assert pipe.resolution == 32 and pipe.vae_scale_factor == 4
    source = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)

    def edit(pipeline):
        return pipeline(source_image=source, mask_image="5,5,25,20", reference_image=source, keep_shape=True,
                        num_inference_steps=2, generator=torch.Generator().manual_seed(0))

    output = edit(pipe)
    assert output.images[0].size == (40, 30) and output.depth_images[0].size == (40, 30)
    pipe.save_pretrained(tmp_path / "model")
    loaded = MimicBrushPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.vae, PixelShuffleAutoencoder) and isinstance(loaded.depth_estimator, LuminanceDepth)
    np.testing.assert_array_equal(np.asarray(edit(loaded).images[0]), np.asarray(output.images[0]))
