"""configs/train-tiny.yaml trains on the real data in ../shared/data (skipped without it)."""

import dataclasses

import pytest

from mimicbrush.pipeline import MimicBrushPipeline
from mimicbrush.training import load_train_config, train
from test_train_support import CONFIGS, SHARED, one_thread  # noqa: F401

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not (SHARED / "data" / "video").is_dir(), reason=f"no shared data at {SHARED / 'data'}"),
]


def test_tiny_config_runs_on_the_shared_data(tmp_path):
    config = load_train_config(
        CONFIGS / "train-tiny.yaml",
        ["train.batch_size=2", "train.num_workers=0", "data.cache_dir=null",
         "validation.every_steps=2", "validation.num_samples=1", "validation.steps=2"],
        max_steps=2, output_dir=tmp_path / "run")
    model_dir = train(config)
    assert (tmp_path / "run" / "samples" / "step-00000002.png").is_file()
    pipe = MimicBrushPipeline.from_pretrained(model_dir)
    assert pipe.resolution == 64 and pipe.config.depth_input_size == 56


def test_demo_model_configs_describe_the_shipped_model():
    """The two stages that made the bundled model parse, and say what it is: 64² from scratch with
    clean-image prediction, then 128² from stage 1's export."""
    from mimicbrush.loading import default_model

    stage1 = load_train_config(CONFIGS / "demo-model-64.yaml", [])
    assert stage1.model.prediction_type == "sample" and stage1.data.resolution == 64
    assert stage1.model.pretrained is None  # from scratch
    stage2 = load_train_config(CONFIGS / "demo-model.yaml", [])
    assert stage2.model.pretrained == str(stage1.output_dir / "model") and stage2.data.resolution == 128
    # the same data, at the new resolution (keypoints found at a matching resolution)
    assert stage2.data == dataclasses.replace(stage1.data, resolution=128, masking=stage2.data.masking)
    shipped = MimicBrushPipeline.from_pretrained(default_model())
    assert shipped.resolution == 128 and shipped.scheduler.config.prediction_type == "sample"
