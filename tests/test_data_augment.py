"""Augmentation geometry: the returned homography says where every input pixel went."""

import numpy as np
import pytest

from mimicbrush.data.augment import augment, jitter_colour, warp_image, warp_points
from mimicbrush.data.config import AugmentConfig

GEOMETRY_ONLY = AugmentConfig(color_p=0.0, border="constant", crop_scale=(0.3, 1.0), rotation=45.0,
                              perspective=0.4, perspective_p=1.0)


def dot_image(width, height, point):
    image = np.zeros((height, width, 3), np.uint8)
    x, y = point
    image[y - 1:y + 2, x - 1:x + 2] = 255
    return image


def brightest(image):
    grey = image.astype(float).sum(axis=2)
    y, x = np.unravel_index(np.argmax(grey), grey.shape)
    return np.array([x, y]), grey.max()


@pytest.mark.parametrize("size", [64, 160])
def test_homography_sends_a_dot_where_the_image_put_it(size):
    checked = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        point = (int(rng.integers(60, 340)), int(rng.integers(60, 240)))
        result = augment(dot_image(400, 300, point), size, GEOMETRY_ONLY, rng)
        expected = warp_points([point], result.homography)[0]
        if not (3 <= expected).all() or not (expected <= size - 4).all():
            continue  # cropped away
        found, value = brightest(result.image)
        assert value > 0
        assert np.linalg.norm(found - expected) <= 1.5, (seed, found, expected)
        checked += 1
    assert checked >= 15


def test_two_augmentations_of_one_image_are_related_by_their_homographies():
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(30):
        point = (int(rng.integers(80, 320)), int(rng.integers(80, 220)))
        image = dot_image(400, 300, point)
        source = augment(image, 128, GEOMETRY_ONLY, rng)
        reference = augment(image, 128, GEOMETRY_ONLY, rng)
        found_in_source, _ = brightest(source.image)
        found_in_reference, _ = brightest(reference.image)
        in_source = warp_points([point], source.homography)[0]
        in_reference = warp_points([point], reference.homography)[0]
        if not ((3 <= in_source) & (in_source <= 124) & (3 <= in_reference) & (in_reference <= 124)).all():
            continue
        source_to_reference = reference.homography @ np.linalg.inv(source.homography)
        predicted = warp_points([found_in_source], source_to_reference)[0]
        assert np.linalg.norm(predicted - found_in_reference) <= 3.0
        checked += 1
    assert checked >= 8


def test_full_crop_without_other_steps_is_the_identity():
    config = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, rotation=0.0,
                           perspective_p=0.0, color_p=0.0)
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    result = augment(image, 48, config, np.random.default_rng(1))
    assert np.allclose(result.homography, np.eye(3), atol=1e-9)
    assert np.array_equal(result.image, image)


def test_flip_maps_the_first_column_to_the_last():
    config = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=1.0, rotation=0.0,
                           perspective_p=0.0, color_p=0.0)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    result = augment(image, 32, config, np.random.default_rng(0))
    assert np.array_equal(result.image, image[:, ::-1])
    assert np.allclose(warp_points([[0, 5]], result.homography), [[31, 5]])


def test_masks_follow_the_image_under_nearest_warping():
    image = np.zeros((200, 300, 3), np.uint8)
    image[:, :150] = (255, 0, 0)
    mask = np.zeros((200, 300), np.uint8)
    mask[:, :150] = 1
    for seed in range(10):
        result = augment(image, 96, GEOMETRY_ONLY, np.random.default_rng(seed))
        warped_mask = warp_image(mask, result.homography, 96, nearest=True)
        inside = warp_image(np.full((200, 300), 1, np.uint8), result.homography, 96, nearest=True)
        red = result.image[..., 0] > 127
        agree = (red == warped_mask.astype(bool))[inside.astype(bool)]
        assert agree.mean() > 0.97  # only the interpolated boundary column may differ


def test_colour_jitter_with_zero_strength_changes_nothing_and_stays_in_range():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    still = AugmentConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    assert np.array_equal(jitter_colour(image, still, np.random.default_rng(0)), image)
    strong = AugmentConfig(brightness=1.0, contrast=1.0, saturation=1.0, hue=0.5)
    jittered = jitter_colour(image, strong, np.random.default_rng(0))
    assert jittered.dtype == np.uint8 and jittered.shape == image.shape
    assert not np.array_equal(jittered, image)
