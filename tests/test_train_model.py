"""Model assembly and the loss: conv_in widening, the three starts, per-sample draws (reference
and depth drops), the 13-channel input, unreached parameters, gradient checkpointing."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mimicbrush.errors import ConfigError
from mimicbrush.training import load_train_config
from mimicbrush.training.components import build_components, widen_conv_in
from mimicbrush.training.objective import DrawSettings, draw_sample_randomness
from mimicbrush.training.trainable import enable_gradient_checkpointing, freeze_unreached, probe_batch
from mimicbrush.training.trainer import build_training_model
from test_train_support import one_thread, tiny_document, write_config  # noqa: F401
from tiny_models import tiny_pipeline, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(tmp_path, *overrides, **sections):
    document = tiny_document(tmp_path / "images", tmp_path / "run", **sections)
    return load_train_config(write_config(tmp_path / "train.yaml", document), list(overrides))


def sample_batch(keep_reference, keep_depth, seed=0):
    """Batch in the trainer's format, rows built from the tiny model's probe sample."""
    rows = [probe_batch(32, (4, 16, 16), 32, 28, torch.device("cpu")) for _ in keep_reference]
    generator = torch.Generator().manual_seed(seed)
    batch = {key: torch.cat([row[key] for row in rows]) for key in rows[0]}
    for key in ("source", "reference", "clip_pixels", "depth_pixels", "noise", "posterior_noise"):
        batch[key] = torch.randn(batch[key].shape, generator=generator).clamp(-1, 1)
    batch["mask"] = torch.zeros_like(batch["mask"])
    batch["mask"][:, :, 8:24, 4:20] = 1
    batch["keep_reference"] = torch.tensor(keep_reference)
    batch["keep_depth"] = torch.tensor(keep_depth)
    batch["timestep"] = torch.tensor([100, 500, 900][: len(keep_reference)])
    return batch


# ---------------------------------------------------------------------------------------------
# Components


def test_widening_conv_in_keeps_the_old_channels_and_zeros_the_new():
    torch.manual_seed(0)
    unet = tiny_unet(9).eval()
    old_weight, old_bias = unet.conv_in.weight.clone(), unet.conv_in.bias.clone()
    sample, context = torch.randn(1, 9, 16, 16), torch.randn(1, 4, 32)
    before = unet(sample, 10, encoder_hidden_states=context).sample
    widen_conv_in(unet, 13)
    assert unet.conv_in.in_channels == 13 and unet.config.in_channels == 13
    assert torch.equal(unet.conv_in.weight[:, :9], old_weight) and torch.equal(unet.conv_in.bias, old_bias)
    assert torch.count_nonzero(unet.conv_in.weight[:, 9:]) == 0
    with torch.no_grad():  # the new (depth) inputs change nothing until trained
        after = unet(torch.cat([sample, torch.randn(1, 4, 16, 16)], 1), 10, encoder_hidden_states=context).sample
    assert torch.equal(before, after)


def test_from_scratch_components_fit_together_and_are_seeded(tmp_path):
    config = tiny_config(tmp_path)
    components = build_components(config.model, 32, seed=0)
    assert components["unet"].config.in_channels == 13 and components["reference_unet"].config.in_channels == 4
    assert components["unet"].config.sample_size == components["reference_unet"].config.sample_size == 16
    assert components["image_proj"].config.in_features == 32 and components["depth_guider"].config.resolution == 32
    again = build_components(config.model, 32, seed=0)
    assert torch.equal(again["unet"].conv_in.weight, components["unet"].conv_in.weight)
    # each component has its own seed: another U-Net leaves the VAE as it was
    other = tiny_config(tmp_path, "model.unet.config.layers_per_block=2")
    changed = build_components(other.model, 32, seed=0)
    assert torch.equal(changed["vae"].encoder.conv_in.weight, components["vae"].encoder.conv_in.weight)


def test_pretrained_inpainting_unet_is_widened(tmp_path):
    """The SD-1.5 start: a 9-channel inpainting U-Net and a plain U-Net from diffusers folders."""
    torch.manual_seed(0)
    inpainting, plain = tiny_unet(9), tiny_unet(4)
    inpainting.save_pretrained(tmp_path / "sd-inpainting" / "unet")
    plain.save_pretrained(tmp_path / "sd" / "unet")
    config = tiny_config(tmp_path, f"model.unet={{pretrained: {tmp_path / 'sd-inpainting'}, subfolder: unet}}",
                         f"model.reference_unet={{pretrained: {tmp_path / 'sd'}, subfolder: unet}}")
    components = build_components(config.model, 32, seed=0)
    unet = components["unet"]
    assert unet.conv_in.in_channels == 13
    assert torch.equal(unet.conv_in.weight[:, :9], inpainting.conv_in.weight)
    assert torch.equal(components["reference_unet"].conv_out.weight, plain.conv_out.weight)


def test_mimicbrush_model_start_loads_every_component(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "model")
    document = tiny_document(tmp_path / "images", tmp_path / "run")
    document["model"] = {"pretrained": str(tmp_path / "model")}
    config = load_train_config(write_config(tmp_path / "train.yaml", document))
    components = build_components(config.model, 32, seed=0)
    assert components["depth_input_size"] == 28
    for role in ("unet", "reference_unet", "image_proj", "depth_guider"):
        expected = getattr(pipe, role).state_dict()
        assert all(torch.equal(tensor, expected[key]) for key, tensor in components[role].state_dict().items())


def test_parameter_free_standins_plug_in(tmp_path):
    config = tiny_config(tmp_path, "model.vae={class: PixelShuffleAutoencoder, config: {downsample_factor: 2}}",
                         "model.depth_estimator={class: LuminanceDepth}")
    model = build_training_model(config)
    assert model.pipeline.unet.config.in_channels == 12 + 1 + 12 + 4 and model.pipeline.unet.config.out_channels == 12
    batch = probe_batch(32, (12, 16, 16), 32, 28, torch.device("cpu"))
    model.objective(batch).backward()
    assert model.pipeline.unet.conv_in.weight.grad is not None


@pytest.mark.parametrize("override, message", [
    ("model.unet.config.in_channels=9", "model.unet.config.in_channels: must be 13"),
    ("model.depth_guider.config.block_out_channels=[8,16,32]", "model.depth_guider: block_out_channels give a 4x"),
    ("model.depth_input_size=30", "model.depth_input_size: 30 is not a multiple"),
    ("model.image_encoder.config.hidden_act=nope", "model.image_encoder"),
])
def test_inconsistent_components_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        build_components(tiny_config(tmp_path, override).model, 32, seed=0)


# ---------------------------------------------------------------------------------------------
# Per-sample draws


def test_reference_and_depth_drop_shares():
    settings = DrawSettings(seed=3, reference_drop=0.1, depth_drop=0.5, num_train_timesteps=1000,
                            latent_shape=(1, 1, 1))
    draws = [draw_sample_randomness(settings, epoch=0, index=index) for index in range(4000)]
    reference_kept = np.array([bool(draw["keep_reference"]) for draw in draws])
    depth_kept = np.array([bool(draw["keep_depth"]) for draw in draws])
    timesteps = np.array([int(draw["timestep"]) for draw in draws])
    assert abs((1 - reference_kept.mean()) - 0.1) < 0.02  # binomial sd 0.005
    assert abs((1 - depth_kept.mean()) - 0.5) < 0.03  # sd 0.008
    assert abs(np.corrcoef(reference_kept, depth_kept)[0, 1]) < 0.06  # independent choices
    assert timesteps.min() < 20 and timesteps.max() > 980
    first, again = draw_sample_randomness(settings, 1, 7), draw_sample_randomness(settings, 1, 7)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["noise"], draw_sample_randomness(settings, 2, 7)["noise"])


# ---------------------------------------------------------------------------------------------
# The loss


def capture_inputs(model):
    """Record what each component receives during one forward."""
    seen = {}
    parts = model.objective.parts

    def keep(name):
        def hook(module, args, kwargs):
            seen[name] = (args, kwargs)
            if name == "unet":
                seen["bank_rows"] = None if model.objective.bank.rows is None else model.objective.bank.rows.clone()
        return hook

    for name in ("unet", "reference_unet", "image_encoder", "depth_estimator"):
        parts[name].register_forward_pre_hook(keep(name), with_kwargs=True)
    return seen


def test_dropped_references_and_depth_match_inference(tmp_path):
    model = build_training_model(tiny_config(tmp_path))
    seen = capture_inputs(model)
    batch = sample_batch([True, False, True], [False, True, True])
    model.objective(batch)

    clip = seen["image_encoder"][1]["pixel_values"]
    assert torch.count_nonzero(clip[1]) == 0  # the unconditional input: all-zero pixels
    assert torch.equal(clip[0], batch["clip_pixels"][0]) and torch.equal(clip[2], batch["clip_pixels"][2])
    depth = seen["depth_estimator"][1]["pixel_values"]
    assert torch.count_nonzero(depth[0]) == 0 and torch.equal(depth[1], batch["depth_pixels"][1])
    assert seen["bank_rows"].tolist() == [0, 2]  # only the rows that keep their reference read the bank
    reference_input = seen["reference_unet"][0][0]
    assert reference_input.shape[0] == 2

    unet_input = seen["unet"][0][0]
    assert unet_input.shape[1] == 13
    expected_mask = F.interpolate(batch["mask"], size=(16, 16), mode="nearest")
    assert torch.equal(unet_input[:, 4:5], expected_mask)
    # masked-image latents: the VAE posterior of the collage (masked region at -1), same noise
    vae = model.pipeline.vae
    collage = torch.where(batch["mask"] > 0.5, -1.0, batch["source"])
    with torch.no_grad():
        posterior = vae.encode(collage).latent_dist
    expected = (posterior.mean + posterior.std * batch["posterior_noise"][:, 1]) * vae.config.scaling_factor
    torch.testing.assert_close(unet_input[:, 5:9], expected, atol=1e-5, rtol=1e-5)
    # the reference U-Net sees the clean reference latents of the kept rows, at their timesteps
    with torch.no_grad():
        reference_posterior = vae.encode(batch["reference"]).latent_dist
    reference_latents = (reference_posterior.mean + reference_posterior.std * batch["posterior_noise"][:, 2]) \
        * vae.config.scaling_factor
    torch.testing.assert_close(reference_input, reference_latents[[0, 2]], atol=1e-5, rtol=1e-5)
    assert seen["reference_unet"][0][1].tolist() == [100, 900]


def test_all_references_dropped_still_gives_reference_unet_gradients(tmp_path):
    model = build_training_model(tiny_config(tmp_path))
    seen = capture_inputs(model)
    loss = model.objective(sample_batch([False, False], [True, True]))
    loss.backward()
    assert seen["bank_rows"] is None  # nothing read
    gradients = [p.grad for p in model.pipeline.reference_unet.down_blocks.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in gradients)


def test_parameters_the_loss_never_reaches_are_frozen(tmp_path):
    config = tiny_config(tmp_path, "train.trainable=[unet,reference_unet,image_encoder,image_proj]")
    model = build_training_model(config)
    batch = probe_batch(32, (4, 16, 16), 32, 28, torch.device("cpu"))
    unreached = set(freeze_unreached(model.objective, batch))
    assert "trainable.reference_unet.conv_out.weight" in unreached
    assert "trainable.reference_unet.up_blocks.1.attentions.1.proj_out.weight" in unreached
    assert "trainable.image_encoder.visual_projection.weight" in unreached
    assert "trainable.image_encoder.vision_model.encoder.layers.1.mlp.fc2.weight" in unreached  # the last layer
    assert not any(name.startswith("trainable.unet.") for name in unreached)
    assert "trainable.reference_unet.up_blocks.1.attentions.1.transformer_blocks.0.norm1.weight" not in unreached
    assert all(not p.requires_grad for name, p in model.objective.named_parameters() if name in unreached)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    config = tiny_config(tmp_path)
    batch = sample_batch([True, False], [True, False])
    gradients = []
    for checkpointing in (False, True):
        model = build_training_model(config)
        if checkpointing:
            enable_gradient_checkpointing(model.objective.trainable.values())
            assert model.pipeline.unet.is_gradient_checkpointing
        model.objective(copy.deepcopy(batch)).backward()
        gradients.append({name: p.grad.clone() for name, p in model.objective.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_loss_target_follows_the_prediction_type(tmp_path, prediction_type):
    model = build_training_model(tiny_config(tmp_path, f"model.prediction_type={prediction_type}"))
    scheduler = model.pipeline.scheduler
    assert scheduler.config.prediction_type == prediction_type  # exported with the model: the sampler reads it
    outputs = {}
    model.pipeline.unet.register_forward_hook(lambda module, args, output: outputs.update(prediction=output[0]))
    seen = capture_inputs(model)
    batch = sample_batch([True, True, False], [True, False, True])
    with torch.no_grad():
        loss = model.objective(batch)
    # the clean latents, recovered from the noisy U-Net input the loss built
    alphas = scheduler.alphas_cumprod[batch["timestep"]].view(-1, 1, 1, 1)
    noisy = seen["unet"][0][0][:, :4]
    latents = (noisy - (1 - alphas).sqrt() * batch["noise"]) / alphas.sqrt()
    target = {"epsilon": batch["noise"], "sample": latents,
              "v_prediction": alphas.sqrt() * batch["noise"] - (1 - alphas).sqrt() * latents}[prediction_type]
    torch.testing.assert_close(loss, F.mse_loss(outputs["prediction"], target), atol=1e-4, rtol=1e-4)


def test_unknown_prediction_type_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.prediction_type: expected one of epsilon, v_prediction, sample"):
        tiny_config(tmp_path, "model.prediction_type=x0")


def test_the_mask_loss_weight_weights_the_masked_latents(tmp_path):
    model = build_training_model(tiny_config(tmp_path, "train.mask_loss_weight=3.0"))
    assert model.objective.mask_loss_weight == 3.0
    batch = sample_batch([True, True], [True, False])
    with torch.no_grad():
        step = model.objective.predict(batch)
        loss = model.objective(batch)
    error = (step.prediction - model.objective.target(step.latents, step.noise, step.timesteps)) ** 2
    expected = (error * (1 + 2 * step.latent_mask)).mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert 0 < step.latent_mask.mean() < 1  # both regions present, so the weight matters


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predicted_latents_recover_the_clean_latent_from_an_exact_prediction(tmp_path, prediction_type):
    """The imitation metric compares clean latents whatever the model predicts."""
    model = build_training_model(tiny_config(tmp_path, f"model.prediction_type={prediction_type}"))
    objective = model.objective
    with torch.no_grad():
        step = objective.predict(sample_batch([True, True, True], [True, True, True]))
    exact = objective.target(step.latents, step.noise, step.timesteps)
    recovered = objective.predicted_latents(type(step)(**{**step.__dict__, "prediction": exact}))
    torch.testing.assert_close(recovered, step.latents, atol=1e-4, rtol=1e-4)
