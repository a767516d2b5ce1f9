"""configs/train-tiny.yaml trains on the real data in ../shared/data (skipped without it)."""

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
