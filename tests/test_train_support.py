"""Shared helpers for the trainer tests (no tests here): a from-scratch tiny model config at
resolution 32 (the architecture of tests/tiny_models.py, SD-1.5- or SDXL-shaped), tiny synthetic
data, config files."""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TINY_MODEL = {
    "depth_input_size": 28,
    "unet": {"config": {
        "block_out_channels": [32, 64], "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 32,
    }},
    "vae": {"config": {
        "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 32,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    }},
    "image_encoder": {"config": {
        "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 32, "patch_size": 8, "projection_dim": 16,
    }},
    "depth_estimator": {"config": {
        "backbone_config": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "patch_size": 14,
                            "image_size": 28, "out_indices": [1, 2, 3, 4], "apply_layernorm": True,
                            "reshape_hidden_states": False},
        "patch_size": 14, "reassemble_hidden_size": 32, "neck_hidden_sizes": [8, 16, 32, 32],
        "fusion_hidden_size": 16, "head_hidden_size": 8,
    }},
    "depth_guider": {"config": {"block_out_channels": [8, 16]}},
}


def tiny_xl_model() -> dict:
    """TINY_MODEL with SDXL-shaped U-Nets (tests/tiny_models.py's): an XL model, nothing else changed."""
    from tiny_models import TINY_XL_UNET

    return {**copy.deepcopy(TINY_MODEL), "unet": {"config": copy.deepcopy(TINY_XL_UNET)}}


def write_images(folder: Path, count: int = 4) -> Path:
    """Blurred noise stills (distinct, textured) as PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3)).astype(np.float32), (0, 0), 2.0)
        image = ((image - image.min()) / np.ptp(image) * 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{index}.png")
    return folder


def tiny_document(data_dir: Path, output_dir: Path, **sections) -> dict:
    """A complete config: tiny model, 32² box-masked stills, no validation edits; `sections`
    replace whole top-level sections' keys (merged one level deep)."""
    document = {
        "seed": 0,
        "output_dir": str(output_dir),
        "model": copy.deepcopy(TINY_MODEL),
        "train": {"max_steps": 4, "batch_size": 2, "num_workers": 0},
        "optim": {"lr": 1e-3},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "logging": {"every_steps": 1},
        "validation": {"every_steps": 0},
        "data": {
            "resolution": 32, "samples_per_epoch": 6, "cache_dir": None,
            "static": {"datasets": [{"images": str(data_dir), "format": "felzenszwalb"}], "mask_kinds": {"box": 1.0}},
            "masking": {"keypoint_resolution": 32},
        },
    }
    for name, values in sections.items():
        document[name] = {**document.get(name, {}), **values} if isinstance(values, dict) else values
    return document


def write_config(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def state_of(model_dir: Path, component: str = "unet") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next((model_dir / component).glob("*.safetensors"))))


@pytest.fixture
def one_thread():
    """The shared CPU is oversubscribed: one intra-op thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
