"""Data options that make the reference necessary: whole-object masks on video frames (from the
clips' label maps), one colour jitter shared by a pair, and a shared colour remap."""

import numpy as np
import pytest
from PIL import Image

from mimicbrush.data import DataConfig, build_dataset
from mimicbrush.data.augment import remap_colours
from mimicbrush.errors import ConfigError

STILL_GEOMETRY = {"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip_p": 0.0, "rotation": 0.0,
                  "perspective_p": 0.0}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One 4-frame clip of a square object moving right over noise, with a label map per frame
    (1 = background, 2 = the object), and two stills."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    background = np.repeat(rng.integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, axis=2)  # grey noise
    for index in range(4):
        frame, labels = background.copy(), np.ones((64, 64), np.uint8)
        frame[20:44, 8 + 6 * index:32 + 6 * index] = (250, 30, 30)
        labels[20:44, 8 + 6 * index:32 + 6 * index] = 2
        (root / "clips" / "walk").mkdir(parents=True, exist_ok=True)
        (root / "masks" / "walk").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(root / "clips" / "walk" / f"{index:05d}.png")
        Image.fromarray(labels).save(root / "masks" / "walk" / f"{index:05d}.png")
    (root / "stills").mkdir()
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "stills" / f"{index}.png")
    return root


def video_config(root, **augment):
    return DataConfig.from_dict({
        "resolution": 64, "samples_per_epoch": 8, "cache_dir": None,
        "video": {"roots": ["clips"], "segments": "masks", "mask_kinds": {"segment": 1.0}, "ssim_band": [-1, 1]},
        "augment": {**STILL_GEOMETRY, "color_p": 0.0, **augment},
        "masking": {"keypoint_resolution": 64, "segment_area": [0.05, 0.5]}}, base_dir=root)


def test_video_segment_masks_hide_the_labelled_object_of_the_source_frame(root):
    dataset = build_dataset(video_config(root), seed=0)
    for index in range(4):
        pair = dataset.sample_pair(index)
        assert pair.mask_kind == "segment" and pair.origin == "video"
        red = pair.source[..., 0].astype(int) - pair.source[..., 1] > 100
        # the mask is exactly the object of the source frame (not of the reference frame)
        assert np.array_equal(pair.mask.astype(bool), red)


def test_video_frames_without_label_maps_fall_back_to_grid_masks(root, tmp_path):
    (tmp_path / "empty" / "walk").mkdir(parents=True)
    config = DataConfig.from_dict({
        "resolution": 64, "samples_per_epoch": 4, "cache_dir": None,
        "video": {"roots": [str(root / "clips")], "segments": "empty", "mask_kinds": {"segment": 1.0},
                  "ssim_band": [-1, 1]},
        "masking": {"keypoint_resolution": 64}}, base_dir=tmp_path)
    assert build_dataset(config, seed=0).sample_pair(0).mask_kind == "grid"


def test_segment_masks_on_video_need_the_segments_folder(root):
    with pytest.raises(ConfigError, match=r"data.video.mask_kinds: segment masks on video frames need data.video.segments"):
        DataConfig.from_dict({"video": {"roots": ["clips"], "mask_kinds": {"segment": 1.0}}}, base_dir=root)
    with pytest.raises(ConfigError, match=r"data.video.segments: folder not found"):
        DataConfig.from_dict({"video": {"roots": ["clips"], "segments": "nowhere"}}, base_dir=root)


def still_pair(root, **augment):
    config = DataConfig.from_dict({
        "resolution": 48, "samples_per_epoch": 4, "cache_dir": None,
        "static": {"datasets": [{"images": "stills", "format": "felzenszwalb"}], "mask_kinds": {"box": 1.0}},
        "augment": {**STILL_GEOMETRY, **augment}, "masking": {"keypoint_resolution": 48}}, base_dir=root)
    return build_dataset(config, seed=0).sample_pair(1)


def test_shared_colour_jitter_gives_both_images_the_same_colours(root):
    # a still with no geometric augmentation: source and reference differ only by their jitter
    independent = still_pair(root, color_p=1.0, brightness=0.4, hue=0.1)
    assert np.abs(independent.source.astype(int) - independent.reference).mean() > 2
    shared = still_pair(root, color_p=1.0, brightness=0.4, hue=0.1, shared_color=True)
    np.testing.assert_array_equal(shared.source, shared.reference)
    plain = still_pair(root, color_p=0.0)
    assert np.abs(shared.source.astype(int) - plain.source).mean() > 2  # it was jittered


def test_pair_remap_changes_colours_identically_in_both_images(root):
    plain = still_pair(root, color_p=0.0)
    remapped = still_pair(root, color_p=0.0, pair_remap_p=1.0)
    np.testing.assert_array_equal(remapped.source, remapped.reference)
    assert np.abs(remapped.source.astype(int) - plain.source).mean() > 10


def test_remap_keeps_structure_and_is_a_colour_map():
    rng = np.random.default_rng(3)
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4] = (200, 40, 40)
    image[4:] = (20, 120, 220)
    out = remap_colours(image, rng)
    # equal pixels stay equal and the two regions stay distinct
    assert len({tuple(p) for p in out[:4].reshape(-1, 3)}) == 1
    assert len({tuple(p) for p in out[4:].reshape(-1, 3)}) == 1
    assert not np.array_equal(out[0, 0], out[7, 7])
