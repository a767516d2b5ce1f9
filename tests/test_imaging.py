import numpy as np
import pytest
from PIL import Image

from mimicbrush import imaging
from mimicbrush.errors import InputError


@pytest.mark.parametrize(
    "width,height,offset",
    [(320, 240, (0, 40)), (240, 320, (40, 0)), (256, 256, (0, 0)), (5, 2, (0, 1)), (2, 5, (1, 0))],
)
def test_square_padding_centres_the_short_side(width, height, offset):
    padding = imaging.SquarePadding(width, height)
    assert padding.side == max(width, height)
    assert padding.offset == offset
    image = np.arange(width * height, dtype=np.uint8).reshape(height, width)
    square = imaging.pad_to_square(image, fill=7)
    assert square.shape == (padding.side, padding.side)
    np.testing.assert_array_equal(padding.crop(square), image)
    assert (square == 7).sum() == padding.side**2 - width * height or (image == 7).any()


def test_collage_blacks_out_only_the_mask():
    source = np.full((4, 4, 3), 200, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 2:4] = 1
    collage = imaging.make_collage(source, mask)
    assert (collage[1:3, 2:4] == 0).all()
    assert (collage[mask == 0] == 200).all()


def test_box_mask_is_pil_crop_convention():
    mask = imaging.load_mask("2,1,5,3", (8, 6))
    array = imaging.binary_mask(mask)
    assert array.sum() == 3 * 2
    assert array[1, 2] == 1 and array[2, 4] == 1 and array[3, 4] == 0 and array[1, 5] == 0


@pytest.mark.parametrize("box", ["1,2,3", "a,b,c,d", "5,1,2,3", "0,0,9,3"])
def test_bad_boxes_are_refused(box):
    with pytest.raises(InputError):
        imaging.load_mask(box, (8, 6))


def test_empty_mask_is_refused():
    with pytest.raises(InputError, match="empty"):
        imaging.load_mask(np.zeros((6, 8), np.uint8), (8, 6))


def test_mask_of_another_size_is_resized_with_a_notice():
    small = np.zeros((3, 4), np.uint8)
    small[1, 1] = 255
    with pytest.warns(UserWarning, match="resized"):
        mask = imaging.load_mask(small, (8, 6))
    assert mask.size == (8, 6) and imaging.binary_mask(mask).sum() == 4


def test_rgba_mask_uses_its_alpha():
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 3] = 0
    rgba[2:4, 2:4, 3] = 255  # painted region, colour black
    mask = imaging.load_mask(Image.fromarray(rgba, "RGBA"), (8, 6))
    assert imaging.binary_mask(mask).sum() == 4


def test_model_mask_is_binary_and_threshold_is_half():
    padded = np.zeros((64, 64), np.uint8)
    padded[16:48, 16:48] = 1
    model_mask = imaging.to_model_mask(padded, 32)
    assert set(np.unique(model_mask)) == {0.0, 1.0}
    assert model_mask.shape == (1, 1, 32, 32) and model_mask.sum() == 16 * 16


def test_paste_back_keeps_the_source_away_from_the_mask():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    mask = np.zeros((30, 50), np.uint8)
    mask[5:25, 10:30] = 1
    model_image = np.zeros((64, 64, 3), np.uint8)
    output = imaging.paste_back(model_image, source, mask)
    assert output.shape == source.shape
    np.testing.assert_array_equal(output[:, 41:], source[:, 41:])  # 10 blur passes reach 10 px
    assert (output[14:16, 19:21] == 0).all()  # the mask's centre is the model's pixels


def test_rgba_source_is_composited_not_dropped():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    rgb = imaging.to_rgb(Image.fromarray(rgba, "RGBA"))
    assert np.asarray(rgb).tolist() == [[[255, 255, 255]] * 2] * 2


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        imaging.load_image(tmp_path / "nope.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        imaging.load_image(empty)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot be read"):
        imaging.load_image(junk)


def test_save_image_is_atomic_refuses_overwrite_and_keeps_metadata(tmp_path):
    image = Image.new("RGB", (4, 4), (1, 2, 3))
    path = imaging.save_image(image, tmp_path / "out.png", metadata={"seed": 7})
    assert Image.open(path).text["seed"] == "7"
    with pytest.raises(InputError, match="exists"):
        imaging.save_image(image, path)
    imaging.save_image(Image.new("RGB", (4, 4)), path, force=True)
    assert np.asarray(Image.open(path)).max() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temp files left
