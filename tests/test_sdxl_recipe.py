"""configs/train-sdxl.yaml (the paper's recipe on SDXL at 1024²) and the DeepSpeed ZeRO-2 file
launched beside it: the recipe's values, and the settings the two files must agree on."""

import yaml
from accelerate.commands.config.config_args import load_config_from_file

from mimicbrush.training.components import COMPONENT_ROLES
from mimicbrush.training.config import load_train_config
from test_train_support import CONFIGS

RECIPE, ZERO2 = CONFIGS / "train-sdxl.yaml", CONFIGS / "accelerate" / "ds-zero2.yaml"
TRAINABLE = ["unet", "reference_unet", "image_proj", "pooled_proj", "depth_guider"]


def load_recipe():
    overrides = []
    if "pooled_proj" not in COMPONENT_ROLES:
        # the SDXL backbone (branch xl-core) adds the pooled_proj role; until then the loader rejects it
        overrides.append(f"train.trainable=[{','.join(role for role in TRAINABLE if role != 'pooled_proj')}]")
    return load_train_config(RECIPE, overrides)


def test_the_sdxl_recipe_is_the_papers_at_1024():
    assert yaml.safe_load(RECIPE.read_text())["train"]["trainable"] == TRAINABLE
    config = load_recipe()
    assert config.data.resolution == 1024 and config.model.depth_input_size == 518
    sources = {role: (spec.pretrained, spec.subfolder) for role, spec in config.model.components.items()}
    assert sources == {
        "unet": ("diffusers/stable-diffusion-xl-1.0-inpainting-0.1", "unet"),
        "reference_unet": ("stabilityai/stable-diffusion-xl-base-1.0", "unet"),
        "vae": ("stabilityai/stable-diffusion-xl-base-1.0", "vae"),
        "image_encoder": ("h94/IP-Adapter", "models/image_encoder"),
        "depth_estimator": ("LiheYoung/depth-anything-base-hf", None),
    }
    train, optim = config.train, config.optim
    assert (train.mixed_precision, train.gradient_checkpointing, optim.optimizer) == ("bf16", True, "adamw8bit")
    assert (train.reference_drop, train.depth_drop, optim.lr) == (0.1, 0.5, 1e-5)


def test_the_zero2_file_agrees_with_the_recipe():
    """The file leaves the batch, accumulation and clipping to the training config (the trainer
    writes them into DeepSpeed's config: tests/test_train_deepspeed.py); with the recipe it makes
    the paper's batch of 64."""
    config, launch = load_recipe(), load_config_from_file(str(ZERO2))  # accelerate's own reader
    deepspeed = launch.deepspeed_config
    assert launch.distributed_type == "DEEPSPEED" and deepspeed["zero_stage"] == 2
    assert launch.mixed_precision == config.train.mixed_precision
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & set(deepspeed)
    global_batch = launch.num_processes * config.train.batch_size * config.train.gradient_accumulation_steps
    assert global_batch == 64
