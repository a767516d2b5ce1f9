"""Correspondence supervision: targets from a still pair's homographies, the loss on attention
logits, and the reference-attention logits the readers record."""

import numpy as np
import pytest
import torch

from mimicbrush.data.augment import _translate
from mimicbrush.training.correspondence import correspondence_loss, correspondence_targets

SIZE, SIDE = 32, 8  # 4-pixel tokens


def full_mask(batch=1):
    return torch.ones(batch, 1, SIZE, SIZE)


def test_identity_maps_every_token_to_itself():
    target, valid = correspondence_targets(torch.eye(3)[None], full_mask(), SIDE)
    assert valid.all()
    assert torch.equal(target[0], torch.arange(SIDE * SIDE))


def test_a_flip_and_a_shift_move_the_targets():
    centre = (SIZE - 1) / 2
    flip = _translate(centre, centre) @ np.diag([-1.0, 1.0, 1.0]) @ _translate(-centre, -centre)
    target, valid = correspondence_targets(torch.from_numpy(flip)[None], full_mask(), SIDE)
    grid = target[0].view(SIDE, SIDE)
    assert valid.all()
    assert torch.equal(grid % SIDE, torch.arange(SIDE - 1, -1, -1).expand(SIDE, SIDE))  # columns mirrored
    shift = torch.from_numpy(_translate(8.0, 0.0))[None]  # two tokens to the right
    target, valid = correspondence_targets(shift, full_mask(), SIDE)
    grid, inside = target[0].view(SIDE, SIDE), valid[0].view(SIDE, SIDE)
    assert torch.equal(grid[:, :-2] % SIDE, torch.arange(2, SIDE).expand(SIDE, SIDE - 2))
    assert not inside[:, -2:].any() and inside[:, :-2].all()  # mapped outside the reference: no target


def test_only_masked_tokens_of_still_pairs_count():
    mask = torch.zeros(2, 1, SIZE, SIZE)
    mask[:, :, :16] = 1  # the top half
    homographies = torch.stack([torch.eye(3), torch.zeros(3, 3)])  # a still, a video pair
    _, valid = correspondence_targets(homographies, mask, SIDE)
    assert valid[0].view(SIDE, SIDE)[:4].all() and not valid[0].view(SIDE, SIDE)[4:].any()
    assert not valid[1].any()


def test_the_loss_rewards_attention_on_the_target_and_reports_accuracy():
    homography = torch.eye(3)[None]
    tokens = SIDE * SIDE
    right = torch.full((1, 2, tokens, tokens), -10.0)
    right[:, :, torch.arange(tokens), torch.arange(tokens)] = 10.0  # every head on the right token
    wrong = right.roll(3 * SIDE, dims=-1)  # three rows off
    rows = torch.tensor([0])
    good_loss, good_accuracy = correspondence_loss({"b": right}, rows, homography, full_mask())
    bad_loss, bad_accuracy = correspondence_loss({"b": wrong}, rows, homography, full_mask())
    assert good_accuracy == 1.0 and bad_accuracy == 0.0
    assert good_loss < 1e-3 < bad_loss
    # nothing to supervise (a video pair): zero, no accuracy
    loss, accuracy = correspondence_loss({"b": right}, rows, torch.zeros(1, 3, 3), full_mask())
    assert loss == 0 and accuracy is None


def test_readers_record_the_logits_the_joint_attention_uses(tmp_path):
    """The recorded logits are q·kᵀ·scale of the reading rows over the bank, and the loss through
    them reaches the imitative U-Net's query projection and the reference U-Net."""
    from tiny_models import tiny_pipeline

    pipe = tiny_pipeline()
    bank = pipe.bank
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    embeds = torch.randn(2, 1, pipe.unet.config.cross_attention_dim, generator=generator)
    from mimicbrush.models.reference_attention import run_reference_unet

    run_reference_unet(pipe.reference_unet, latents[1:], torch.tensor([10]), embeds[1:], bank)  # row 1 reads
    bank.rows = torch.tensor([1])
    bank.record_logits = True
    sample = torch.randn(2, pipe.unet.config.in_channels, 8, 8, generator=generator)
    pipe.unet(sample, torch.tensor([10, 10]), encoder_hidden_states=embeds)
    assert set(bank.logits) == set(bank.features)
    for logits in bank.logits.values():
        assert logits.shape[0] == 1 and logits.shape[-1] == logits.shape[-2]
    total = sum(logits.float().logsumexp(-1).mean() for logits in bank.logits.values())
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in pipe.unet.named_parameters() if "attn1.to_q" in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pipe.reference_unet.parameters())
    bank.clear()
    assert not bank.logits


def test_training_logs_the_attention_accuracy(tmp_path):
    """With correspondence supervision on, each logging window's attention accuracy reaches
    TensorBoard as train/attention_accuracy (a fraction); without it the tag is absent."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mimicbrush.training import load_train_config, train
    from test_train_support import tiny_document, write_config, write_images

    images = write_images(tmp_path / "images")
    tags = {}
    for weight in (0.1, 0.0):
        document = tiny_document(images, tmp_path / f"run-{weight}", train={"max_steps": 2, "correspondence_weight": weight})
        config = load_train_config(write_config(tmp_path / f"run-{weight}.yaml", document))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train(config)
        finally:
            torch.set_num_threads(threads)
        events = EventAccumulator(str(next((config.output_dir / "logs").rglob("events.out.tfevents.*")).parent))
        events.Reload()
        tags[weight] = events
    accuracy = [event.value for event in tags[0.1].Scalars("train/attention_accuracy")]
    assert len(accuracy) == 2 and all(0.0 <= value <= 1.0 for value in accuracy)
    assert "train/attention_accuracy" not in tags[0.0].Tags()["scalars"]
    assert "train/loss" in tags[0.0].Tags()["scalars"]
