"""Schedulers other than the release's DDIM: every named one edits, sigma schedulers scale only the
noisy latent, second-order ones refill the reference bank per call, and impossible pairs say so."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, KDPM2DiscreteScheduler

from mimicbrush import samplers
from mimicbrush.errors import InputError
from mimicbrush.scheduling import release_scheduler
from tiny_models import tiny_pipeline

STEPS = 3
LATENT_CHANNELS = 4


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture
def fresh_scheduler(pipe):
    """Each test leaves the module's pipeline with the release's DDIM."""
    yield
    pipe.scheduler = release_scheduler()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)


def edit(pipe, images, **kwargs):
    source, reference = images
    kwargs = {"num_inference_steps": STEPS, "generator": torch.Generator().manual_seed(0), **kwargs}
    return pipe(source_image=source, mask_image="10,5,40,30", reference_image=reference, **kwargs)


class UnetInputs:
    """The sample tensor each U-Net receives, per call (forward pre-hooks)."""

    def __init__(self, pipe):
        self.imitative, self.reference = [], []
        self.hooks = [
            pipe.unet.register_forward_pre_hook(lambda module, args: self.imitative.append(args[0].clone())),
            pipe.reference_unet.register_forward_pre_hook(lambda module, args: self.reference.append(args[0].clone())),
        ]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_every_named_scheduler_edits(pipe, images, fresh_scheduler, name):
    samplers.use_sampler(pipe, name)
    with UnetInputs(pipe) as seen:
        output = edit(pipe, images)
    assert output.images[0].size == (60, 40)
    assert output.model_images[0].size == (pipe.resolution, pipe.resolution)
    assert np.isfinite(np.asarray(output.model_images[0], dtype=np.float32)).all()
    assert len(seen.imitative) == samplers.unet_calls(pipe.scheduler, STEPS)
    assert len(seen.reference) == len(seen.imitative)  # the bank is filled for every call


def test_sigma_scheduler_scales_the_noisy_latent_only(pipe, images, fresh_scheduler):
    with UnetInputs(pipe) as ddim:
        edit(pipe, images)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    entering_step = []  # the latents each scheduler step starts from
    step = pipe.scheduler.step

    def recording_step(model_output, timestep, sample, *args, **kwargs):
        entering_step.append(sample.clone())
        return step(model_output, timestep, sample, *args, **kwargs)

    pipe.scheduler.step = recording_step
    with UnetInputs(pipe) as euler:
        edit(pipe, images)
    sigmas = pipe.scheduler.sigmas
    assert pipe.scheduler.init_noise_sigma > 1  # so unscaled inputs would be caught
    assert len(euler.imitative) == len(entering_step) == STEPS
    for index, (received, latents) in enumerate(zip(euler.imitative, entering_step)):
        expected = latents / (sigmas[index] ** 2 + 1) ** 0.5  # Euler's scale_model_input, written out
        rows = received.shape[0]
        torch.testing.assert_close(received[:, :LATENT_CHANNELS], expected.repeat(rows, 1, 1, 1))
        # mask, collage latents and depth feature: as DDIM (whose scaling is the identity) gets them
        torch.testing.assert_close(received[:, LATENT_CHANNELS:], ddim.imitative[index][:, LATENT_CHANNELS:],
                                   rtol=0, atol=0)
    # the initial noise is scaled by init_noise_sigma of the steps' own schedule (read after set_timesteps)
    first_ddim = ddim.imitative[0][0, :LATENT_CHANNELS]
    torch.testing.assert_close(entering_step[0][0], first_ddim * pipe.scheduler.init_noise_sigma)


def test_second_order_scheduler_fills_the_bank_at_each_calls_timestep(pipe, images, fresh_scheduler):
    samplers.use_sampler(pipe, "heun")
    timesteps = []
    hook = pipe.reference_unet.register_forward_pre_hook(
        lambda module, args: timesteps.append(float(args[1])))
    try:
        edit(pipe, images)
    finally:
        hook.remove()
    assert len(timesteps) == 2 * STEPS - 1
    np.testing.assert_allclose(timesteps, pipe.scheduler.timesteps.cpu().numpy())


def test_ancestral_scheduler_is_reproducible_by_seed(pipe, images, fresh_scheduler):
    samplers.use_sampler(pipe, "euler-a")
    torch.manual_seed(1)
    first = np.asarray(edit(pipe, images).model_images[0])
    torch.manual_seed(2)  # the global RNG does not matter: the edit's generator draws the noise
    again = np.asarray(edit(pipe, images).model_images[0])
    np.testing.assert_array_equal(first, again)


def test_named_ddim_is_the_release_default(pipe, images, fresh_scheduler):
    default = np.asarray(edit(pipe, images).model_images[0])
    samplers.use_sampler(pipe, "ddim")
    np.testing.assert_array_equal(np.asarray(edit(pipe, images).model_images[0]), default)


@pytest.mark.parametrize("scheduler_class", [EulerAncestralDiscreteScheduler, KDPM2DiscreteScheduler])
def test_scheduler_that_cannot_serve_a_sample_predictor_is_a_clear_error(scheduler_class):
    pipe = tiny_pipeline()
    pipe.scheduler = release_scheduler("sample")
    pipe.model_prediction_type = "sample"
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    with pytest.raises(InputError, match=rf"{scheduler_class.__name__} does not support prediction type 'sample'"):
        edit(pipe, (np.zeros((40, 60, 3), np.uint8), np.zeros((50, 30, 3), np.uint8)))


def test_named_scheduler_errors_and_the_supported_list():
    sample_config = release_scheduler("sample").config
    with pytest.raises(InputError, match=r"scheduler euler-a does not support prediction type 'sample'.*"
                                         r"that can: ddim, dpm\+\+, dpm\+\+-karras, unipc, euler, heun$"):
        samplers.make_scheduler("euler-a", sample_config)
    with pytest.raises(InputError, match="unknown scheduler 'lms'; choose one of ddim, dpm"):
        samplers.make_scheduler("lms", sample_config)
    assert "euler-a" not in samplers.supported_samplers(sample_config)
    assert samplers.supported_samplers(release_scheduler().config) == list(samplers.SAMPLERS)


def test_scheduler_set_for_another_prediction_type_is_refused(pipe, images, fresh_scheduler):
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    with pytest.raises(InputError, match="set for prediction type 'v_prediction' but this model predicts 'epsilon'"):
        edit(pipe, images)


def test_unet_calls_per_steps():
    config = release_scheduler().config
    assert samplers.unet_calls(samplers.make_scheduler("ddim", config), 20) == 20
    assert samplers.unet_calls(samplers.make_scheduler("dpm++-karras", config), 20) == 20
    assert samplers.unet_calls(samplers.make_scheduler("heun", config), 20) == 39
