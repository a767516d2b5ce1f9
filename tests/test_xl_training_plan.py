"""benchmarks/xl_training_plan.py: the published sizes it is built from, its measuring tools on
single ops with known answers, and the plan's invariants on a tiny SDXL-shaped backbone (the full
run takes minutes; docs/training.md quotes it)."""


import pytest
import torch
import torch.nn.functional as F
from benchmark_scripts import load_benchmark

SDXL_UNET_PARAMETERS = 2_567_463_684  # stabilityai/stable-diffusion-xl-base-1.0 unet, as published


@pytest.fixture(scope="module")
def plan():
    return load_benchmark("xl_training_plan")


@pytest.fixture(scope="module")
def tiny(plan):
    """SDXL's structure (text_time added embedding, attention from the second level down) in
    miniature, with miniature encoders: the same code path as the real plan, in seconds."""
    return plan.Backbone(
        "tiny", 64, sources={}, pooled_projection=True,
        unet=dict(block_out_channels=(32, 64), layers_per_block=1, transformer_layers_per_block=(1, 2),
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                  cross_attention_dim=64, use_linear_projection=True, addition_embed_type="text_time",
                  addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=16,
                  sample_size=8),
        vae=dict(block_out_channels=(16, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=16,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
        image_encoder=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                           patch_size=14, image_size=28, projection_dim=16),
        depth_estimator=dict(
            backbone=dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=14, image_size=28,
                          out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False),
            reassemble_hidden_size=32, neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8),
    )


@pytest.fixture(scope="module")
def traces(plan, tiny):
    encoded = plan.run_encoders(tiny)
    return {
        "trained": plan.trace_step(tiny, encoded, plan.TRAINABLE, "autocast", checkpointing=False),
        "checkpointed": plan.trace_step(tiny, encoded, plan.TRAINABLE, "autocast", checkpointing=True),
        "frozen_reference": plan.trace_step(tiny, encoded, plan.FROZEN_REFERENCE, "autocast", checkpointing=False),
        "bf16": plan.trace_step(tiny, encoded, plan.TRAINABLE, "bf16", checkpointing=False, backward=False),
    }


def test_the_published_sizes_and_the_issues_figures(plan):
    """2.57 B parameters and about 7 TFLOP a forward at 1024² (77 tokens): the issue's figures."""
    sdxl = plan.BACKBONES["sdxl"]
    assert sum(p.numel() for p in plan.build_unet(sdxl, 4).parameters()) == SDXL_UNET_PARAMETERS
    widened = sum(p.numel() for p in plan.build_unet(sdxl, 13).parameters())
    assert widened == SDXL_UNET_PARAMETERS + 9 * 320 * 3 * 3  # conv_in: 4 -> 13 input channels
    tflop = plan.plain_unet_tflop(sdxl, 77)
    assert 6.5 < tflop < 7.5, tflop


def test_saved_bytes_of_one_linear_under_autocast(plan):
    """A Linear under autocast saves its input's bf16 cast; its weight's bf16 copy is not an
    activation. 3 x 64 inputs in bf16: 384 bytes."""
    linear = torch.nn.Linear(64, 32, device="meta")
    saved = plan.SavedTensors()
    saved.exclude(linear.parameters())
    policy = plan.GpuKernelPolicy(autocast=True, on_weight_copy=lambda copy: saved.exclude([copy]))
    with policy, saved.recording():
        output = linear(torch.empty(3, 64, device="meta", requires_grad=True))
    assert output.dtype == torch.bfloat16
    assert sum(saved.by_phase.values()) == 3 * 64 * 2


def test_attention_is_counted_as_the_flash_kernel(plan):
    """No N × N matrix is kept: q, k, v, the output (bf16) and the row log-sum-exp (fp32)."""
    heads, tokens, width = 2, 1024, 64
    q, k, v = (torch.empty(1, heads, tokens, width, device="meta", requires_grad=True) for _ in range(3))
    saved = plan.SavedTensors()
    with plan.GpuKernelPolicy(autocast=True), saved.recording():
        F.scaled_dot_product_attention(q, k, v)
    kept = sum(saved.by_phase.values())
    assert 4 * heads * tokens * width * 2 + heads * tokens * 4 <= kept < heads * tokens * tokens * 2


def test_plan_invariants_on_a_tiny_backbone(plan, traces):
    trained, checkpointed, frozen, bf16 = (traces[name] for name in ("trained", "checkpointed", "frozen_reference",
                                                                     "bf16"))
    # the reference U-Net's tail after its last recorded block gets no gradient; the rest trains
    assert trained.trainable_parameters["unet"] == trained.parameters["unet"]
    pooled = trained.parameters["pooled_proj"]  # Linear(encoder width 32 -> 80 - 6·8 = 32), as SDXL's 1280 -> 1280
    assert pooled == 32 * 32 + 32 and trained.trainable_parameters["pooled_proj"] == pooled
    assert 0 < trained.trainable_parameters["reference_unet"] < trained.parameters["reference_unet"]
    assert "reference_unet" not in frozen.trainable_parameters and "reference_unet" not in frozen.activation_bytes
    # a backward costs about two forwards of what trains; checkpointing adds the recomputation
    trainable_forward = sum(trained.forward_flops.values())
    assert 1.5 < trained.backward_flops / trainable_forward < 3
    assert checkpointed.backward_flops > trained.backward_flops
    assert frozen.backward_flops < trained.backward_flops
    # checkpointing keeps less; bf16 without autocast keeps less than autocast's fp32 norms
    assert sum(checkpointed.activation_bytes.values()) < sum(trained.activation_bytes.values())
    assert sum(bf16.activation_bytes.values()) < sum(trained.activation_bytes.values())
    assert 0 < trained.largest_block_bytes < sum(trained.activation_bytes.values())


def test_memory_plan_invariants(plan, traces):
    trace = traces["trained"]
    per_sample = sum(trace.activation_bytes.values())

    def total(trainable, setup, optimizer="adamw8bit"):
        return plan.memory_per_gpu(trace, trainable, setup, optimizer, per_sample, batch=1)

    for setup in plan.SETUPS:
        frozen, trained = total(plan.FROZEN_REFERENCE, setup), total(plan.TRAINABLE, setup)
        assert frozen["gradients"] < trained["gradients"] and frozen["optimizer_state"] < trained["optimizer_state"]
        assert total(plan.TRAINABLE, setup, "adamw")["optimizer_state"] == pytest.approx(
            4 * trained["optimizer_state"], rel=1e-9)
    one, ddp, zero2 = (total(plan.TRAINABLE, setup) for setup in ("one_gpu", "ddp_x8", "zero2_x8"))
    assert ddp["gradients"] == pytest.approx(2 * one["gradients"], rel=1e-9)  # DDP's buckets
    assert zero2["optimizer_state"] == pytest.approx(one["optimizer_state"] / 8, rel=1e-9)
    assert plan.largest_batch(10.0, 2 * plan.GIB, 76.0) == 33 and plan.largest_batch(80.0, plan.GIB, 76.0) == 0
