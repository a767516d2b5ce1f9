"""Loading: release layout key handling, unsafe or tampered files, conversion round trip."""

import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from mimicbrush import MimicBrushPipeline
from mimicbrush.cli import main
from mimicbrush.errors import WeightsError
from mimicbrush.weights import (
    REFERENCE_UNET_UNUSED,
    convert_depth_anything_keys,
    fill_module,
    read_state_dict,
    resolve_model,
)
from parity_kit import load_cases, run_case


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    with open(path, "wb") as file:
        pickle.dump({"weight": RunsCode()}, file)
    with pytest.raises(WeightsError, match="evil.bin"):
        read_state_dict(path)


def test_wrong_shape_and_unknown_keys_name_the_key():
    module = nn.Linear(3, 2)
    with pytest.raises(WeightsError, match="'weight' has shape"):
        fill_module(module, {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)}, "x.bin", torch.float32)
    with pytest.raises(WeightsError, match="unexpected key 'extra'"):
        fill_module(module, {"weight": torch.zeros(2, 3), "bias": torch.zeros(2), "extra": torch.zeros(1)},
                    "x.bin", torch.float32)
    with pytest.raises(WeightsError, match="missing key 'bias'"):
        fill_module(module, {"weight": torch.zeros(2, 3)}, "x.bin", torch.float32)
    with pytest.raises(WeightsError, match="NaN"):
        fill_module(module, {"weight": torch.full((2, 3), float("nan")), "bias": torch.zeros(2)}, "x.bin", torch.float32)


def test_reference_unet_unused_keys_are_exactly_the_releases_24():
    from diffusers import UNet2DConditionModel

    sd15_like = UNet2DConditionModel(
        block_out_channels=(32, 32, 64, 64), layers_per_block=2, cross_attention_dim=32, attention_head_dim=2,
        sample_size=8,
    )
    unused = [key for key in sd15_like.state_dict() if REFERENCE_UNET_UNUSED.search(key)]
    assert len(unused) == 24
    assert all(key.startswith(("conv_norm_out", "conv_out", "up_blocks.3.attentions.2")) for key in unused)


def test_depth_anything_qkv_is_split_and_refinenets_reversed():
    qkv = torch.arange(6 * 2, dtype=torch.float32).view(6, 2)
    converted = convert_depth_anything_keys({
        "pretrained.blocks.3.attn.qkv.weight": qkv,
        "depth_head.scratch.refinenet4.resConfUnit1.conv2.bias": torch.ones(1),
        "pretrained.blocks.0.ls2.gamma": torch.ones(1),
    })
    torch.testing.assert_close(converted["backbone.encoder.layer.3.attention.k_proj.weight"], qkv[2:4])
    assert "neck.fusion_stage.layers.0.residual_layer1.convolution2.bias" in converted
    assert "backbone.encoder.layer.0.layer_scale2.lambda1" in converted


def test_model_resolution_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        resolve_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="neither"):
        resolve_model(tmp_path / "empty")


@pytest.fixture(scope="module")
def tiny_release(tiny_release_dir):  # conftest.py: written once per session
    return tiny_release_dir


@pytest.mark.slow
def test_convert_round_trip_matches_release_within_fp16(tiny_release, tmp_path):
    out = tmp_path / "converted"
    assert main(["convert", str(tiny_release), str(out)]) == 0
    assert (out / "model_index.json").is_file() and not (out / "text_encoder").exists()
    assert not list(out.rglob("*.bin"))
    # its model card: the release's licence with SD-1.5's, which its U-Nets carry (tests/test_model_card.py)
    assert (out / "README.md").read_text().startswith("---\nlicense: creativeml-openrail-m\n")
    case = dict(load_cases()["tiny_c"], steps=3)
    release = MimicBrushPipeline.from_pretrained(tiny_release)
    converted = MimicBrushPipeline.from_pretrained(out)
    for pipe in (release, converted):
        pipe.set_progress_bar_config(disable=True)
    expected, actual = run_case(release, case), run_case(converted, case)
    # fp16 storage: latents agree to ~1e-2, pixels to a few levels
    assert np.abs(expected["final_latents"] - actual["final_latents"]).max() < 0.1
    assert np.abs(expected["output"].astype(int) - actual["output"].astype(int)).max() <= 8
    # converting never touches the input, and refuses to write into it or over a folder
    assert main(["convert", str(tiny_release), str(tiny_release / "inside")]) == 2
    assert main(["convert", str(tiny_release), str(out)]) == 2
