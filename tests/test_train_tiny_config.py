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


def test_the_demo_model_config_describes_the_shipped_model():
    """The config that made the bundled model parses and says what it is: 64² from scratch with
    clean-image prediction, reference attention at every level, a held-out imitation set that
    shares no clip with the training data."""
    from mimicbrush.loading import default_model
    from mimicbrush.training.imitation import check_held_out

    config = load_train_config(CONFIGS / "demo-model.yaml", [])
    assert config.model.prediction_type == "sample" and config.data.resolution == 64
    assert config.model.pretrained is None  # from scratch
    assert config.imitation.data is not None and config.imitation.data.resolution == 64
    if (SHARED / "data").is_dir():
        check_held_out(config.data, config.imitation.data)  # raises if a held-out clip is trained on
    shipped = MimicBrushPipeline.from_pretrained(default_model())
    assert shipped.resolution == 64 and shipped.scheduler.config.prediction_type == "sample"
    unet = config.model.components["unet"].config
    assert list(shipped.unet.config.down_block_types) == unet["down_block_types"]
    assert list(shipped.unet.config.block_out_channels) == unet["block_out_channels"]
