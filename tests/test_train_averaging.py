"""`train.ema_decay`: a moving average of the weights, checkpointed, resumed, measured and exported."""

import pytest
import torch
from safetensors.torch import load_file

from mimicbrush.errors import ConfigError
from mimicbrush.training import export_checkpoint, load_train_config, train
from mimicbrush.training.averaging import EMA_FILE, WeightAverage, read_average
from mimicbrush.training.checkpoint import WEIGHTS_FILE, CheckpointStore
from test_train_support import one_thread, state_of, tiny_document, write_config, write_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
UNET = "trainable.unet."  # the imitative U-Net's names in a checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


def make_config(tmp_path, images, name, **train_settings):
    document = tiny_document(images, tmp_path / name, train={"max_steps": 4, **train_settings},
                             checkpoint={"every_steps": 2, "keep_last": 3})
    return load_train_config(write_config(tmp_path / f"{name}.yaml", document))


def test_the_average_follows_diffusers_warm_up_and_swaps_back():
    layer = torch.nn.Linear(3, 2)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    module = torch.nn.ModuleDict({"layer": layer, "frozen": frozen})
    average = WeightAverage(module, decay=0.5)
    assert average.names == ["layer.weight", "layer.bias"]  # only what trains
    expected = None
    for n in range(1, 5):
        with torch.no_grad():
            layer.weight.add_(1.0)
        average.update()
        decay = 0.0 if n == 1 else min(0.5, n / (n + 9))
        weight = layer.weight.detach().clone()
        expected = weight if expected is None else decay * expected + (1 - decay) * weight
    raw = layer.weight.detach().clone()
    with average.swapped_in():
        assert torch.allclose(layer.weight, expected)
        assert not torch.equal(layer.weight, raw)
    assert torch.equal(layer.weight, raw)


def test_ema_decay_must_be_below_one(tmp_path, images):
    for value, message in ((1.0, "must be below 1"), (-0.1, "ema_decay")):
        document = tiny_document(images, tmp_path / "run", train={"ema_decay": value})
        with pytest.raises(ConfigError, match=message):
            load_train_config(write_config(tmp_path / "bad.yaml", document))


def test_the_average_is_checkpointed_resumed_and_exported(tmp_path, images):
    straight = make_config(tmp_path, images, "straight", ema_decay=0.9)
    model_dir = train(straight)
    latest = CheckpointStore(straight.output_dir / "checkpoints").latest()
    averaged, step = read_average(latest / EMA_FILE)
    assert step == 4
    raw = load_file(str(latest / WEIGHTS_FILE))  # the checkpoint's own weights
    exported = state_of(model_dir)
    assert set(averaged) <= set(raw) and any(name.startswith(UNET) for name in averaged)
    # the exported U-Net is the average, not the last step's weights
    assert all(torch.equal(exported[name[len(UNET):]], tensor) for name, tensor in averaged.items()
               if name.startswith(UNET))
    assert not all(torch.equal(exported[name[len(UNET):]], raw[name]) for name in averaged if name.startswith(UNET))
    again = export_checkpoint(straight, "latest")
    assert all(torch.equal(tensor, exported[name]) for name, tensor in state_of(again).items())

    # stopped at step 2 and resumed: the same average as the straight run, bit for bit
    interrupted = make_config(tmp_path, images, "interrupted", ema_decay=0.9)
    train(load_train_config(interrupted.config_path, ["train.max_steps=2"]))
    train(interrupted, resume="latest")
    resumed = state_of(interrupted.output_dir / "model")
    assert all(torch.equal(tensor, exported[name]) for name, tensor in resumed.items())


def test_without_ema_nothing_changes(tmp_path, images):
    config = make_config(tmp_path, images, "plain")
    model_dir = train(config)
    latest = CheckpointStore(config.output_dir / "checkpoints").latest()
    assert not (latest / EMA_FILE).exists()
    raw, exported = load_file(str(latest / WEIGHTS_FILE)), state_of(model_dir)
    assert all(torch.equal(tensor, raw[UNET + name]) for name, tensor in exported.items())
