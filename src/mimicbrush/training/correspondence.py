"""Correspondence supervision: teach the reference attention where to look.

For a still pair (one image augmented twice) the augmentations' homographies say exactly where
each source pixel lies in the reference. For every masked query token of a reference-attention
block, the target is the bank token holding that place; the loss is the cross-entropy of the
block's attention over the bank (its heads' probabilities averaged, so heads may specialise as
long as their mixture looks at the right place). Video pairs carry no dense correspondence and
are left out. Off unless `train.correspondence_weight` > 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def correspondence_targets(source_to_reference: torch.Tensor, mask: torch.Tensor, side: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """For a side×side token grid over S×S canvases: the bank token each query token's centre maps
    to (B × side², long) and whether it counts (masked, of a still pair, inside the reference)."""
    size = mask.shape[-1]
    cell = size / side
    centres = (torch.arange(side, device=mask.device, dtype=torch.float32) + 0.5) * cell - 0.5
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([x.flatten(), y.flatten(), torch.ones_like(x.flatten())])  # 3 × side²
    mapped = source_to_reference.float() @ points  # B × 3 × side²
    known = source_to_reference.abs().flatten(1).sum(1) > 0  # all zeros: a video pair
    depth = mapped[:, 2].where(mapped[:, 2].abs() > 1e-6, torch.full_like(mapped[:, 2], 1e-6))
    column = torch.floor((mapped[:, 0] / depth + 0.5) / cell)
    row = torch.floor((mapped[:, 1] / depth + 0.5) / cell)
    inside = (column >= 0) & (column < side) & (row >= 0) & (row < side)
    centre_pixels = points[:2].round().long().clamp(0, size - 1)
    masked = mask[:, 0, centre_pixels[1], centre_pixels[0]] > 0.5  # B × side²
    valid = masked & inside & known[:, None]
    target = (row.clamp(0, side - 1) * side + column.clamp(0, side - 1)).long()
    return target, valid


def correspondence_loss(logits: Mapping[str, torch.Tensor], rows: torch.Tensor, source_to_reference: torch.Tensor,
                        mask: torch.Tensor) -> tuple[torch.Tensor, float | None]:
    """Mean cross-entropy over every recorded block's valid query tokens, and the attention
    accuracy (share of them whose most-attended bank token is within one token of the target);
    (0, None) when no token counts."""
    losses, hits, total = [], 0, 0
    for block_logits in logits.values():  # rows × heads × Q × K
        side = math.isqrt(block_logits.shape[2])
        if side * side != block_logits.shape[2] or block_logits.shape[2] != block_logits.shape[3]:
            continue
        target, valid = correspondence_targets(source_to_reference[rows], mask[rows], side)
        if not valid.any():
            continue
        probabilities = block_logits.float().softmax(dim=-1).mean(dim=1)  # rows × Q × K
        picked = probabilities.gather(2, target[..., None])[..., 0]
        losses.append(-(picked[valid] + 1e-8).log().mean())
        best = probabilities.argmax(dim=-1)
        near = ((best // side - target // side).abs() <= 1) & ((best % side - target % side).abs() <= 1)
        hits += int(near[valid].sum())
        total += int(valid.sum())
    if not losses:
        return mask.new_zeros(()), None
    return torch.stack(losses).mean(), hits / total
