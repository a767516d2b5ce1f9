"""Several references in one edit: the joint bank, the joint context, pairing of hints."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from mimicbrush import editing
from mimicbrush.errors import InputError
from mimicbrush.models.reference_attention import (
    ReferenceBank,
    ReferenceReadProcessor,
    join_references,
    split_references,
)
from tiny_models import tiny_pipeline

STEPS = 2
BOX = "10,5,40,30"


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def images():
    """A source and two references of other shapes."""
    rng = np.random.default_rng(1)
    return tuple(rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(40, 60, 3), (50, 30, 3), (30, 50, 3)])


def edit(pipe, source, reference, **kwargs):
    """The model's square output (int16) for a seeded STEPS-step edit of BOX."""
    generator = torch.Generator().manual_seed(0)
    output = pipe(source, BOX, reference, generator=generator, **{"num_inference_steps": STEPS, **kwargs})
    return np.asarray(output.model_images[0]).astype(np.int16)


def plain_attention(attn, query_tokens, key_tokens, heads=2, head_dim=8):
    """softmax(q·kᵀ/√d)·v through the block's projections, written out."""
    q, k, v = attn.to_q(query_tokens), attn.to_k(key_tokens), attn.to_v(key_tokens)
    q, k, v = (t.view(t.shape[0], -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    out = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5, -1) @ v
    return attn.to_out[0](out.transpose(1, 2).reshape(out.shape[0], -1, heads * head_dim))


def reader_output(hidden, banks, rows=(1,)):
    """The read processor's output for `hidden` with one bank per reference (each len(rows)×T×C),
    stored as the reference U-Net stores them: reference-major."""
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    bank = ReferenceBank()
    attn.set_processor(ReferenceReadProcessor(bank, "block"))
    bank.features["block"] = torch.cat(banks)
    bank.rows = torch.tensor(list(rows))
    bank.references = len(banks)
    with torch.no_grad():
        return attn, attn(hidden)


def test_reader_equals_the_attention_formula_for_two_banks():
    torch.manual_seed(1)
    hidden = torch.randn(2, 5, 16)
    bank_a, bank_b = torch.randn(1, 7, 16), torch.randn(1, 7, 16)
    attn, output = reader_output(hidden, [bank_a, bank_b])
    with torch.no_grad():
        uncond = plain_attention(attn, hidden[:1], hidden[:1])
        n = hidden[1:]
        cond = 0.5 * plain_attention(attn, n, torch.cat([n, bank_a, bank_b], 1)) + 0.5 * plain_attention(attn, n, n)
    torch.testing.assert_close(output[:1], uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output[1:], cond, atol=1e-5, rtol=1e-5)


def test_banks_of_several_rows_join_per_row():
    """Faithful mode: every row reads, each its own [bank_A ; bank_B] (reference-major storage)."""
    torch.manual_seed(2)
    hidden = torch.randn(2, 5, 16)
    bank_a, bank_b = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    attn, output = reader_output(hidden, [bank_a, bank_b], rows=(0, 1))
    with torch.no_grad():
        for row in range(2):
            n = hidden[row : row + 1]
            joint = torch.cat([n, bank_a[row : row + 1], bank_b[row : row + 1]], 1)
            expected = 0.5 * plain_attention(attn, n, joint) + 0.5 * plain_attention(attn, n, n)
            torch.testing.assert_close(output[row : row + 1], expected, atol=1e-5, rtol=1e-5)


def test_no_renormalisation_a_reference_given_twice_counts_twice():
    """[n ; bank ; bank] is not [n ; bank]: the joint softmax is taken as it is."""
    torch.manual_seed(3)
    hidden = torch.randn(2, 5, 16)
    bank = torch.randn(1, 6, 16)
    _, once = reader_output(hidden, [bank])
    _, twice = reader_output(hidden, [bank, bank])
    assert (once[1:] - twice[1:]).abs().max() > 1e-4
    torch.testing.assert_close(once[:1], twice[:1])


def test_split_and_join_are_inverse_and_reference_major():
    joined = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3 * 4, 5)  # 2 rows, 3 refs × 4 tokens
    split = split_references(joined, 3)
    assert split.shape == (6, 4, 5)
    torch.testing.assert_close(split[1 * 2 + 0], joined[0, 4:8])  # reference 1, row 0
    torch.testing.assert_close(join_references(split, 3), joined)
    assert split_references(joined, 1) is joined and join_references(joined, 1) is joined


def test_one_reference_in_a_list_is_bit_identical(pipe, images):
    source, first, _ = images
    np.testing.assert_array_equal(edit(pipe, source, first), edit(pipe, source, [first]))


def test_two_references_each_is_read(pipe, images):
    """With two references, dropping either bank (giving only the other) changes the edit, and so
    does the joint edit differ from each single one."""
    source, first, second = images
    both = edit(pipe, source, [first, second])
    assert np.abs(both - edit(pipe, source, first)).max() > 0
    assert np.abs(both - edit(pipe, source, second)).max() > 0


def test_removing_either_bank_changes_the_reader_output():
    torch.manual_seed(4)
    hidden = torch.randn(2, 5, 16)
    bank_a, bank_b = torch.randn(1, 6, 16), torch.randn(1, 6, 16)
    _, both = reader_output(hidden, [bank_a, bank_b])
    _, only_a = reader_output(hidden, [bank_a])
    _, only_b = reader_output(hidden, [bank_b])
    assert (both[1:] - only_a[1:]).abs().max() > 1e-4
    assert (both[1:] - only_b[1:]).abs().max() > 1e-4


def test_fast_path_equals_the_release_pattern_with_two_references(pipe, images):
    source, first, second = images
    fast = edit(pipe, source, [first, second])
    faithful = edit(pipe, source, [first, second], faithful=True)
    assert np.abs(fast - faithful).max() <= 1


def test_unconditional_row_ignores_every_reference(pipe, images):
    """Guidance 0 keeps the unconditional prediction alone: a second reference changes nothing (its
    posterior is drawn after the noise; the uncond context repeated twice attends as once)."""
    source, first, second = images
    one = edit(pipe, source, first, guidance_scale=0.0)
    assert np.abs(edit(pipe, source, [first, second], guidance_scale=0.0) - one).max() <= 1


def test_reference_unet_runs_once_per_reference_in_one_batch(pipe, images):
    source, first, second = images
    batches = []
    hook = pipe.reference_unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        edit(pipe, source, [first, second, first])
    finally:
        hook.remove()
    assert batches == [3] * STEPS


def test_reference_boxes_pair_in_order(pipe, images):
    source, first, second = images
    boxed = edit(pipe, source, [first, second], reference_box=["0,0,20,20", None])
    cropped = edit(pipe, source, [np.ascontiguousarray(first[:22, :22]), second])  # box + ceil(0.1·20) context
    np.testing.assert_array_equal(boxed, cropped)


@pytest.mark.parametrize("boxes", ["0,0,20,20", ["0,0,20,20"], ["0,0,20,20", None, None]])
def test_reference_box_count_must_match(pipe, images, boxes):
    source, first, second = images
    with pytest.raises(InputError, match="one reference box per reference"):
        edit(pipe, source, [first, second], reference_box=boxes)


def test_empty_reference_list_is_refused(pipe, images):
    with pytest.raises(InputError, match="at least one image"):
        editing.reference_list([])
