"""The mixed pair dataset: item format, determinism, mixture weights, errors."""

from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mimicbrush.data import DataConfig, build_dataset, ssim
from mimicbrush.data.augment import warp_points
from mimicbrush.errors import ConfigError, InputError


def write_synthetic_data(root):
    """Two 6-frame clips of a drifting texture and three stills with label maps."""
    rng = np.random.default_rng(0)
    for clip in ("clip_a", "clip_b"):
        folder = root / "video" / clip
        folder.mkdir(parents=True)
        base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        texture = np.kron(base, np.ones((4, 4, 1), np.uint8))
        for index in range(6):
            frame = np.roll(texture, index * 2, axis=1)
            Image.fromarray(frame).save(folder / f"{index:05d}.jpg")
    (root / "stills").mkdir()
    (root / "labels").mkdir()
    for index in range(3):
        noise = rng.integers(0, 256, (240, 288, 3)).astype(np.float32)
        image = cv2.GaussianBlur(noise, (0, 0), 2.0)  # blobs of every size: distinct keypoints
        image = ((image - image.min()) / np.ptp(image) * 255).astype(np.uint8)
        Image.fromarray(image).save(root / "stills" / f"{index}.jpg")
        labels = np.ones((240, 288), np.uint8)
        labels[40:160, 80:200] = 2
        Image.fromarray(labels).save(root / "labels" / f"{index}.png")


def config(root, **overrides):
    section = {
        "resolution": 32,
        "samples_per_epoch": 40,
        "cache_dir": None,
        "video": {"roots": ["video"], "ssim_band": [-1.0, 1.0]},
        "static": {"datasets": [{"images": "stills", "segments": "labels"}]},
        "masking": {"max_keypoints": 200, "keypoint_resolution": 64},
    }
    section.update(overrides)
    return DataConfig.from_dict(section, base_dir=root)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_data(root)
    return root


def test_items_have_the_documented_format(data_root):
    dataset = build_dataset(config(data_root), seed=0)
    assert len(dataset) == 40
    item = dataset[0]
    assert set(item) == {"source", "reference", "mask", "source_uint8", "source_to_reference"}
    assert item["source_to_reference"].shape == (3, 3)
    for key in ("source", "reference"):
        assert item[key].shape == (3, 32, 32) and item[key].dtype == torch.float32
        assert -1.0 <= item[key].min() and item[key].max() <= 1.0
    assert item["mask"].shape == (1, 32, 32) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["source_uint8"].shape == (32, 32, 3) and item["source_uint8"].dtype == torch.uint8
    assert torch.allclose(item["source"], item["source_uint8"].permute(2, 0, 1).float() / 127.5 - 1)
    with pytest.raises(IndexError):
        dataset[40]


def test_same_seed_same_sample_and_indices_epochs_seeds_differ(data_root):
    first = build_dataset(config(data_root), seed=5)
    second = build_dataset(config(data_root), seed=5)
    a, b = first.sample_pair(3, with_debug=True), second.sample_pair(3, with_debug=True)
    assert np.array_equal(a.source, b.source) and np.array_equal(a.reference, b.reference)
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.matches.source, b.matches.source)
    assert not np.array_equal(first.sample_pair(4).source, a.source)
    assert not np.array_equal(build_dataset(config(data_root), seed=6).sample_pair(3).source, a.source)
    first.set_epoch(1)
    assert not np.array_equal(first.sample_pair(3).source, a.source)
    assert np.array_equal(first.sample_pair(3, epoch=0).source, a.source)


def test_dataloader_worker_count_does_not_change_samples(data_root):
    dataset = build_dataset(config(data_root, samples_per_epoch=8), seed=1)
    dataset.set_epoch(2)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=4, num_workers=workers)
        batches[workers] = [batch for batch in loader]
    for serial, parallel in zip(batches[0], batches[2], strict=True):
        for key in serial:
            assert torch.equal(serial[key], parallel[key]), key


def test_mixture_follows_the_weights(data_root):
    boxes = {"mask_kinds": {"box": 1.0}}
    section_video = {"roots": ["video"], "ssim_band": [-1.0, 1.0], "weight": 0.7, **boxes}
    section_static = {"datasets": [{"images": "stills"}], "weight": 0.3, **boxes}
    dataset = build_dataset(config(data_root, samples_per_epoch=500, video=section_video, static=section_static,
                                   masking={"keypoint_resolution": 32}), 0)
    origins = Counter(dataset.sample_pair(i).origin for i in range(500))
    assert origins["video"] / 500 == pytest.approx(0.7, abs=0.07)
    only_static = build_dataset(config(data_root, video=None, static=section_static), 0)
    assert {only_static.sample_pair(i).origin for i in range(10)} == {"static"}


def test_mask_kinds_per_source(data_root):
    dataset = build_dataset(config(data_root, samples_per_epoch=60), seed=0)
    kinds = Counter((pair.origin, pair.mask_kind) for pair in map(dataset.sample_pair, range(60)))
    assert set(kinds) <= {("video", "grid"), ("static", "segment"), ("static", "grid")}
    assert kinds["video", "grid"] > 0 and kinds["static", "segment"] > 0
    for index in range(20):
        pair = dataset.sample_pair(index)
        assert 0 < pair.mask.sum() < pair.mask.size


def test_matches_agree_with_the_homographies_of_a_still_pair(data_root):
    """Source and reference of a still are one image, so H_ref · H_src⁻¹ predicts every match."""
    still = {"datasets": [{"images": "stills", "format": "felzenszwalb"}], "mask_kinds": {"grid": 1}}
    dataset = build_dataset(config(data_root, resolution=64, video=None, static=still,
                                   masking={"keypoint_resolution": 256}), 0)
    agreeing = total = 0
    for index in range(8):
        pair = dataset.sample_pair(index)
        source_to_reference = pair.reference_homography @ np.linalg.inv(pair.source_homography)
        predicted = warp_points(pair.matches.source, source_to_reference)
        errors = np.linalg.norm(predicted - pair.matches.reference, axis=1)
        agreeing += (errors < 1.0).sum()
        total += len(errors)
    assert total >= 200  # found on the 256 px working canvas; a 64 px canvas gives a few dozen
    assert agreeing / total > 0.7


def test_video_cache_makes_a_rerun_compute_nothing(data_root, tmp_path, monkeypatch):
    calls = []
    original = ssim.frame_ssim
    monkeypatch.setattr(ssim, "frame_ssim", lambda *args: calls.append(1) or original(*args))
    video_only = dict(cache_dir=str(tmp_path / "cache"), static=None,
                      video={"roots": ["video"], "ssim_band": [0.0, 1.0], "mask_kinds": {"box": 1}})
    first = [build_dataset(config(data_root, **video_only), 0).sample_pair(i).source for i in range(20)]
    assert calls
    calls.clear()
    second = [build_dataset(config(data_root, **video_only), 0).sample_pair(i).source for i in range(20)]
    assert not calls
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_errors(data_root, tmp_path):
    with pytest.raises(ConfigError, match=r"data.video.roots\[0\]: folder not found"):
        build_dataset(config(data_root, video={"roots": ["nowhere"]}), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data\.video: no clips"):
        build_dataset(config(tmp_path, video={"roots": ["empty"]}, static=None), 0)
    with pytest.raises(ConfigError, match=r"data.static.datasets\[0\].images: folder not found"):
        build_dataset(config(tmp_path, video=None), 0)
    with pytest.raises(ConfigError, match="seed"):
        build_dataset(config(data_root), -1)
    impossible = build_dataset(config(data_root, static=None, video={"roots": ["video"], "ssim_band": [1.0, 1.0],
                                                                   "max_tries": 3}), 0)
    with pytest.raises(InputError, match=r"no frame pair with SSIM in \[1, 1\]"):
        impossible.sample_pair(0)
