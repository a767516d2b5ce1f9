"""The trainer's imitation metric: config, the held-out check, what it measures, and its logs."""

import json

import numpy as np
import pytest
import torch

from mimicbrush.errors import ConfigError
from mimicbrush.training import load_train_config, train
from mimicbrush.training.imitation import ImitationProbe
from mimicbrush.training.trainer import build_training_model
from test_train_support import one_thread, tiny_document, write_config, write_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("imitation")
    return write_images(root / "train"), write_images(root / "held-out", count=3)


def held_out_section(folder, **extra):
    return {"num_pairs": 4, "timesteps": [100, 900], "data": {
        "resolution": 32, "samples_per_epoch": 4, "cache_dir": None,
        "static": {"datasets": [{"images": str(folder), "format": "felzenszwalb"}], "mask_kinds": {"box": 1.0}},
        "masking": {"keypoint_resolution": 32}}, **extra}


def make_config(tmp_path, train_folder, imitation, **sections):
    document = tiny_document(train_folder, tmp_path / "run", imitation=imitation, **sections)
    return load_train_config(write_config(tmp_path / "run.yaml", document))


@pytest.mark.parametrize("section, message", [
    ({"every_steps": 2}, r"imitation.data: required"),
    ({"every_stesp": 2}, r"imitation.every_stesp: unknown key .*did you mean 'every_steps'"),
    ({"timesteps": [], "data": {}}, r"imitation.timesteps: expected a non-empty list"),
    ({"num_pairs": 1}, r"imitation.num_pairs"),
])
def test_bad_sections_name_the_key(tmp_path, folders, section, message):
    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, folders[0], section)


def test_a_held_out_set_that_overlaps_the_training_data_is_refused(tmp_path, folders):
    config = make_config(tmp_path, folders[0], held_out_section(folders[0]))
    with pytest.raises(ConfigError, match=r"imitation.data: .*train.* is also in the training data"):
        train(config)


def probe_for(config):
    model = build_training_model(config)
    pipeline = model.pipeline
    side = config.data.resolution // pipeline.vae_scale_factor
    probe = ImitationProbe.from_config(config.imitation, model.objective, (pipeline.vae.config.latent_channels, side, side),
                           pipeline.clip_input_size, pipeline.config.depth_input_size)
    return model, probe


def test_the_metric_compares_true_and_mismatched_references(tmp_path, folders):
    config = make_config(tmp_path, folders[0], held_out_section(folders[1]))
    model, probe = probe_for(config)
    results = probe.measure(model.objective)
    assert set(results) == {"t100", "t900"}
    for values in results.values():
        assert set(values) == {"gain", "win", "error_true", "error_mismatched"}
        # a random model reads its (different) references: the two arms differ
        assert values["error_true"] != values["error_mismatched"]
        assert values["gain"] == pytest.approx(1 - values["error_true"] / values["error_mismatched"], abs=1e-6)
    # every pair with the same reference: the arms are the same computation, so no gain and no win
    probe.batch["reference"] = probe.batch["reference"][:1].expand_as(probe.batch["reference"]).clone()
    probe.batch["clip_pixels"] = probe.batch["clip_pixels"][:1].expand_as(probe.batch["clip_pixels"]).clone()
    for values in probe.measure(model.objective).values():
        assert values["gain"] == 0.0 and values["win"] == 0.0
    # the modules are back in training mode
    assert model.pipeline.unet.training


def test_a_reference_blind_model_shows_no_gain(tmp_path, folders):
    """The metric fails a model that cannot see its reference: with the reference U-Net and the
    image projection zeroed, the bank and the image context are the same for every reference."""
    config = make_config(tmp_path, folders[0], held_out_section(folders[1]))
    model, probe = probe_for(config)
    with torch.no_grad():
        for module in (model.pipeline.reference_unet, model.pipeline.image_proj):
            for parameter in module.parameters():
                parameter.zero_()
    for values in probe.measure(model.objective).values():
        assert values["gain"] == 0.0 and values["win"] == 0.0


def test_training_logs_the_metric_at_its_interval_and_at_the_end(tmp_path, folders):
    config = make_config(tmp_path, folders[0], held_out_section(folders[1], every_steps=2), train={"max_steps": 3})
    train(config)
    history = json.loads((config.output_dir / "imitation.json").read_text())
    assert [entry["step"] for entry in history] == [2, 3]
    assert history[0]["samples"] == 2 * 2
    assert np.isfinite(history[-1]["t900"]["gain"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(config.output_dir / "logs" / "mimicbrush"))
    events.Reload()
    assert "imitation/gain_t100" in events.Tags()["scalars"]
    assert [event.step for event in events.Scalars("imitation/win_t900")] == [2, 3]
