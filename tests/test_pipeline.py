"""Fast pipeline tests on tiny random components (diffusers-style)."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from mimicbrush import MimicBrushPipeline
from mimicbrush.errors import InputError
from mimicbrush.models.reference_attention import ReferenceBank, ReferenceReadProcessor
from tiny_models import tiny_pipeline

STEPS = 2


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    reference = rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)
    other_reference = rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)
    return source, reference, other_reference


def edit(pipe, source, reference, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "generator": torch.Generator().manual_seed(0), **kwargs}
    return pipe(source_image=source, mask_image="10,5,40,30", reference_image=reference, **kwargs)


def pixels(image):
    return np.asarray(image).astype(np.int16)


def test_output_sizes_and_paste_back(pipe, images):
    source, reference, _ = images
    output = edit(pipe, source, reference, keep_shape=True)
    assert output.images[0].size == (60, 40)
    assert output.model_images[0].size == (pipe.resolution, pipe.resolution)
    assert output.depth_images[0].size == (60, 40)
    edited = pixels(output.images[0])
    np.testing.assert_array_equal(edited[:, 52:], source[:, 52:])  # far from the box: untouched
    assert np.abs(edited[10:25, 15:35] - source[10:25, 15:35]).mean() > 5


def test_same_seed_same_edit_and_reference_matters(pipe, images):
    source, reference, other = images
    first = pixels(edit(pipe, source, reference).model_images[0])
    again = pixels(edit(pipe, source, reference).model_images[0])
    other_edit = pixels(edit(pipe, source, other).model_images[0])
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other_edit).max() > 0


def test_fast_path_equals_the_release_pattern(pipe, images):
    source, reference, _ = images
    fast = edit(pipe, source, reference)
    faithful = edit(pipe, source, reference, faithful=True)
    assert np.abs(pixels(fast.model_images[0]) - pixels(faithful.model_images[0])).max() <= 1


def test_unconditional_row_never_sees_the_reference(pipe, images):
    """guidance 0 keeps only the unconditional prediction: the reference must not matter."""
    source, reference, other = images
    one = edit(pipe, source, reference, guidance_scale=0.0).model_images[0]
    two = edit(pipe, source, other, guidance_scale=0.0).model_images[0]
    np.testing.assert_array_equal(pixels(one), pixels(two))


def test_guidance_one_skips_the_unconditional_row(pipe, images):
    source, reference, _ = images
    calls = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        skipped = edit(pipe, source, reference, guidance_scale=1.0).model_images[0]
        both = edit(pipe, source, reference, guidance_scale=1.0 + 1e-6).model_images[0]
    finally:
        hook.remove()
    assert calls == [1] * STEPS + [2] * STEPS
    assert np.abs(pixels(skipped) - pixels(both)).max() <= 1


def test_no_reference_runs_the_unconditional_branch_alone(pipe, images):
    source, _, _ = images
    reference_calls = []
    hook = pipe.reference_unet.register_forward_pre_hook(lambda *args: reference_calls.append(1))
    try:
        output = edit(pipe, source, None)
    finally:
        hook.remove()
    assert reference_calls == []
    assert output.images[0].size == (60, 40)


def test_reference_unet_stops_after_the_last_recorded_block(pipe, images):
    source, reference, _ = images
    reached_output = []
    hook = pipe.reference_unet.conv_out.register_forward_hook(lambda *args: reached_output.append(1))
    try:
        edit(pipe, source, reference)
        assert reached_output == []
        edit(pipe, source, reference, faithful=True)
        assert len(reached_output) == STEPS
    finally:
        hook.remove()


def test_read_processor_mixes_half_and_half():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    bank = ReferenceBank()
    attn.set_processor(ReferenceReadProcessor(bank, "block"))
    hidden = torch.randn(2, 5, 16)
    reference = torch.randn(1, 7, 16)

    def attention(query_tokens, key_tokens):
        q, k, v = attn.to_q(query_tokens), attn.to_k(key_tokens), attn.to_v(key_tokens)
        q, k, v = (t.view(1, -1, 2, 8).transpose(1, 2) for t in (q, k, v))
        out = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v
        return attn.to_out[0](out.transpose(1, 2).reshape(1, -1, 16))

    bank.features["block"] = reference
    bank.rows = torch.tensor([1])
    with torch.no_grad():
        output = attn(hidden)
        uncond = attention(hidden[:1], hidden[:1])
        cond = 0.5 * attention(hidden[1:], torch.cat([hidden[1:], reference], 1)) + 0.5 * attention(hidden[1:], hidden[1:])
    torch.testing.assert_close(output[:1], uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output[1:], cond, atol=1e-5, rtol=1e-5)


def test_save_and_load_round_trip(pipe, images, tmp_path):
    source, reference, _ = images
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    loaded = MimicBrushPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert not (tmp_path / "model" / "text_encoder").exists()
    np.testing.assert_array_equal(
        pixels(edit(pipe, source, reference).images[0]), pixels(edit(loaded, source, reference).images[0])
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_inference_steps": 0}, "steps"),
        ({"guidance_scale": float("nan")}, "guidance"),
        ({"mask_image": np.zeros((40, 60), np.uint8)}, "empty"),
        ({"mask_image": "0,0,100,100"}, "outside"),
    ],
)
def test_bad_inputs_raise_clear_errors(pipe, images, kwargs, message):
    source, reference, _ = images
    arguments = {"source_image": source, "mask_image": "1,1,5,5", "reference_image": reference,
                 "num_inference_steps": 1, **kwargs}
    with pytest.raises(InputError, match=message):
        pipe(**arguments)
