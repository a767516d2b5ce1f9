"""The release's sampler: DDIM, scaled-linear betas, leading spacing, eta 0."""

from diffusers import DDIMScheduler

RELEASE_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
    thresholding=False,
)


def release_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """The release's DDIM; `prediction_type` is what the U-Net predicts (the release: "epsilon";
    models trained by us may use "v_prediction" or "sample", which DDIM's step handles)."""
    return DDIMScheduler(**{**RELEASE_SCHEDULER_CONFIG, "prediction_type": prediction_type})
