"""Masks of EXIF-rotated photos: a mask painted on the stored pixels follows the source's rotation.

Every case uses a real EXIF-tagged JPEG written by Pillow: its stored pixels are 48×32 with a red
block; the mask marks the same block on the stored pixels (as a tool that ignores EXIF paints it).
"""

import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

from mimicbrush import imaging
from mimicbrush.errors import InputError
from tiny_models import tiny_pipeline

STORED = (48, 32)  # width, height of the stored pixels
BLOCK = (slice(4, 14), slice(6, 22))  # rows, columns of the red block / the mask, stored


def tagged_jpeg(path, orientation: int, size=STORED):
    pixels = np.full((size[1], size[0], 3), 30, np.uint8)
    pixels[BLOCK] = (230, 20, 20)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif)
    return path


def stored_mask(path, size=STORED, scale=1):
    array = np.zeros((size[1], size[0]), np.uint8)
    array[BLOCK] = 255
    image = Image.fromarray(array)
    if scale != 1:
        image = image.resize((size[0] // scale, size[1] // scale), Image.NEAREST)
    image.save(path)
    return path


def displayed(array: np.ndarray, orientation: int) -> np.ndarray:
    """What Pillow's exif_transpose shows for stored pixels `array` tagged with `orientation`."""
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    return np.asarray(ImageOps.exif_transpose(image))


def load(source, mask):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source_image, mask_image = imaging.load_source_and_mask(source, mask)
    return source_image, np.asarray(mask_image) > 128, [str(w.message) for w in caught]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_mask_painted_on_the_stored_pixels(tmp_path, orientation):
    source = tagged_jpeg(tmp_path / "photo.jpg", orientation)
    source_image, mask, notices = load(source, stored_mask(tmp_path / "mask.png"))
    red = np.asarray(source_image)[:, :, 0] > 128
    if orientation >= 5:  # sides swapped: the stored-shaped mask is rotated as the source is
        assert source_image.size == (STORED[1], STORED[0])
        np.testing.assert_array_equal(mask, red)  # it marks the red block where it is displayed
        assert any(f"EXIF orientation {orientation}" in notice for notice in notices)
    else:  # the same shape either way: taken as displayed (2-4: not flipped)
        assert source_image.size == STORED
        expected = np.zeros((STORED[1], STORED[0]), bool)
        expected[BLOCK] = True
        np.testing.assert_array_equal(mask, expected)
        assert not any("EXIF" in notice for notice in notices)
        if orientation == 1:
            np.testing.assert_array_equal(mask, red)


@pytest.mark.parametrize("orientation", range(5, 9))
def test_mask_painted_on_the_displayed_pixels_is_kept(tmp_path, orientation):
    source = tagged_jpeg(tmp_path / "photo.jpg", orientation)
    stored = np.zeros((STORED[1], STORED[0]), np.uint8)
    stored[BLOCK] = 255
    Image.fromarray(displayed(stored, orientation)).save(tmp_path / "mask.png")
    source_image, mask, notices = load(source, tmp_path / "mask.png")
    np.testing.assert_array_equal(mask, np.asarray(source_image)[:, :, 0] > 128)
    assert notices == []


@pytest.mark.parametrize("orientation", range(5, 9))
def test_downscaled_stored_mask_is_rotated_then_resized(tmp_path, orientation):
    source = tagged_jpeg(tmp_path / "photo.jpg", orientation)
    _, mask, notices = load(source, stored_mask(tmp_path / "mask.png", scale=2))
    assert mask.shape == (STORED[0], STORED[1])
    assert len(notices) == 2 and "EXIF" in notices[0] and "resized" in notices[1]
    stored = np.zeros((STORED[1], STORED[0]), np.uint8)
    stored[BLOCK] = 255
    np.testing.assert_array_equal(mask, displayed(stored, orientation) > 128)


def test_square_source_takes_the_mask_as_displayed(tmp_path):
    source = tagged_jpeg(tmp_path / "photo.jpg", 6, size=(32, 32))
    _, mask, notices = load(source, stored_mask(tmp_path / "mask.png", size=(32, 32)))
    expected = np.zeros((32, 32), bool)
    expected[BLOCK] = True
    np.testing.assert_array_equal(mask, expected)
    assert notices == []


def test_another_aspect_ratio_is_still_refused(tmp_path):
    source = tagged_jpeg(tmp_path / "photo.jpg", 6)
    Image.new("L", (40, 40), 255).save(tmp_path / "mask.png")
    with pytest.raises(InputError, match="another aspect ratio"):
        imaging.load_source_and_mask(source, tmp_path / "mask.png")


def test_images_given_as_pixels_have_no_orientation(tmp_path):
    source = tagged_jpeg(tmp_path / "photo.jpg", 6)
    assert imaging.exif_orientation(source) == 6
    assert imaging.exif_orientation(Image.open(source)) == 1  # a PIL image is taken as displayed
    assert imaging.exif_orientation("1,2,3,4") == 1


def test_the_pipeline_follows_the_rule(tmp_path):
    pipe = tiny_pipeline()
    source = tagged_jpeg(tmp_path / "photo.jpg", 8)
    with pytest.warns(UserWarning, match="EXIF orientation 8"):
        inputs = pipe.prepare_inputs(source, stored_mask(tmp_path / "mask.png"), None, pipe.resolution)
    np.testing.assert_array_equal(inputs.mask.astype(bool), inputs.source[:, :, 0] > 128)
