"""The model's kind: a reference U-Net run at one fixed timestep (`reference_timestep`, 0 as in
AnimateAnyone's ReferenceNet) instead of at each step's. The pipeline then fills the bank once per
edit and gives what a per-step run at that timestep gives; the training objective and the
imitation metric feed that timestep; the kind is saved with the model and set by the training
config. The per-step kind (the release's) is covered by test_pipeline.py and the parity kit."""

import json

import numpy as np
import pytest
import torch

from mimicbrush import MimicBrushPipeline
from mimicbrush.errors import ConfigError
from mimicbrush.samplers import use_sampler
from mimicbrush.training import load_train_config
from mimicbrush.training.export import export_pipeline
from mimicbrush.training.imitation import ImitationProbe
from mimicbrush.training.objective import MimicBrushObjective
from mimicbrush.training.trainer import build_training_model
from test_pipeline import edit as edit_with_steps, images  # noqa: F401
from test_train_model import sample_batch, tiny_config
from test_train_support import one_thread, tiny_document, write_config  # noqa: F401
from tiny_models import tiny_components

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 3


def tiny_pipeline_of_kind(reference_timestep, sampler="ddim"):
    """The tiny model (same weights whatever the kind) with the given reference timestep."""
    components = {k: v.eval() if hasattr(v, "eval") else v for k, v in tiny_components(0).items()}
    pipe = MimicBrushPipeline(**components, reference_timestep=reference_timestep)
    pipe.set_progress_bar_config(disable=True)
    use_sampler(pipe, sampler)
    return pipe


def edit(pipe, source, reference, **kwargs):
    return edit_with_steps(pipe, source, reference, num_inference_steps=STEPS, **kwargs)


def record_reference_timesteps(unet, into: list):
    """A hook noting the timestep of every reference U-Net call."""
    return unet.register_forward_pre_hook(lambda module, args: into.append(torch.as_tensor(args[1]).clone()))


# ---------------------------------------------------------------------------------------------
# Pipeline


@pytest.mark.parametrize("sampler", ["ddim", "heun"])
@pytest.mark.parametrize("options", [{}, {"faithful": True}, {"guidance_scale": 1.0}])
def test_a_fixed_timestep_fills_the_bank_once_per_edit(images, sampler, options):
    """Once per edit, at timestep 0, whatever the scheduler (heun calls the U-Net 2N-1 times) or
    path; the per-step kind runs it once per imitative U-Net call."""
    source, reference, _ = images
    counts = {}
    for kind in (None, 0):
        pipe = tiny_pipeline_of_kind(kind, sampler)
        reference_timesteps, imitative_calls = [], []
        hooks = [record_reference_timesteps(pipe.reference_unet, reference_timesteps),
                 pipe.unet.register_forward_pre_hook(lambda module, args: imitative_calls.append(1))]
        try:
            edit(pipe, source, reference, **options)
        finally:
            for hook in hooks:
                hook.remove()
        counts[kind] = (len(reference_timesteps), len(imitative_calls))
        if kind == 0:
            assert [int(t) for t in reference_timesteps] == [0]
    expected_calls = STEPS if sampler == "ddim" else 2 * STEPS - 1
    assert counts[None] == (expected_calls, expected_calls)
    assert counts[0] == (1, expected_calls)


@pytest.mark.parametrize("sampler,options", [
    ("ddim", {}),
    ("ddim", {"faithful": True}),
    ("heun", {}),
    ("ddim", {"several_references": True}),
    ("ddim", {"guidance_scale": 1.0}),
])
def test_a_fixed_timestep_edits_as_a_per_step_run_at_that_timestep(images, sampler, options):
    """The bank computed once equals the bank recomputed at every step with t = 0: the same edit
    (final latents compared, which show what 8-bit pixels of a tiny random model round away)."""
    source, reference, other = images
    options = dict(options)
    references = [reference, other] if options.pop("several_references", False) else reference
    once = final_latents(tiny_pipeline_of_kind(0, sampler), source, references, **options)

    per_step = tiny_pipeline_of_kind(None, sampler)
    fed = []
    hook = per_step.reference_unet.register_forward_pre_hook(
        lambda module, args: (fed.append(1), (args[0], 0, *args[2:]))[1])
    try:
        every_step = final_latents(per_step, source, references, **options)
    finally:
        hook.remove()
    assert len(fed) > 1
    torch.testing.assert_close(once, every_step, atol=1e-5, rtol=1e-5)
    # and the timestep matters: the per-step kind's own edit differs
    own = final_latents(tiny_pipeline_of_kind(None, sampler), source, references, **options)
    assert (once - own).abs().max() > 1e-3


def final_latents(pipe, source, reference, **kwargs) -> torch.Tensor:
    kept = {}

    def keep(pipe, step, timestep, values):
        kept["latents"] = values["latents"].clone()

    edit(pipe, source, reference, callback_on_step_end=keep, **kwargs)
    return kept["latents"]


def test_the_kind_is_saved_with_the_model(tmp_path):
    tiny_pipeline_of_kind(0).save_pretrained(tmp_path / "fixed", safe_serialization=True)
    tiny_pipeline_of_kind(None).save_pretrained(tmp_path / "per-step", safe_serialization=True)
    assert json.loads((tmp_path / "fixed" / "model_index.json").read_text())["reference_timestep"] == 0
    assert MimicBrushPipeline.from_pretrained(tmp_path / "fixed").config.reference_timestep == 0
    assert MimicBrushPipeline.from_pretrained(tmp_path / "per-step").config.reference_timestep is None


def test_a_model_folder_without_the_key_is_per_step(tmp_path):
    """Folders saved before the key existed (the bundled model's) keep the release's kind."""
    folder = tmp_path / "old"
    tiny_pipeline_of_kind(None).save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    del index["reference_timestep"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert MimicBrushPipeline.from_pretrained(folder).config.reference_timestep is None


@pytest.mark.parametrize("value", [-1, 1000, 0.5, True])
def test_an_impossible_reference_timestep_is_refused(value):
    with pytest.raises(ValueError, match="reference_timestep"):
        tiny_pipeline_of_kind(value)


# ---------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("overrides,expected", [((), [100, 900]), (("model.reference_timestep=0",), [0, 0])])
def test_the_objective_runs_the_reference_unet_at_the_models_timestep(tmp_path, overrides, expected):
    """Noised at t = 100, 500, 900 with the middle sample's reference dropped: the reference U-Net
    sees the noisy samples' timesteps, or 0 for every sample of the fixed kind."""
    model = build_training_model(tiny_config(tmp_path, *overrides))
    seen = []
    record_reference_timesteps(model.pipeline.reference_unet, seen)
    model.objective(sample_batch([True, False, True], [True, True, True]))
    assert [t.tolist() for t in seen] == [expected]
    assert model.pipeline.config.reference_timestep == (0 if overrides else None)


def test_the_imitation_metric_runs_the_reference_unet_at_the_models_timestep():
    pipe = tiny_pipeline_of_kind(0)
    objective = MimicBrushObjective(pipe, trainable=())
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    pairs = [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
              mask) for _ in range(2)]
    probe = ImitationProbe.from_images(pairs, (500,), 0, objective, (4, 16, 16), pipe.clip_input_size,
                                       pipe.config.depth_input_size)
    seen = []
    record_reference_timesteps(pipe.reference_unet, seen)
    probe.measure(objective)
    assert len(seen) == 2 and all(t.tolist() == [0, 0] for t in seen)  # true and mismatched arms


def test_the_trained_kind_is_exported(tmp_path):
    model = build_training_model(tiny_config(tmp_path, "model.reference_timestep=0"))
    exported = export_pipeline(model.pipeline, tmp_path / "model", "fp32")
    assert MimicBrushPipeline.from_pretrained(exported).config.reference_timestep == 0


def test_fine_tuning_keeps_the_models_kind_unless_told(tmp_path):
    tiny_pipeline_of_kind(0).save_pretrained(tmp_path / "fixed", safe_serialization=True)
    document = tiny_document(tmp_path / "images", tmp_path / "run")
    document["model"] = {"pretrained": str(tmp_path / "fixed")}
    path = write_config(tmp_path / "train.yaml", document)
    kept = build_training_model(load_train_config(path))
    moved = build_training_model(load_train_config(path, ["model.reference_timestep=250"]))
    assert kept.pipeline.config.reference_timestep == 0
    assert moved.pipeline.config.reference_timestep == 250


@pytest.mark.parametrize("value,message", [("-1", "at least 0"), ("1000", r"\[0, 1000\)"), ("zero", "integer")])
def test_a_bad_reference_timestep_in_the_config_names_the_key(tmp_path, value, message):
    with pytest.raises(ConfigError, match=f"model.reference_timestep.*{message}"):
        build_training_model(tiny_config(tmp_path, f"model.reference_timestep={value}"))
