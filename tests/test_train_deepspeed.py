"""The trainer under DeepSpeed ZeRO-2 (configs/accelerate/ds-zero2.yaml).

Always run (no DeepSpeed needed): what the accelerate file and the training config give
DeepSpeed's config, the objective on trainable modules stored in half precision without autocast
(what DeepSpeed's bf16 and fp16 do), the weight average over such weights, and the refusal to
resume a checkpoint across the DeepSpeed boundary.

Opt-in (`MIMICBRUSH_DEEPSPEED=1`, in a Python with `pip install deepspeed`, and ../shared/data):
configs/train-tiny-xl.yaml trained under ZeRO-2 as 2 CPU processes (DeepSpeed's CPU accelerator,
gloo), stopped halfway and resumed, against plain DDP on the same seed (benchmarks/deepspeed_vs_ddp.py
launches both), then `--export` of its checkpoint.
"""

import importlib.util
import json
import os
import sys
from types import SimpleNamespace

import pytest
import torch

from mimicbrush.errors import ConfigError
from mimicbrush.training import export_checkpoint, load_train_config
from mimicbrush.training.averaging import WeightAverage
from mimicbrush.training.checkpoint import STATE_FILE, CheckpointStore, TrainerState
from mimicbrush.training.trainer import Trainer, build_training_model, model_fingerprint, place_for_training
from mimicbrush.training.zero import configure_deepspeed
from test_train_model import sample_batch
from benchmark_scripts import load_benchmark
from test_train_support import (CONFIGS, SHARED, one_thread, state_of, tiny_document, tiny_xl_model,  # noqa: F401
                                write_config)

pytestmark = pytest.mark.usefixtures("one_thread")

ZERO2 = CONFIGS / "accelerate" / "ds-zero2.yaml"
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def xl_config(tmp_path, *overrides):
    document = tiny_document(tmp_path / "images", tmp_path / "run")
    document["model"] = tiny_xl_model()
    return load_train_config(write_config(tmp_path / "train.yaml", document), list(overrides))


# ---------------------------------------------------------------------------------------------
# What DeepSpeed is told


@pytest.fixture
def launched_zero2(monkeypatch):
    """The environment `accelerate launch --config_file ds-zero2.yaml` gives each process (its
    launcher stops short of starting them), set in this one."""
    import accelerate.commands.launch as launch
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    def environment_for(*flags: str) -> dict[str, str]:
        captured = {}
        monkeypatch.setattr(launch, "deepspeed_launcher",
                            lambda args: captured.update(prepare_deepspeed_cmd_env(args)[1]))
        launch.launch_command(launch.launch_command_parser().parse_args(
            ["--config_file", str(ZERO2), *flags, "-m", "mimicbrush", "train", "config.yaml"]))
        given = {name: value for name, value in captured.items() if name.startswith("ACCELERATE_")}
        for name, value in given.items():
            monkeypatch.setenv(name, value)
        return given

    return environment_for


def accelerator_under(plugin, num_processes: int):
    """What `configure_deepspeed` reads of an accelerator that DeepSpeed runs."""
    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=num_processes,
                           state=SimpleNamespace(deepspeed_plugin=plugin))


def test_deepspeed_gets_the_recipes_batch_accumulation_and_clipping(launched_zero2):
    from accelerate.utils import DeepSpeedPlugin

    environment = launched_zero2()
    assert environment["ACCELERATE_USE_DEEPSPEED"] == "true" and environment["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    recipe = load_train_config(CONFIGS / "train-sdxl.yaml", [])
    plugin = DeepSpeedPlugin()  # as accelerate builds it from that environment
    configure_deepspeed(accelerator_under(plugin, 8), recipe.train)
    config = plugin.deepspeed_config
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["gradient_clipping"], config["train_batch_size"]) == (8, 1, 1.0, 64)
    assert config["zero_optimization"]["stage"] == 2

    # the single-GPU figures of train-sdxl.yaml's header, on 2 processes: the training config decides
    single = load_train_config(CONFIGS / "train-sdxl.yaml", ["train.batch_size=4", "train.gradient_accumulation_steps=16",
                                                            "train.max_grad_norm=null"])
    plugin = DeepSpeedPlugin()
    configure_deepspeed(accelerator_under(plugin, 2), single.train)
    config = plugin.deepspeed_config
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["gradient_clipping"], config["train_batch_size"]) == (4, 16, 0.0, 128)


def test_a_deepspeed_setting_that_contradicts_the_training_config_is_refused(launched_zero2):
    from accelerate.utils import DeepSpeedPlugin

    launched_zero2("--gradient_clipping", "0.5")
    recipe = load_train_config(CONFIGS / "train-sdxl.yaml", [])
    with pytest.raises(ConfigError, match=r"^the DeepSpeed config sets gradient_clipping 0.5, but train.max_grad_norm "
                                          r"is 1.0: leave it out"):
        configure_deepspeed(accelerator_under(DeepSpeedPlugin(), 8), recipe.train)
    equal = DeepSpeedPlugin(gradient_accumulation_steps=1, gradient_clipping=1.0)
    configure_deepspeed(accelerator_under(equal, 8), recipe.train)  # repeating the same values is fine
    with pytest.raises(ConfigError, match=r"^DeepSpeed ZeRO stage 3: the trainer supports stages 1 and 2"):
        configure_deepspeed(accelerator_under(DeepSpeedPlugin(zero_stage=3), 8), recipe.train)


# ---------------------------------------------------------------------------------------------
# Half-precision trainable modules, no autocast


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_loss_runs_on_trainable_modules_stored_in_half_precision_without_autocast(tmp_path, precision):
    """DeepSpeed's bf16/fp16: the prepared module (the trainable components) is cast to the half
    dtype and accelerate turns autocast off; the frozen ones are stored as the trainer stores them
    (SDXL's VAE in float32 under fp16). The float32 latents must reach each U-Net in its dtype."""
    model = build_training_model(xl_config(tmp_path))
    objective, half = model.objective, HALF[precision]
    batch = sample_batch([True, False], [True, False])
    full_precision_loss = objective(batch).item()

    place_for_training(objective, torch.device("cpu"), precision, False)
    objective.trainable.to(dtype=half)  # what DeepSpeed's engine does to the prepared module
    seen = {}
    for role in ("unet", "reference_unet"):
        objective.parts[role].register_forward_pre_hook(
            lambda module, args, role=role: seen.__setitem__(role, args[0].dtype))
    loss = objective(batch)
    assert seen == {"unet": half, "reference_unet": half}
    assert model.pipeline.vae.dtype == (torch.float32 if precision == "fp16" else half)
    assert loss.dtype == torch.float32 and abs(loss.item() - full_precision_loss) < 0.05 * full_precision_loss
    loss.backward()
    for role in objective.trainable:
        gradients = [p.grad for p in objective.parts[role].parameters() if p.grad is not None]
        assert gradients and all(g.dtype == half and g.isfinite().all() for g in gradients), role


def test_the_weight_average_of_half_precision_weights_is_float32():
    """A bf16 average would round away each step's (1 - decay) share of the weights' change."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64).to(torch.bfloat16)
    average = WeightAverage(layer, decay=0.999)
    average.ema.optimization_step = 10_000  # past the warm-up: an update moves 0.1 % of the way
    start = layer.weight.detach().float().clone()
    with torch.no_grad():
        layer.weight.add_(layer.weight.abs() * 2**-5)  # a few bf16 steps
    average.update()
    shadow = average.ema.shadow_params[0]
    assert shadow.dtype == torch.float32
    torch.testing.assert_close(shadow, start + 0.001 * (layer.weight.float() - start), rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_a_deepspeed_checkpoint_is_not_resumed_without_deepspeed(tmp_path):
    """Its optimizer state is DeepSpeed's, sharded per process (the opt-in test launches the
    refusals for real, and that of a DeepSpeed run on another number of processes)."""
    config = xl_config(tmp_path)
    checkpoint = config.output_dir / "checkpoints" / "step-00000002"
    checkpoint.mkdir(parents=True)
    state = TrainerState(step=2, epoch=0, sample_offset=4, num_processes=2, batch_size=2,
                         gradient_accumulation_steps=1, model=model_fingerprint(config), deepspeed_zero_stage=2)
    (checkpoint / STATE_FILE).write_text(state.to_json())
    with pytest.raises(ConfigError, match=r"step-00000002 was saved under DeepSpeed ZeRO-2 and this run is without "
                                          r"DeepSpeed: resume it as it was launched, or export it with --export$"):
        Trainer(config, resume="latest")


def test_checkpoints_from_before_deepspeed_read_as_saved_without_it(tmp_path):
    state = json.loads(TrainerState(step=1, epoch=0, sample_offset=2, num_processes=1, batch_size=2,
                                    gradient_accumulation_steps=1, model={}).to_json())
    del state["deepspeed_zero_stage"]
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    assert TrainerState.read(tmp_path).deepspeed_zero_stage is None


# ---------------------------------------------------------------------------------------------
# The real thing, opt-in


def load_comparison_script():
    return load_benchmark("deepspeed_vs_ddp")


def opt_in_reason() -> str | None:
    if os.environ.get("MIMICBRUSH_DEEPSPEED") != "1":
        return "DeepSpeed runs are opt-in: set MIMICBRUSH_DEEPSPEED=1 (a few minutes on 2 cores)"
    if importlib.util.find_spec("deepspeed") is None:
        return f"MIMICBRUSH_DEEPSPEED=1, but {sys.executable} has no deepspeed (pip install deepspeed)"
    if not (SHARED / "data").is_dir():
        return f"configs/train-tiny-xl.yaml trains on {SHARED / 'data'}, which is absent"
    return None


@pytest.mark.skipif(opt_in_reason() is not None, reason=opt_in_reason() or "")
def test_zero2_on_two_processes_resumes_and_matches_ddp(tmp_path):
    script = load_comparison_script()
    result = script.run_pair(tmp_path, steps=4, precision="no", extra=["train.batch_size=2", "data.samples_per_epoch=64"])
    assert result["zero2_said"][0].startswith("training on 2 process(es) with DeepSpeed ZeRO-2")
    assert result["zero2_said"][1].startswith("resuming from") and result["zero2_said"][1].endswith("at step 2")
    # float32: sharding the optimizer changes nothing but the order of float sums
    assert len(result["zero2_loss"]) == len(result["ddp_loss"]) == 4
    assert result["loss_relative_difference"]["max"] < 1e-5
    assert max(result["weight_gap_relative_to_largest_weight"].values()) < 1e-4

    run = tmp_path / "zero2-no"
    checkpoint = run / "checkpoints" / "step-00000004"
    assert (checkpoint / "pytorch_model").is_dir() and (checkpoint / "model.safetensors").is_file()
    assert TrainerState.read(checkpoint).deepspeed_zero_stage == 2
    # --export reads the gathered float32 weights without DeepSpeed: the run's own export
    config = load_train_config(script.TINY_XL, [f"output_dir={run}"])
    exported = export_checkpoint(config, "latest")
    for role in ("unet", "pooled_proj"):
        final, again = state_of(run / "model", role), state_of(exported, role)
        assert all(torch.equal(final[key], again[key]) for key in final), role

    # its sharded optimizer state resumes only as it was saved: 2 DeepSpeed processes
    resume = [f"output_dir={run}", "train.max_steps=6", "--resume"]
    one = script.launch_zero2(script.TINY_XL, resume, processes=1)
    assert one.returncode != 0 and (f"{checkpoint} holds DeepSpeed's optimizer state sharded over 2 processes; "
                                    "this run has 1: resume it with 2") in one.stderr
    plain = script.launch_ddp(script.TINY_XL, resume, processes=2)
    assert plain.returncode != 0 and f"{checkpoint} was saved under DeepSpeed ZeRO-2 and this run is without" in plain.stderr
    assert CheckpointStore(run / "checkpoints").latest() == checkpoint  # nothing written
