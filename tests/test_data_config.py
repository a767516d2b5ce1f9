"""Validation of the `data:` config section (mimicbrush.data.config)."""

import re
from pathlib import Path

import pytest
import yaml

from mimicbrush.data.config import DataConfig
from mimicbrush.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"


def minimal(**overrides):
    section = {"video": {"roots": ["frames"]}}
    section.update(overrides)
    return section


def error_for(section):
    with pytest.raises(ConfigError) as caught:
        DataConfig.from_dict(section, base_dir="/base")
    return str(caught.value)


def test_defaults_and_relative_paths(tmp_path):
    config = DataConfig.from_dict(
        {"video": {"roots": ["clips", "/abs/clips"], "manifest": "../list.txt"},
         "static": {"datasets": [{"images": "photos"}]}, "cache_dir": "cache"},
        base_dir=tmp_path / "configs",
    )
    assert config.resolution == 512
    assert config.video.weight == 0.7 and config.static.weight == 0.3
    assert config.video.roots == (tmp_path / "configs" / "clips", Path("/abs/clips"))
    assert config.video.manifest == tmp_path / "list.txt"
    assert config.static.datasets[0].images == tmp_path / "configs" / "photos"
    assert config.static.datasets[0].format == "auto"
    assert config.cache_dir == tmp_path / "configs" / "cache"
    assert config.masking.grid_sizes == (3, 10)
    assert (config.masking.p_matched, config.masking.p_unmatched) == (0.75, 0.5)


def test_absent_section_means_weight_zero_and_null_cache_disables_disk():
    config = DataConfig.from_dict(minimal(cache_dir=None), base_dir="/base")
    assert config.static.weight == 0.0
    assert config.cache_dir is None


@pytest.mark.parametrize(
    "section, message",
    [
        (minimal(foo=1), "data.foo: unknown key"),
        ({"video": {"roots": ["x"], "ssim_bnad": [0.1, 0.2]}}, "did you mean 'ssim_band'"),
        (minimal(augment={"rotate": 3}), "data.augment.rotate: unknown key"),
        (minimal(static={"datasets": [{"images": "x", "masks": "y"}]}),
         "data.static.datasets[0].masks: unknown key"),
        (minimal(static={"datasets": [{"images": "x"}], "felzenszwalb": {"k": 1}}),
         "data.static.felzenszwalb.k: unknown key"),
        ({"video": {"roots": ["x"], "mask_kinds": {"segment": 1}}}, "data.video.mask_kinds: segment masks on video frames need data.video.segments"),
        ({"video": {"roots": ["x"], "mask_kinds": {"blob": 1}}}, "data.video.mask_kinds.blob: unknown key"),
        (minimal(resolution="big"), "data.resolution: expected an integer"),
        (minimal(resolution=100), "data.resolution: must be a multiple of 8"),
        (minimal(resolution=True), "data.resolution: expected an integer"),
        ({"video": {"roots": ["x"], "ssim_band": [0.9, 0.3]}}, "data.video.ssim_band: first value must not exceed"),
        ({"video": {"roots": ["x"], "ssim_band": 0.5}}, "data.video.ssim_band: expected a list of 2 numbers"),
        ({"video": {"roots": ["x"], "weight": -1}}, "data.video.weight: must be at least 0"),
        ({"video": {"roots": [3]}}, "data.video.roots[0]: expected a path"),
        (minimal(masking={"grid_sizes": [1, 10]}), "data.masking.grid_sizes: must be at least 2"),
        (minimal(masking={"keypoints": "surf"}), "data.masking.keypoints: expected one of sift, orb"),
        (minimal(masking={"p_matched": 1.5}), "data.masking.p_matched: must be at most 1"),
        (minimal(augment={"border": "wrap"}), "data.augment.border: expected one of"),
        ({"video": {"weight": 1}}, "data.video: weight is 1 but neither roots nor manifest"),
        ({"static": {"weight": 1}}, "data.static: weight is 1 but no datasets"),
        ({"video": {"roots": ["x"], "weight": 0}}, "data: no source to draw from"),
        (minimal(video=[1]), "data.video: expected a mapping"),
        ("resolution: 64", "data: expected a mapping"),
    ],
)
def test_errors_name_the_key(section, message):
    assert message in error_for(section)


def test_path_prefix_is_configurable():
    with pytest.raises(ConfigError, match=r"^train\.data\.oops: unknown key"):
        DataConfig.from_dict(minimal(oops=1), base_dir="/base", path="train.data")


def test_documented_example_is_valid():
    text = DOCS.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/data.md has no yaml example"
    for block in blocks:
        document = yaml.safe_load(block)
        DataConfig.from_dict(document["data"], base_dir=DOCS.parent)


def test_every_config_field_is_documented():
    text = DOCS.read_text()
    from dataclasses import fields

    from mimicbrush.data import config as schema

    classes = [schema.DataConfig, schema.VideoConfig, schema.StaticConfig, schema.StaticDatasetConfig,
               schema.FelzenszwalbConfig, schema.AugmentConfig, schema.MaskingConfig]
    missing = [f.name for cls in classes for f in fields(cls) if f"`{f.name}`" not in text]
    assert not missing, f"undocumented keys: {missing}"
