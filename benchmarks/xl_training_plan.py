"""The memory and time plan of a MimicBrush training run: SDXL at 1024² against SD-1.5 at 512².

    python benchmarks/xl_training_plan.py [-o plan.json] [--markdown plan.md]

Every component is built at its real size on the meta device from the published config values
typed in below (no weights, no download; an SDXL U-Net is 2.57 B parameters and about 7 TFLOP a
forward at 128² latents), and one training sample's step runs on meta tensors:

- **parameters** are counted per component; the **trainable** ones are those that receive a
  gradient in that step (so, as the trainer does, the reference U-Net's tail after its last
  recorded block does not count);
- **FLOPs** are counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions,
  attention) over the forward of every component and the backward;
- **activations** are the bytes of the tensors autograd saves for the backward, as
  `torch.autograd.graph.saved_tensors_hooks` sees them at the end of the forward, each storage
  once, weights (and their bf16 copies) excluded. Meta tensors have no autocast and no fused
  attention, so the step runs under `GpuKernelPolicy`: attention as the flash kernel does (no
  N² matrix), and for the trainer's own path (`autocast`: fp32 trainable weights) CUDA autocast's
  casts (matmuls and convolutions in bf16, group and layer norm in fp32). DeepSpeed's bf16
  (`bf16`: weights cast to bf16, no autocast) runs without those casts. With gradient
  checkpointing (diffusers' own, non-reentrant: each resnet and transformer block) the saved
  bytes are the blocks' inputs and what runs outside them; the backward adds one block's
  recomputed activations at a time (the largest is reported).

The memory plan adds weights, autocast's cast copies, gradients and optimizer state to the
activations, per GPU, for three setups: one GPU (the trainer as it is), DDP on 8 GPUs (the same
plus DDP's gradient buckets) and DeepSpeed ZeRO-2 on 8 GPUs (bf16 weights; fp32 master weights,
gradients and optimizer state sharded), each with AdamW and 8-bit AdamW, with the reference U-Net
trained and frozen (`train.trainable` without it, IDM-VTON's choice). Time per step follows
from the FLOPs at an assumed 40 % of the GPU's bf16 peak. Prints the JSON report; `--markdown`
writes the tables docs/training.md quotes. About a minute of CPU time for both backbones.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D
from diffusers.utils import logging as diffusers_logging
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
)

from mimicbrush import DepthGuider, ImageProjection, PooledProjection
from mimicbrush.fileio import write_atomic
from mimicbrush.models.backbone import TIME_IDS, pooled_width
from mimicbrush.models.depth import estimate_depth
from mimicbrush.models.image_encoder import penultimate_hidden_states
from mimicbrush.models.reference_attention import BankComplete, ReferenceBank, attach_reference_attention

GIB = 2**30
# ---------------------------------------------------------------------------------------------
# Published configs (diffusers / transformers config.json values of the hub repos named)

SDXL_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0 unet (the inpainting 0.1 U-Net: in_channels 9)
    block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    sample_size=128,
)
SD15_UNET = dict(  # stable-diffusion-v1-5/stable-diffusion-v1-5 unet (inpainting: in_channels 9)
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=8, cross_attention_dim=768, sample_size=64,
)
SD_VAE = dict(  # the same architecture for sd-vae-ft-mse and SDXL's VAE
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
CLIP_VIT_H = dict(  # h94/IP-Adapter models/image_encoder (OpenCLIP ViT-H/14)
    hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
    patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu",
)
DEPTH_ANYTHING_BASE = dict(  # LiheYoung/depth-anything-base-hf
    backbone=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14, image_size=518,
                  out_indices=[9, 10, 11, 12], apply_layernorm=True, reshape_hidden_states=False),
    reassemble_hidden_size=768, neck_hidden_sizes=[96, 192, 384, 768], fusion_hidden_size=128,
)


@dataclass(frozen=True)
class Backbone:
    name: str
    resolution: int
    unet: dict
    sources: dict  # role -> where its weights come from (configs/train-*.yaml)
    pooled_projection: bool = False  # SDXL's added text_time embedding needs a pooled vector
    vae: dict = field(default_factory=lambda: SD_VAE)
    image_encoder: dict = field(default_factory=lambda: CLIP_VIT_H)
    depth_estimator: dict = field(default_factory=lambda: DEPTH_ANYTHING_BASE)


BACKBONES = {
    "sdxl": Backbone("sdxl", 1024, SDXL_UNET, pooled_projection=True, sources={
        "unet": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1", "reference_unet": "stabilityai/stable-diffusion-xl-base-1.0",
        "vae": "stabilityai/stable-diffusion-xl-base-1.0", "image_encoder": "h94/IP-Adapter",
        "depth_estimator": "LiheYoung/depth-anything-base-hf"}),
    "sd15": Backbone("sd15", 512, SD15_UNET, sources={
        "unet": "stable-diffusion-v1-5/stable-diffusion-inpainting", "reference_unet": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "vae": "stabilityai/sd-vae-ft-mse", "image_encoder": "h94/IP-Adapter",
        "depth_estimator": "LiheYoung/depth-anything-base-hf"}),
}
TRAINABLE = ("unet", "reference_unet", "image_proj", "pooled_proj", "depth_guider")  # configs/train-sdxl.yaml
FROZEN_REFERENCE = tuple(role for role in TRAINABLE if role != "reference_unet")  # IDM-VTON's choice


def build_unet(backbone: Backbone, in_channels: int) -> UNet2DConditionModel:
    """The backbone's U-Net on the meta device: 13 input channels for the imitative one (the
    inpainting U-Net's 9, widened), 4 for the reference one."""
    with init_empty_weights():
        return UNet2DConditionModel(in_channels=in_channels, out_channels=4, **backbone.unet)


def build_components(backbone: Backbone) -> dict[str, torch.nn.Module]:
    """Every component at full size on the meta device, float32."""
    encoder = backbone.image_encoder["hidden_size"]
    depth = backbone.depth_estimator
    with init_empty_weights():
        components = {
            "unet": build_unet(backbone, 13),
            "reference_unet": build_unet(backbone, 4),
            "vae": AutoencoderKL(**backbone.vae),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**backbone.image_encoder)),
            "image_proj": ImageProjection(encoder, backbone.unet["cross_attention_dim"]),
            "depth_estimator": DepthAnythingForDepthEstimation(DepthAnythingConfig(
                backbone_config=Dinov2Config(**depth["backbone"]), **{k: v for k, v in depth.items() if k != "backbone"})),
            "depth_guider": DepthGuider(resolution=backbone.resolution),
        }
        if backbone.pooled_projection:
            # encoder hidden → the pooled width the added embedding takes (2816 − 6·256 = 1280),
            # fed with the CLS token of the penultimate CLIP layer
            components["pooled_proj"] = PooledProjection(encoder, pooled_width(components["unet"].config))
    return components


# ---------------------------------------------------------------------------------------------
# What a GPU would do, on meta tensors


class GpuKernelPolicy(TorchFunctionMode):
    """Meta tensors get neither CUDA autocast nor fused attention. This mode gives them both, for
    the ops these models use: attention as the flash kernel (saves q, k, v, output and the
    row log-sum-exp, no N² matrix), and with `autocast` CUDA autocast's bf16 policy (linear,
    convolution, matmul and attention inputs cast to bf16; group and layer norm to fp32). The
    bf16 copies of parameters go to `on_weight_copy`: autocast caches one per weight, which the
    memory plan counts apart from the activations."""

    LOWER = {F.linear, F.conv2d, torch.matmul, torch.bmm, torch.baddbmm, torch.addmm}
    FLOAT32 = {F.group_norm, F.layer_norm}

    def __init__(self, autocast: bool, on_weight_copy=lambda tensor: None):
        super().__init__()
        self.autocast = autocast
        self.on_weight_copy = on_weight_copy

    def _cast(self, value, dtype):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
            cast = value.to(dtype)
            if isinstance(value, torch.nn.Parameter):
                self.on_weight_copy(cast)
            return cast
        if isinstance(value, (list, tuple)):
            return type(value)(self._cast(item, dtype) for item in value)
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and kwargs.get("attn_mask") is None and len(args) == 3:
            query, key, value = (self._cast(t, torch.bfloat16) for t in args)
            return torch.ops.aten._scaled_dot_product_flash_attention(
                query, key, value, kwargs.get("dropout_p", 0.0), kwargs.get("is_causal", False),
                scale=kwargs.get("scale"))[0]
        if self.autocast and func in self.LOWER:
            args, kwargs = self._cast(args, torch.bfloat16), {k: self._cast(v, torch.bfloat16) for k, v in kwargs.items()}
        elif self.autocast and func in self.FLOAT32:
            args, kwargs = self._cast(args, torch.float32), {k: self._cast(v, torch.float32) for k, v in kwargs.items()}
        return func(*args, **kwargs)


@dataclass
class SavedTensors:
    """Bytes autograd keeps for the backward, per phase of the step: each storage once; weights,
    their autocast copies and (with `blocks`) what each checkpointable block alone keeps."""

    excluded: dict = field(default_factory=dict)  # storage id -> a weight or a bf16 copy of one
    seen: dict = field(default_factory=dict)  # storage id -> the tensor (kept alive: ids stay unique)
    by_phase: dict = field(default_factory=dict)
    by_block: dict = field(default_factory=dict)
    phase: str = ""
    block: str | None = None

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.excluded and key not in self.seen:
            self.seen[key] = tensor
            self.by_phase[self.phase] = self.by_phase.get(self.phase, 0) + storage.nbytes()
            if self.block is not None:
                self.by_block[self.block] = self.by_block.get(self.block, 0) + storage.nbytes()
        return tensor

    def exclude(self, tensors) -> None:
        for tensor in tensors:  # kept alive, so that no activation reuses the storage id
            self.excluded[tensor.untyped_storage()._cdata] = tensor

    @contextmanager
    def recording(self) -> Iterator[None]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor):
            yield

    def track_blocks(self, modules) -> list:
        """Attribute saved bytes to the innermost resnet or transformer block running: the units
        diffusers' gradient checkpointing recomputes one at a time."""
        handles = []
        for role, module in modules.items():
            for name, sub in module.named_modules():
                if isinstance(sub, (ResnetBlock2D, BasicTransformerBlock)):
                    label = f"{role}.{name}"

                    def enter(_module, _args, label=label):
                        self.block = label

                    def leave(_module, _args, _output):
                        self.block = None

                    handles += [sub.register_forward_pre_hook(enter), sub.register_forward_hook(leave)]
        return handles


@dataclass
class Encoded:
    """What the frozen encoders give the trainable parts for one sample, and their forward FLOPs
    (the same in every variant: they run once per backbone)."""

    latents: torch.Tensor  # 3×4×h×w: source, collage, reference
    tokens: torch.Tensor  # 1×257×1280: the penultimate CLIP layer
    depth_map: torch.Tensor
    flops: dict


def run_encoders(backbone: Backbone) -> Encoded:
    components = build_components(backbone)
    flops = {}
    meta = dict(device="meta", dtype=torch.bfloat16)
    side = backbone.resolution
    clip_side, depth_side = backbone.image_encoder["image_size"], backbone.depth_estimator["backbone"]["image_size"]
    with torch.no_grad(), GpuKernelPolicy(autocast=False):
        with FlopCounterMode(display=False) as counter:
            posterior = components["vae"].to(torch.bfloat16).encode(torch.empty(3, 3, side, side, **meta)).latent_dist
        flops["vae"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            tokens = penultimate_hidden_states(components["image_encoder"].to(torch.bfloat16),
                                               torch.empty(1, 3, clip_side, clip_side, **meta))
        flops["image_encoder"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            depth_map = estimate_depth(components["depth_estimator"].to(torch.bfloat16),
                                       torch.empty(1, 3, depth_side, depth_side, **meta))
        flops["depth_estimator"] = counter.get_total_flops()
    latents = (posterior.mean + posterior.std * torch.empty_like(posterior.std)).float()
    return Encoded(latents, tokens, depth_map, flops)


@dataclass
class StepTrace:
    parameters: dict  # role -> count
    trainable_parameters: dict  # role -> count of parameters that got a gradient (backward only)
    forward_flops: dict  # role -> FLOPs of its forward
    backward_flops: int | None  # None: no backward was run
    activation_bytes: dict  # phase -> saved bytes at the end of the forward
    largest_block_bytes: int  # the largest checkpointable block's own saved bytes (without checkpointing)


def checkpointing_under(policy: GpuKernelPolicy):
    """diffusers' own checkpointing function (non-reentrant), with the policy re-applied when the
    backward recomputes a block, as torch.utils.checkpoint re-applies autocast."""
    def checkpoint(module, *args):
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False,
                                                 context_fn=lambda: (nullcontext(), policy))

    return checkpoint


def trace_step(backbone: Backbone, encoded: Encoded, trainable: tuple[str, ...], precision: str,
               checkpointing: bool, backward: bool = True) -> StepTrace:
    """The trainable part of one training sample's step (reference kept, depth on: every path
    runs) on meta tensors, after the frozen encoders.

    precision "autocast": trainable weights fp32 under CUDA autocast, frozen ones bf16 (the
    trainer's DDP path); "bf16": every weight bf16, no autocast (DeepSpeed's bf16). Without
    `backward`, only what the forward saves is measured (and no FLOPs are counted)."""
    components = build_components(backbone)
    trainable = tuple(role for role in trainable if role in components)
    for role, module in components.items():
        module.requires_grad_(role in trainable)
        module.train(role in trainable)
        if precision == "bf16" or role not in trainable:
            module.to(torch.bfloat16)
    bank = ReferenceBank()
    attach_reference_attention(components["reference_unet"], components["unet"], bank)
    saved = SavedTensors()
    saved.exclude(p for module in components.values() for p in module.parameters())
    policy = GpuKernelPolicy(autocast=precision == "autocast", on_weight_copy=lambda copy: saved.exclude([copy]))
    if checkpointing:
        for role in trainable:
            if getattr(components[role], "_supports_gradient_checkpointing", False):
                components[role].enable_gradient_checkpointing(checkpointing_under(policy))
    handles = [] if checkpointing else saved.track_blocks(components)
    counters: dict[str, FlopCounterMode] = {}

    @contextmanager
    def phase(role: str):
        saved.phase = role
        counters[role] = FlopCounterMode(display=False) if backward else nullcontext()
        with (torch.enable_grad() if role in trainable else torch.no_grad()), counters[role]:
            yield

    latent_side = backbone.resolution // 8
    unet_dtype = components["unet"].dtype  # without autocast the U-Nets take their own dtype
    _, collage_latent, reference_latent = encoded.latents.chunk(3)  # the source latent only gets noised
    with policy, saved.recording():
        with phase("image_proj"):
            embeds = components["image_proj"](encoded.tokens)
        added = None
        if backbone.pooled_projection:
            with phase("pooled_proj"):
                pooled = components["pooled_proj"](encoded.tokens[:, 0])
            added = {"text_embeds": pooled, "time_ids": torch.empty(1, TIME_IDS, device="meta")}
        with phase("depth_guider"):
            depth_feature = components["depth_guider"](encoded.depth_map, backbone.resolution)
        timestep = torch.empty(1, device="meta", dtype=torch.long)
        with phase("reference_unet"):
            try:  # stops after the last block whose input the imitative U-Net reads
                components["reference_unet"](reference_latent.to(unet_dtype), timestep, encoder_hidden_states=embeds,
                                             added_cond_kwargs=added, return_dict=False)
            except BankComplete:
                pass
        bank.rows = torch.zeros(1, dtype=torch.long, device="meta")
        noisy = torch.empty(1, 4, latent_side, latent_side, device="meta")
        mask = torch.empty(1, 1, latent_side, latent_side, device="meta")
        with phase("unet"):
            model_input = torch.cat([noisy, mask, collage_latent, depth_feature.float()], dim=1).to(unet_dtype)
            prediction = components["unet"](model_input, timestep, encoder_hidden_states=embeds,
                                            added_cond_kwargs=added, return_dict=False)[0]
            loss = F.mse_loss(prediction.float(), torch.empty_like(prediction, dtype=torch.float32))
    for handle in handles:
        handle.remove()
    backward_flops = None
    if backward:
        with FlopCounterMode(display=False) as backward_counter:
            loss.backward()
        backward_flops = backward_counter.get_total_flops()
    return StepTrace(
        parameters={role: sum(p.numel() for p in module.parameters()) for role, module in components.items()},
        trainable_parameters={role: sum(p.numel() for p in components[role].parameters() if p.grad is not None)
                              for role in trainable},
        forward_flops={role: counter.get_total_flops() for role, counter in counters.items() if backward},
        backward_flops=backward_flops,
        activation_bytes=dict(saved.by_phase),
        largest_block_bytes=max(saved.by_block.values(), default=0),
    )


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Hardware:
    name: str
    memory_gib: float  # what tensors may take: the nominal 80 GB less CUDA context and workspaces
    bf16_tflops: float  # dense peak
    utilization: float = 0.4  # assumed share of the peak a U-Net step reaches (not measured here)


GPUS = {"A100-80GB": Hardware("A100-80GB", 76.0, 312.0), "H100-80GB": Hardware("H100-80GB", 76.0, 989.0)}
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2}  # per trainable parameter: two moments
ZERO2_BUCKET_BYTES = 2 * 5e8 * 2  # DeepSpeed's default reduce and all-gather buckets: 5e8 bf16 elements each
GLOBAL_BATCH, GPU_COUNT = 64, 8  # the paper's batch, on 8 GPUs
# how each setup runs: the precision its activations are measured in, and its GPU count
SETUPS = {"one_gpu": ("autocast", 1), "ddp_x8": ("autocast", GPU_COUNT), "zero2_x8": ("bf16", GPU_COUNT)}
TOKENS_77 = 77  # SDXL's text length: the context of the "about 7 TFLOP" figure
IDM_VTON = {"what": "SDXL try-on U-Net trained, garment U-Net frozen, 1024×768, DDP on 4 A100-80GB, 6 per GPU, "
                    "gradient checkpointing, 8-bit Adam",
            "pixels": 1024 * 768, "batch_per_gpu": 6, "reported_gb": "58–80"}


def memory_per_gpu(trace: StepTrace, trainable: tuple[str, ...], setup: str, optimizer: str,
                   activations_per_sample: float, batch: int) -> dict:
    """GiB per GPU.

    one_gpu, the trainer as it is: trainable components fp32 plus autocast's bf16 copy of what
    trains (its cast cache holds one per weight through the forward), fp32 gradients, the
    optimizer state; frozen components bf16. ddp_x8 adds DDP's gradient buckets (a second fp32
    copy of the gradients). zero2_x8, DeepSpeed ZeRO-2 in bf16: every weight bf16 on every GPU;
    fp32 master weights, fp32 gradients and the optimizer state sharded across the GPUs, plus
    DeepSpeed's communication buckets. Summing the forward's peak (activations, cast copies)
    with the backward's (gradients) overstates a little what is ever allocated at once."""
    gpus = SETUPS[setup][1]
    trained = sum(trace.trainable_parameters.get(role, 0) for role in trainable)
    in_trainable_roles = sum(count for role, count in trace.parameters.items() if role in trainable)
    frozen = sum(count for role, count in trace.parameters.items() if role not in trainable)
    state = OPTIMIZER_STATE_BYTES[optimizer] * trained
    if setup == "zero2_x8":
        parts = {"weights": 2 * (in_trainable_roles + frozen), "master_or_cast_copies": 4 * trained / gpus,
                 "gradients": 4 * trained / gpus + ZERO2_BUCKET_BYTES, "optimizer_state": state / gpus}
    else:
        parts = {"weights": 4 * in_trainable_roles + 2 * frozen, "master_or_cast_copies": 2 * trained,
                 "gradients": 4 * trained * (2 if setup == "ddp_x8" else 1), "optimizer_state": state}
    parts["activations"] = activations_per_sample * batch
    parts["total"] = sum(parts.values())
    return {key: value / GIB for key, value in parts.items()}


def largest_batch(fixed_gib: float, activations_per_sample: float, capacity_gib: float) -> int:
    """Samples per GPU that fit beside the fixed memory."""
    return max(0, math.floor((capacity_gib - fixed_gib) / (activations_per_sample / GIB)))


def plain_unet_tflop(backbone: Backbone, tokens: int) -> float:
    """One forward of the stock U-Net (4 input channels, no reference attention) at the
    backbone's resolution with a `tokens`-long context: the figure published numbers quote."""
    unet = build_unet(backbone, 4).to(torch.bfloat16)
    side = backbone.resolution // 8
    meta = dict(device="meta", dtype=torch.bfloat16)
    added = ({"text_embeds": torch.empty(1, pooled_width(unet.config), **meta),
              "time_ids": torch.empty(1, TIME_IDS, **meta)} if backbone.pooled_projection else None)
    with torch.no_grad(), GpuKernelPolicy(autocast=False), FlopCounterMode(display=False) as counter:
        unet(torch.empty(1, 4, side, side, **meta), torch.empty(1, device="meta", dtype=torch.long),
             torch.empty(1, tokens, backbone.unet["cross_attention_dim"], **meta), added_cond_kwargs=added)
    return counter.get_total_flops() / 1e12


def plan(backbone: Backbone) -> dict:
    """Every figure the plan gives for one backbone."""
    encoded = run_encoders(backbone)
    variants = {"trained": TRAINABLE, "frozen_reference": FROZEN_REFERENCE}
    traces = {
        (variant, precision, checkpointing): trace_step(backbone, encoded, trainable, precision, checkpointing,
                                                         backward=precision == "autocast")  # FLOPs: once
        for variant, trainable in variants.items() for precision in ("autocast", "bf16")
        for checkpointing in (False, True)
    }
    base = traces["trained", "autocast", False]
    tokens = encoded.tokens.shape[1]
    result = {
        "resolution": backbone.resolution,
        "sources": backbone.sources,
        "parameters": base.parameters,
        "trainable_parameters": base.trainable_parameters,
        "forward_tflop": {role: round(flops / 1e12, 3) for role, flops in {**encoded.flops, **base.forward_flops}.items()},
        "plain_unet_forward_tflop": {f"{count}_tokens": round(plain_unet_tflop(backbone, count), 3)
                                     for count in sorted({TOKENS_77, tokens})},
        "variants": {},
    }
    for variant, trainable in variants.items():
        entry = {}
        for checkpointing in (False, True):
            autocast = traces[variant, "autocast", checkpointing]
            step_flops = sum(encoded.flops.values()) + sum(autocast.forward_flops.values()) + autocast.backward_flops
            activations = {}
            for precision in ("autocast", "bf16"):
                saved = sum(traces[variant, precision, checkpointing].activation_bytes.values())
                # the backward recomputes one block at a time on top of what the forward kept
                recomputed = traces[variant, precision, False].largest_block_bytes if checkpointing else 0
                activations[precision] = saved + recomputed
            step = {
                "activations_gib_per_sample": {name: round(value / GIB, 3) for name, value in activations.items()},
                "activations_by_component_gib": {role: round(value / GIB, 3)
                                                 for role, value in autocast.activation_bytes.items() if value},
                "largest_recomputed_block_gib": round(traces[variant, "autocast", False].largest_block_bytes / GIB, 3)
                if checkpointing else 0.0,
                "step_tflop_per_sample": round(step_flops / 1e12, 2),
                "backward_over_trainable_forward": round(
                    autocast.backward_flops / sum(autocast.forward_flops.values()), 2),
                "memory_gib_batch_1": {}, "largest_batch_per_gpu": {}, "time": {},
            }
            for setup, (precision, _) in SETUPS.items():
                for optimizer in OPTIMIZER_STATE_BYTES:
                    label = f"{setup}_{optimizer}"
                    memory = memory_per_gpu(autocast, trainable, setup, optimizer, activations[precision], batch=1)
                    step["memory_gib_batch_1"][label] = {key: round(value, 2) for key, value in memory.items()}
                    step["largest_batch_per_gpu"][label] = largest_batch(
                        memory["total"] - memory["activations"], activations[precision], GPUS["H100-80GB"].memory_gib)
            for gpu in GPUS.values():
                seconds_per_sample = step_flops / (gpu.bf16_tflops * 1e12 * gpu.utilization)
                step["time"][gpu.name] = {
                    "samples_per_second_per_gpu": round(1 / seconds_per_sample, 2),
                    "seconds_per_step_of_64_on_8": round(GLOBAL_BATCH / GPU_COUNT * seconds_per_sample, 2),
                    "hours_per_10k_steps": round(1e4 * GLOBAL_BATCH / GPU_COUNT * seconds_per_sample / 3600, 1)}
            entry["checkpointing" if checkpointing else "no_checkpointing"] = step
        result["variants"][variant] = entry
    return result


def idm_vton_check(xl: dict) -> dict:
    """The outside check: IDM-VTON trains the same design on SDXL (try-on U-Net = SDXL-inpainting
    widened to 13 channels, garment U-Net frozen) at 1024×768 with DDP on 4 A100-80GB, batch 6
    per GPU, gradient checkpointing and 8-bit Adam; its users report about 58–80 GB per GPU.
    Our figures for that setup: the frozen-reference variant, DDP, activations scaled to
    1024×768 (they grow with the number of tokens)."""
    step = xl["variants"]["frozen_reference"]["checkpointing"]
    memory = step["memory_gib_batch_1"]["ddp_x8_adamw8bit"]
    per_sample = step["activations_gib_per_sample"]["autocast"] * IDM_VTON["pixels"] / xl["resolution"] ** 2
    total = memory["total"] - memory["activations"] + IDM_VTON["batch_per_gpu"] * per_sample
    return {**IDM_VTON, "our_estimate_gib": round(total, 1), "our_estimate_gb": round(total * GIB / 1e9, 1)}


def markdown(report: dict) -> str:
    """The tables docs/training.md quotes (SDXL beside SD-1.5 where both are in the report)."""
    backbones = report["backbones"]
    names = list(backbones)
    heads = {"sdxl": "SDXL, 1024²", "sd15": "SD-1.5, 512²"}
    ratio = names == ["sdxl", "sd15"]

    def row(label: str, values: list, fmt: str) -> str:
        cells = ["—" if value is None else format(value, fmt) for value in values]
        if ratio:
            cells.append(f"{values[0] / values[1]:.1f}×" if None not in values and values[1] else "")
        return f"| {label} | " + " | ".join(cells) + " |"

    def table(title: str) -> list[str]:
        header = "| | " + " | ".join(heads.get(name, name) for name in names) + (" | ratio |" if ratio else " |")
        return ["", f"**{title}**", "", header, "| --- |" + " ---: |" * (len(names) + ratio)]

    first = backbones[names[0]]
    lines = table("Parameters, millions")
    for role in first["parameters"]:
        lines.append(row(role, [b["parameters"].get(role) and b["parameters"][role] / 1e6
                                for b in backbones.values()], ",.1f"))
    lines.append(row("trainable: get a gradient", [sum(b["trainable_parameters"].values()) / 1e6
                                                   for b in backbones.values()], ",.1f"))
    lines += table("TFLOP per sample")
    for role in first["forward_tflop"]:
        lines.append(row(f"forward: {role}", [b["forward_tflop"].get(role) for b in backbones.values()], ".3f"))
    for key in first["plain_unet_forward_tflop"]:
        lines.append(row(f"stock U-Net forward, {key.replace('_', ' ')}",
                         [b["plain_unet_forward_tflop"].get(key) for b in backbones.values()], ".3f"))
    labels = {"trained": "reference U-Net trained", "frozen_reference": "reference U-Net frozen"}
    ckpt = {"no_checkpointing": "no checkpointing", "checkpointing": "checkpointing"}
    for variant, label in labels.items():
        for key, what in ckpt.items():
            lines.append(row(f"training step: {label}, {what}",
                             [b["variants"][variant][key]["step_tflop_per_sample"] for b in backbones.values()], ".1f"))
    lines += table("Activations per sample, GiB (autocast: the trainer; bf16: DeepSpeed)")
    for variant, label in labels.items():
        for key, what in ckpt.items():
            for precision in ("autocast", "bf16"):
                lines.append(row(f"{label}, {what}, {precision}", [
                    b["variants"][variant][key]["activations_gib_per_sample"][precision] for b in backbones.values()],
                    ".2f"))
    capacity = GPUS["H100-80GB"].memory_gib
    for name in names:
        lines += ["", f"**GiB per GPU, {heads.get(name, name)}, 8-bit AdamW** (batch: samples per GPU that fit "
                  f"in {capacity:.0f} GiB; AdamW: the same with 32-bit AdamW)", "",
                  "| reference U-Net | checkpointing | setup | weights | master or cast copies | gradients | optimizer "
                  "| fixed | per sample | batch | AdamW: fixed, batch |", "| --- | --- | --- |" + " ---: |" * 8]
        for variant, label in labels.items():
            for key, what in ckpt.items():
                step = backbones[name]["variants"][variant][key]
                for setup in SETUPS:
                    m, full = step["memory_gib_batch_1"][f"{setup}_adamw8bit"], step["memory_gib_batch_1"][f"{setup}_adamw"]
                    lines.append(
                        f"| {label.split()[-1]} | {'yes' if key == 'checkpointing' else 'no'} | {setup} | "
                        f"{m['weights']:.1f} | {m['master_or_cast_copies']:.1f} | {m['gradients']:.1f} | "
                        f"{m['optimizer_state']:.1f} | {m['total'] - m['activations']:.1f} | {m['activations']:.2f} | "
                        f"{step['largest_batch_per_gpu'][f'{setup}_adamw8bit']} | {full['total'] - full['activations']:.1f}, "
                        f"{step['largest_batch_per_gpu'][f'{setup}_adamw']} |")
    gpu_names = list(GPUS)
    lines += ["", f"**Time** (at {GPUS[gpu_names[0]].utilization:.0%} of the bf16 peak, assumed: samples/s per GPU; "
              f"hours per 10,000 steps of {GLOBAL_BATCH} samples on {GPU_COUNT} GPUs)", "",
              "| backbone | reference U-Net | checkpointing | TFLOP per sample | "
              + " | ".join(f"{gpu}: samples/s, h/10k" for gpu in gpu_names) + " |",
              "| --- | --- | --- | ---: |" + " ---: |" * len(gpu_names)]
    for name in names:
        for variant, label in labels.items():
            for key in ckpt:
                step = backbones[name]["variants"][variant][key]
                times = " | ".join(f"{step['time'][gpu]['samples_per_second_per_gpu']:.1f}, "
                                   f"{step['time'][gpu]['hours_per_10k_steps']:.1f}" for gpu in gpu_names)
                lines.append(f"| {heads.get(name, name)} | {label.split()[-1]} | "
                             f"{'yes' if key == 'checkpointing' else 'no'} | {step['step_tflop_per_sample']:.1f} | {times} |")
    if "idm_vton_check" in report:
        check = report["idm_vton_check"]
        lines += ["", f"**Outside check, IDM-VTON**: {check['what']}; reported {check['reported_gb']} GB per GPU; "
                  f"this plan's estimate for that setup: {check['our_estimate_gb']} GB ({check['our_estimate_gib']} GiB) "
                  "of tensors."]
    return "\n".join(lines).lstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", help="also write the JSON report here")
    parser.add_argument("--markdown", help="write the Markdown tables here")
    parser.add_argument("--backbones", default="sdxl,sd15", help="comma-separated: sdxl, sd15 (default both)")
    args = parser.parse_args(argv)
    names = args.backbones.split(",")
    if unknown := [name for name in names if name not in BACKBONES]:
        parser.error(f"unknown backbone {unknown[0]!r} (known: {', '.join(BACKBONES)})")
    diffusers_logging.set_verbosity_error()
    start = time.perf_counter()
    report = {
        "backbones": {name: plan(BACKBONES[name]) for name in names},
        "gpus": {name: vars(gpu) for name, gpu in GPUS.items()},
        "assumptions": {"optimizer_state_bytes_per_parameter": OPTIMIZER_STATE_BYTES,
                        "zero2_bucket_bytes": ZERO2_BUCKET_BYTES, "global_batch": GLOBAL_BATCH, "gpus": GPU_COUNT},
        "torch": torch.__version__,
    }
    if "sdxl" in report["backbones"]:
        report["idm_vton_check"] = idm_vton_check(report["backbones"]["sdxl"])
    report["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        write_atomic(args.output, text + "\n")
    if args.markdown:
        write_atomic(args.markdown, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
