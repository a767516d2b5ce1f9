"""The training loop on a tiny from-scratch model: learning, resuming, checkpoints, NaN stop,
sample edits, export, and the command line."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mimicbrush.cli import main
from mimicbrush.errors import ConfigError
from mimicbrush.pipeline import MimicBrushPipeline
from mimicbrush.training import TrainingDiverged, export_checkpoint, load_train_config, train
from mimicbrush.training.checkpoint import CheckpointStore, TrainerState
from mimicbrush.training.config import OptimConfig
from mimicbrush.training.objective import MimicBrushObjective
from mimicbrush.training.trainer import build_training_model, make_optimizer
from test_train_model import sample_batch
from test_train_support import one_thread, state_of, tiny_document, write_config, write_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


def make_config(tmp_path, images, name="run", **sections):
    """A config file (so a later run can load it again with other overrides)."""
    document = tiny_document(images, tmp_path / name, **sections)
    return load_train_config(write_config(tmp_path / f"{name}.yaml", document))


def test_loss_falls_on_a_fixed_batch(tmp_path, images):
    model = build_training_model(make_config(tmp_path, images))
    parameters = [p for p in model.objective.parameters() if p.requires_grad]
    optimizer = make_optimizer(OptimConfig(lr=1e-3), parameters)
    batch = sample_batch([True, False], [True, False])
    losses = []
    for _ in range(30):
        loss = model.objective(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:5])


def test_resuming_gives_the_uninterrupted_run_bitwise(tmp_path, images):
    sections = {"train": {"max_steps": 5, "gradient_accumulation_steps": 2}, "checkpoint": {"every_steps": 2}}
    straight = make_config(tmp_path, images, "straight", **sections)
    train(straight)
    interrupted = make_config(tmp_path, images, "interrupted", **sections)
    train(load_train_config(interrupted.config_path, ["train.max_steps=3"]))  # stops at 3, as a kill would
    store = CheckpointStore(interrupted.output_dir / "checkpoints")
    assert [path.name for path in store.checkpoints()] == ["step-00000002", "step-00000003"]
    state = TrainerState.read(store.latest())
    # 3 steps × 2 micro-batches × 2 samples = 12 samples of 6 per epoch: exactly 2 epochs read
    assert (state.step, state.epoch, state.sample_offset) == (3, 1, 6)
    train(interrupted, resume="latest")
    for component in ("unet", "reference_unet", "image_proj", "depth_guider"):
        expected = state_of(straight.output_dir / "model", component)
        resumed = state_of(interrupted.output_dir / "model", component)
        assert all(torch.equal(resumed[key], expected[key]) for key in expected), component
    first = torch.load(straight.output_dir / "checkpoints" / "step-00000005" / "optimizer.bin", weights_only=True)
    second = torch.load(interrupted.output_dir / "checkpoints" / "step-00000005" / "optimizer.bin", weights_only=True)
    assert torch.equal(first["state"][0]["exp_avg_sq"], second["state"][0]["exp_avg_sq"])


def test_checkpoints_are_atomic_and_pruned(tmp_path, images):
    config = make_config(tmp_path, images, train={"max_steps": 2},
                         checkpoint={"every_steps": 1, "keep_last": 1})
    train(config)
    store = CheckpointStore(config.output_dir / "checkpoints")
    assert [path.name for path in store.checkpoints()] == ["step-00000002"]
    # a save killed half-way leaves only a temp folder: it is not a checkpoint, and it is cleaned up
    leftover = store.root / ".tmp-step-00000003"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half a file")
    assert store.latest().name == "step-00000002"
    with pytest.raises(ConfigError, match="already holds checkpoints: pass --resume"):
        train(config)
    train(load_train_config(config.config_path, ["train.max_steps=3"]), resume="latest")
    assert not leftover.exists()
    assert [path.name for path in store.checkpoints()] == ["step-00000003"]


def test_the_run_folders_config_continues_the_run_from_anywhere(tmp_path, images, monkeypatch):
    """RUN/config.yaml keeps the original's relative paths meaning what they meant (relative_to)
    and names its run folder, so `mimicbrush train RUN/config.yaml --resume latest` continues it."""
    (tmp_path / "configs").mkdir()
    monkeypatch.chdir(tmp_path / "configs")
    document = tiny_document(Path(os.path.relpath(images)), Path("../runs/relative"), train={"max_steps": 2})
    original = load_train_config(write_config(tmp_path / "configs" / "relative.yaml", document))
    train(original)
    copy_path = original.output_dir / "config.yaml"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    copy = load_train_config(copy_path)
    assert copy.output_dir == original.output_dir == tmp_path / "runs" / "relative"
    assert copy.data == original.data and copy.base_dir == tmp_path / "configs"
    # without relative_to, the copy's data paths would be relative to the run folder
    bare = yaml.safe_load(copy_path.read_text())
    del bare["relative_to"]
    bare_copy = load_train_config(write_config(copy_path.with_name("bare.yaml"), bare))
    assert bare_copy.data != original.data

    assert main(["train", str(copy_path), "--max-steps", "3", "--resume", "latest"]) == 0
    state = TrainerState.read(CheckpointStore(original.output_dir / "checkpoints").latest())
    assert state.step == 3


def test_non_finite_loss_stops_with_the_step(tmp_path, images, monkeypatch):
    calls = []
    real_forward = MimicBrushObjective.forward

    def forward(self, batch):
        calls.append(1)
        loss = real_forward(self, batch)
        return loss * float("nan") if len(calls) == 4 else loss  # call 1 is the probe

    monkeypatch.setattr(MimicBrushObjective, "forward", forward)
    config = make_config(tmp_path, images, train={"max_steps": 5}, checkpoint={"every_steps": 1})
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3; .*Last checkpoint: .*step-00000002"):
        train(config)
    assert CheckpointStore(config.output_dir / "checkpoints").latest().name == "step-00000002"


def test_sample_edits_logs_and_export(tmp_path, images):
    config = make_config(tmp_path, images, train={"max_steps": 2},
                         validation={"every_steps": 2, "num_samples": 2, "steps": 2})
    model_dir = train(config)
    grid = np.asarray(__import__("PIL.Image").Image.open(config.output_dir / "samples" / "step-00000002.png"))
    assert grid.shape == (2 * 256, 4 * 256, 3)
    assert list((config.output_dir / "logs").rglob("events.out.tfevents.*"))
    assert (config.output_dir / "config.yaml").is_file()

    pipe = MimicBrushPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.resolution == 32 and pipe.unet.config.in_channels == 13
    source = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    edit = pipe(source, "8,8,30,30", source[::-1].copy(), num_inference_steps=2,
                generator=torch.Generator().manual_seed(0)).images[0]
    assert edit.size == (48, 40)

    exported = export_checkpoint(config, "latest")  # the checkpoint of the final step = the model
    assert exported.name == "model-step-00000002"
    assert all(torch.equal(tensor, state_of(model_dir)[key]) for key, tensor in state_of(exported).items())
    for folder in (model_dir, exported):  # both exports carry their card and data record (tests/test_model_card.py)
        assert (folder / "README.md").read_text().startswith("---\nlicense: ")
        assert (folder / "training_data.json").is_file()


def test_eight_bit_adam_without_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(ConfigError, match="adamw8bit needs bitsandbytes"):
        make_optimizer(OptimConfig(optimizer="adamw8bit"), [torch.nn.Parameter(torch.zeros(1))])


def test_command_line_trains_and_prints_the_model(tmp_path, images, capsys):
    config_path = write_config(tmp_path / "train.yaml", tiny_document(images, tmp_path / "run"))
    assert main(["train", str(config_path), "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    # --resume with no checkpoint yet starts from step 0 (one command for first start and restarts)
    assert main(["train", str(config_path), "--max-steps", "1", "--output-dir", str(tmp_path / "cli"),
                 "--resume", "optim.lr=1e-4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "cli" / "model")
    assert "no checkpoint in" in captured.err and "training on 1 process(es)" in captured.err
    assert main(["train", str(config_path), "--output-dir", str(tmp_path / "cli"), "--export"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "model-step-00000001")


def test_export_does_not_record_where_the_start_weights_came_from(tmp_path):
    """A pipeline loaded with from_pretrained remembers its folder (`_name_or_path`); the trained
    model's export must not name it (it ships, and the folder is often a temp one)."""
    import json

    from mimicbrush.training.export import export_pipeline
    from tiny_models import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "start")
    loaded = MimicBrushPipeline.from_pretrained(tmp_path / "start")
    assert str(loaded.unet.config._name_or_path) == str(tmp_path / "start" / "unet")  # what diffusers records
    export_pipeline(loaded, tmp_path / "model", "fp32")
    configs = list((tmp_path / "model").rglob("config.json"))
    assert configs and not any("_name_or_path" in json.loads(path.read_text()) for path in configs)
    MimicBrushPipeline.from_pretrained(tmp_path / "model")  # still loads
