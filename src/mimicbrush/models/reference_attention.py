"""Reference attention: the reference U-Net writes, the imitative U-Net reads.

In every transformer block of the mid and up blocks, the reference U-Net records the input of its
self-attention (the block's norm1 output). The matching imitative block mixes, for the rows that
see the reference: h + 0.5·Attn(n, [n ; bank]) + 0.5·Attn(n, n); other rows (the guidance row,
dropped references in training) get plain self-attention. Done with attention processors, so the
U-Nets stay stock diffusers `UNet2DConditionModel`s.

Several references: the reference U-Net runs on all of them in one batch, reference-major (every
row of reference A, then every row of B, ...), and a reading row attends over
[n ; bank_A ; bank_B ; ...]. The joint softmax is taken as it is, not renormalised per reference:
a reference given twice counts twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


def reference_block_names(unet: UNet2DConditionModel) -> list[str]:
    """Self-attention modules of the mid- and up-block transformer blocks, in execution order
    (mid block first, then up blocks; torch's module order lists up blocks first)."""
    names = [name for name, module in unet.named_modules() if isinstance(module, Attention) and name.endswith("attn1")]
    mid = [name for name in names if name.startswith("mid_block.")]
    up = [name for name in names if name.startswith("up_blocks.")]
    return mid + up


class BankComplete(Exception):
    """Raised by the last writer to stop the reference U-Net: nothing after it is ever used."""


@dataclass
class ReferenceBank:
    """The reference features of one denoising step, and which imitative rows read them.

    `rows` indexes the imitative batch; `features[name]` has one row per entry of `rows`.
    With `references` K > 1, `features[name]` has K·len(rows) rows, reference-major (see
    join_references).
    `faithful` reproduces the release's compute pattern (every row attends over [n ; bank] and the
    plain attention is computed again), kept only to measure what the fast path saves.
    """

    features: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: torch.Tensor | None = None
    references: int = 1
    faithful: bool = False
    stop_after: str | None = None
    # training with correspondence supervision: each reader keeps its reading rows' attention
    # logits over the bank (rows × heads × tokens × bank tokens), under its name
    record_logits: bool = False
    logits: dict[str, torch.Tensor] = field(default_factory=dict)

    def clear(self) -> None:
        self.features.clear()
        self.logits.clear()
        self.rows = None
        self.references = 1


def split_references(joined: torch.Tensor, count: int) -> torch.Tensor:
    """R×(K·T)×C, each row the K references' T tokens side by side → (K·R)×T×C, reference-major
    (row k·R + r is reference k's tokens of row r): the batch the reference U-Net runs on."""
    if count == 1:
        return joined
    rows, tokens, channels = joined.shape
    return joined.view(rows, count, tokens // count, channels).transpose(0, 1).reshape(-1, tokens // count, channels)


def join_references(split: torch.Tensor, count: int) -> torch.Tensor:
    """The inverse of split_references: (K·R)×T×C reference-major → R×(K·T)×C, so that row r
    holds [bank_A ; bank_B ; ...] of row r."""
    if count == 1:
        return split
    batch, tokens, channels = split.shape
    return split.view(count, batch // count, tokens, channels).transpose(0, 1).reshape(batch // count, -1, channels)


def _heads(attn: Attention, tensor: torch.Tensor) -> torch.Tensor:
    batch, tokens, _ = tensor.shape
    return tensor.view(batch, tokens, attn.heads, -1).transpose(1, 2)


def _merge_heads(tensor: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class ReferenceWriteProcessor(AttnProcessor2_0):
    """Records the self-attention input in the bank, then attends as usual."""

    def __init__(self, bank: ReferenceBank, name: str):
        super().__init__()
        self.bank = bank
        self.name = name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.bank.features[self.name] = hidden_states
        if self.bank.stop_after == self.name:
            raise BankComplete
        return super().__call__(attn, hidden_states, *args, **kwargs)


class ReferenceReadProcessor:
    """Self-attention that also attends over the bank for the rows listed in `bank.rows`
    (over every reference's bank together when there are several)."""

    def __init__(self, bank: ReferenceBank, name: str):
        self.bank = bank
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        reference = self.bank.features.get(self.name)
        if self.bank.rows is not None and len(self.bank.rows) == 0:
            reference = None  # no row reads the bank (e.g. a training batch that dropped every reference)
        query = _heads(attn, attn.to_q(hidden_states))
        key = _heads(attn, attn.to_k(hidden_states))
        value = _heads(attn, attn.to_v(hidden_states))
        plain = F.scaled_dot_product_attention(query, key, value)
        if reference is not None:
            reference = join_references(reference, self.bank.references)
            rows = self.bank.rows
            reference_key = _heads(attn, attn.to_k(reference))
            reference_value = _heads(attn, attn.to_v(reference))
            if self.bank.faithful:
                # the release: every row (bank at full batch) attends over [n ; bank], and the
                # plain attention is computed a second time; only the listed rows keep the mix
                joint = F.scaled_dot_product_attention(
                    query, torch.cat([key, reference_key], 2), torch.cat([value, reference_value], 2)
                )[rows]
                plain_rows = F.scaled_dot_product_attention(query, key, value)[rows]
            else:
                joint = F.scaled_dot_product_attention(
                    query[rows],
                    torch.cat([key[rows], reference_key], dim=2),
                    torch.cat([value[rows], reference_value], dim=2),
                )
                plain_rows = plain[rows]
                if self.bank.record_logits:  # the same scores the joint attention gives the bank
                    self.bank.logits[self.name] = query[rows] @ reference_key.transpose(-1, -2) * attn.scale
            plain = plain.index_copy(0, rows, 0.5 * joint + 0.5 * plain_rows)
        output = attn.to_out[0](_merge_heads(plain).to(query.dtype))
        return attn.to_out[1](output)


def attach_reference_attention(
    reference_unet: UNet2DConditionModel, unet: UNet2DConditionModel, bank: ReferenceBank
) -> None:
    """Install writer processors on the reference U-Net and readers on the imitative U-Net.

    When both U-Nets have the same mid/up self-attention layers (names and widths), as SD-1.5's
    and SDXL's pairs do, each imitative layer reads the bank of the reference layer with its name
    (SDXL: 46 layers, up to 10 per block). Otherwise blocks are paired as the release does: in
    module order (mid block first, then up blocks), stable-sorted by width, descending; with
    identical structures that gives the same pairs.
    """
    writers, readers = reference_block_names(reference_unet), reference_block_names(unet)
    if _layer_widths(reference_unet, writers) != _layer_widths(unet, readers):
        writers, readers = _sorted_by_width(reference_unet, writers), _sorted_by_width(unet, readers)
    if len(writers) != len(readers):
        raise ValueError(
            f"reference U-Net has {len(writers)} mid/up transformer blocks, imitative U-Net {len(readers)}"
        )
    reference_processors = {name: AttnProcessor2_0() for name in reference_unet.attn_processors}
    imitative_processors = {name: AttnProcessor2_0() for name in unet.attn_processors}
    for writer, reader in zip(writers, readers):
        reference_processors[f"{writer}.processor"] = ReferenceWriteProcessor(bank, reader)
        imitative_processors[f"{reader}.processor"] = ReferenceReadProcessor(bank, reader)
    reference_unet.set_attn_processor(reference_processors)
    unet.set_attn_processor(imitative_processors)
    # the last writer in module order ends the reference U-Net's useful work
    bank.stop_after = dict(zip(writers, readers))[reference_block_names(reference_unet)[-1]]


def _layer_widths(unet: UNet2DConditionModel, names: list[str]) -> list[tuple[str, int]]:
    modules = dict(unet.named_modules())
    return [(name, modules[name].to_q.in_features) for name in names]


def _sorted_by_width(unet: UNet2DConditionModel, names: list[str]) -> list[str]:
    modules = dict(unet.named_modules())
    return sorted(names, key=lambda name: -modules[name].to_q.in_features)


def run_reference_unet(
    reference_unet: UNet2DConditionModel,
    reference_latents: torch.Tensor,
    timestep: torch.Tensor | int,
    image_embeds: torch.Tensor,
    bank: ReferenceBank,
    run_to_end: bool = False,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> None:
    """Fill `bank` with the reference features of this timestep.

    The reference U-Net's output is never used, so it stops after the last recorded block unless
    `run_to_end` (the release's pattern, for measurement). `added_cond_kwargs`: an SDXL-shaped
    U-Net's pooled vectors and time ids, one row per reference latent (None for SD-1.5).
    """
    stop_after, bank.stop_after = bank.stop_after, (None if run_to_end else bank.stop_after)
    try:
        reference_unet(reference_latents, timestep, encoder_hidden_states=image_embeds,
                       added_cond_kwargs=added_cond_kwargs, return_dict=False)
    except BankComplete:
        pass
    finally:
        bank.stop_after = stop_after
