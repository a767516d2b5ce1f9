"""Hostile image and mask inputs: each gets a specific error or a documented behaviour
(docs/reliability.md), never a traceback; property-based checks of the loaders with hypothesis."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from fuzz.hostile_images import SIZE, hostile_files, seed_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from mimicbrush import imaging
from mimicbrush.cli import main
from mimicbrush.errors import InputError

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PORTRAIT = (SIZE[1], SIZE[0])

# file name in hostile_files() → the InputError it must raise (a fragment of the message)
REFUSED = {
    "truncated.png": "is truncated or corrupt",
    "truncated.jpg": "is truncated or corrupt",
    "scrambled.png": "is truncated or corrupt",
    "zero-byte.png": "is an empty file",
    "text.png": "is not a PNG, JPEG",
    "document.pdf": "is not a PNG, JPEG",
    "drawing.svg": "is not a PNG, JPEG",
    "postscript.eps": "is not a PNG, JPEG",  # Pillow's EPS plugin would run Ghostscript
    "bomb-100000.png": "decompression bombs",
    "bomb-9000.png": "decompression bombs",
    "strip-1x20000.png": "longest side",
    "zero-width.png": "cannot be read",
    "gif-broken-second-frame.gif": "is truncated or corrupt",
}
# → (size after loading, the notice it must give, or None)
LOADED = {
    "animated.gif": (SIZE, "several frames"),
    "gray16.png": (SIZE, None),
    "rgb16.png": (SIZE, None),
    "cmyk.jpg": (SIZE, None),
    "palette.png": (SIZE, None),
    "palette-transparent.png": (SIZE, "transparent pixels: composited over white"),
    "la.png": (SIZE, "transparent pixels: composited over white"),
    "rgba.png": (SIZE, "transparent pixels: composited over white"),
    "exif-rotated.jpg": (PORTRAIT, None),
}


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    for name, contents in hostile_files().items():
        (folder / name).write_bytes(contents)
    return folder


def notices(function, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args)
    return result, [str(warning.message) for warning in caught]


def test_the_catalogue_is_covered():
    assert set(REFUSED) | set(LOADED) == set(hostile_files())


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_hostile_file_is_refused_with_a_specific_message(hostile_dir, name):
    for load in (lambda path: imaging.load_image(path, "source image"), lambda path: imaging.load_mask(str(path), SIZE)):
        with pytest.raises(InputError, match=REFUSED[name]) as refused:
            load(hostile_dir / name)
        assert name in str(refused.value)  # the message names the file


@pytest.mark.parametrize("name", sorted(LOADED))
def test_unusual_file_loads_as_documented(hostile_dir, name):
    size, notice = LOADED[name]
    image, given_notices = notices(imaging.load_image, hostile_dir / name)
    assert image.mode == "RGB" and image.size == size
    if notice:
        assert any(notice in text for text in given_notices), given_notices
    else:
        assert given_notices == []


@pytest.mark.filterwarnings("ignore:.*(several frames|transparent pixels)")
def test_pixel_values_of_converted_modes(hostile_dir):
    gray16 = np.asarray(imaging.load_image(hostile_dir / "gray16.png"))
    assert gray16[0, 0].tolist() == [0, 0, 0] and gray16[-1, -1].tolist() == [255, 255, 255]  # 0..65535 → 0..255
    red = np.asarray(imaging.load_image(hostile_dir / "cmyk.jpg")).reshape(-1, 3).mean(axis=0)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    gif = np.asarray(imaging.load_image(hostile_dir / "animated.gif"))
    assert (gif == [255, 0, 0]).all()  # the first frame
    rgba = np.asarray(imaging.load_image(hostile_dir / "rgba.png"))
    assert (rgba[:, : SIZE[0] // 2] == 255).all()  # transparent: white, the colour the edit pads with
    assert (rgba[:, SIZE[0] // 2 :] == [255, 0, 0]).all()  # opaque: kept


def test_exif_rotation_is_honoured_for_the_pixels_too(tmp_path):
    stored = np.zeros((10, 30, 3), np.uint8)
    stored[:, :5] = 255  # white band on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: the band ends up on top
    Image.fromarray(stored).save(tmp_path / "rotated.png", exif=exif)
    shown = np.asarray(imaging.load_image(tmp_path / "rotated.png"))
    assert shown.shape == (30, 10, 3)
    assert shown[:4].min() == 255 and shown[6:].max() == 0


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        imaging.load_image(tmp_path)
    with pytest.raises(InputError, match="not found"):
        imaging.load_mask(str(tmp_path / "missing.png"), SIZE)


# --- masks ---------------------------------------------------------------------------------


def test_mask_with_the_sources_aspect_is_resized_with_a_notice():
    half = np.zeros((8, 12), np.uint8)
    half[2:6, 3:9] = 255
    mask, given_notices = notices(imaging.load_mask, half, SIZE)
    assert mask.size == SIZE and imaging.binary_mask(mask).sum() == 8 * 12
    assert any("resized to the source" in text for text in given_notices)


def test_mask_with_another_aspect_is_refused():
    with pytest.raises(InputError, match="another aspect ratio"):
        imaging.load_mask(np.full(PORTRAIT[::-1], 255, np.uint8), SIZE)  # a portrait mask, landscape source


def test_rounding_of_a_downscale_still_counts_as_the_same_aspect():
    assert imaging.same_aspect((333, 250), (1000, 750)) and imaging.same_aspect((334, 250), (1000, 750))
    assert not imaging.same_aspect((340, 250), (1000, 750))


def test_empty_mask_is_refused_and_full_mask_is_allowed_with_a_notice():
    with pytest.raises(InputError, match="empty"):
        imaging.load_mask(np.full(SIZE[::-1], 128, np.uint8), SIZE)  # 128 is not above the threshold
    mask, given_notices = notices(imaging.load_mask, np.full(SIZE[::-1], 255, np.uint8), SIZE)
    assert imaging.binary_mask(mask).all()
    assert any("covers the whole source" in text for text in given_notices)


def test_soft_grayscale_mask_is_thresholded_above_128(tmp_path):
    ramp = np.tile(np.arange(SIZE[0], dtype=np.uint8) * 11, (SIZE[1], 1))  # 0, 11, …, 253: soft edge
    Image.fromarray(ramp).save(tmp_path / "soft.png")
    mask = imaging.load_mask(str(tmp_path / "soft.png"), SIZE)
    assert np.array_equal(np.asarray(mask), ramp)  # soft values kept for the caller
    assert np.array_equal(imaging.binary_mask(mask)[0], (ramp[0] > 128).astype(np.uint8))


@pytest.mark.parametrize(
    "array,edited",
    [
        (np.eye(4, 6, dtype=bool), 4),
        (np.eye(4, 6, dtype=np.float32), 4),  # floats span 0..1
        (np.full((4, 6), 0.5, np.float64), 0),  # 0.5 → 128: not above the threshold
        (np.eye(4, 6, dtype=np.uint8) * 200, 4),
    ],
)
def test_mask_arrays_of_each_dtype(array, edited):
    if edited == 0:
        with pytest.raises(InputError, match="empty"):
            imaging.load_mask(array, (6, 4))
    else:
        assert imaging.binary_mask(imaging.load_mask(array, (6, 4))).sum() == edited


def test_mask_arrays_of_other_dtypes_are_refused():
    with pytest.raises(InputError, match="bool, uint8"):
        imaging.load_mask(np.eye(4, 6, dtype=np.int64), (6, 4))


def test_transparent_rgba_and_la_masks_use_alpha_and_16_bit_masks_scale(hostile_dir):
    for name in ("rgba.png", "la.png"):
        mask = imaging.binary_mask(imaging.load_mask(str(hostile_dir / name), SIZE))
        assert mask[:, SIZE[0] // 2 :].all() and not mask[:, : SIZE[0] // 2].any()
    ramp = imaging.binary_mask(imaging.load_mask(str(hostile_dir / "gray16.png"), SIZE))
    assert abs(ramp.mean() - 0.5) < 0.01  # a 0..65535 ramp: half of it above 128 once scaled to 8 bits


@pytest.mark.parametrize("box", ["inf,0,4,4", "nan,0,4,4", "1e400,0,4,4", " , , , "])
def test_boxes_that_are_not_numbers_are_refused(box):
    with pytest.raises(InputError, match="a box must be"):
        imaging.load_mask(box, SIZE)


# --- the command line ----------------------------------------------------------------------


def test_edit_refuses_hostile_files_in_one_line(hostile_dir, tmp_path, capsys):
    good = hostile_dir / "palette.png"
    for name, fragment in REFUSED.items():
        for role in ("source", "--mask", "--reference"):
            files = {"source": good, "--mask": "2,2,8,8", "--reference": good, role: hostile_dir / name}
            argv = ["edit", str(files["source"]), "--mask", str(files["--mask"]), "--reference",
                    str(files["--reference"]), "-o", str(tmp_path / "out.png"), "--model", str(tmp_path)]
            assert main(argv) == 2, (name, role)
            error = capsys.readouterr().err
            assert error.count("\n") == 1 and fragment in error, (name, role, error)
    assert not (tmp_path / "out.png").exists()


def test_edit_subprocess_prints_no_traceback(hostile_dir, tmp_path):
    argv = [sys.executable, "-m", "mimicbrush", "edit", str(hostile_dir / "truncated.jpg"), "--mask", "1,1,4,4",
            "--reference", str(hostile_dir / "bomb-100000.png"), "-o", str(tmp_path / "out.png"), "--model", "x"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: source image cannot be read") and "Traceback" not in result.stderr


# --- properties ----------------------------------------------------------------------------


def mutations():
    """A seed file (valid or hostile) with up to 8 byte edits, then possibly cut short."""
    seeds = sorted(seed_corpus().items())
    edit = st.tuples(st.integers(0, 2**16), st.integers(0, 255), st.sampled_from(["set", "insert", "delete"]))
    return st.tuples(st.sampled_from(seeds), st.lists(edit, max_size=8), st.one_of(st.none(), st.integers(0, 4096)))


def mutate(contents: bytes, edits, cut) -> bytes:
    data = bytearray(contents)
    for position, value, kind in edits:
        if not data:
            break
        position %= len(data)
        if kind == "set":
            data[position] = value
        elif kind == "insert":
            data.insert(position, value)
        else:
            del data[position]
    return bytes(data[:cut] if cut is not None else data)


@PROPERTY_SETTINGS
@given(mutation=mutations(), mask_size=st.tuples(st.integers(1, 64), st.integers(1, 64)))
def test_mutated_files_load_or_raise_input_error(tmp_path_factory, mutation, mask_size):
    (_, contents), edits, cut = mutation
    path = tmp_path_factory.getbasetemp() / "mutated"
    path.write_bytes(mutate(contents, edits, cut))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = imaging.load_image(path)
            assert image.mode == "RGB" and max(image.size) <= imaging.MAX_IMAGE_SIDE
        except InputError:
            pass
        try:
            mask = imaging.load_mask(str(path), mask_size)
            assert mask.mode == "L" and mask.size == mask_size and mask.getextrema()[1] > imaging.MASK_THRESHOLD
        except InputError:
            pass


PIL_MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
             "I", "I;16", "I;16B", "F"]


@PROPERTY_SETTINGS
@given(mode=st.sampled_from(PIL_MODES), width=st.integers(0, 40), height=st.integers(0, 40), seed=st.integers(0, 9))
def test_any_pil_mode_becomes_rgb_of_the_same_size(mode, width, height, seed):
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise).convert(mode) if width and height else Image.new(mode, (width, height))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if width == 0 or height == 0:
            with pytest.raises(InputError, match="no pixels"):
                imaging.load_image(image)
            return
        rgb = imaging.load_image(image)
        assert rgb.mode == "RGB" and rgb.size == (width, height)
        luminance = imaging.mask_to_luminance(image)
        assert luminance.mode == "L" and luminance.size == (width, height)


@PROPERTY_SETTINGS
@given(
    array=hnp.arrays(
        dtype=st.sampled_from([np.bool_, np.uint8, np.float32, np.float64, np.int16, np.uint16]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=12),
    ),
    size=st.tuples(st.integers(1, 24), st.integers(1, 24)),
)
def test_any_mask_array_gives_a_mask_or_input_error(array, size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mask = imaging.load_mask(array, size)
        except InputError:
            return
    assert mask.mode == "L" and mask.size == size
    assert (np.asarray(mask) > imaging.MASK_THRESHOLD).any()


@PROPERTY_SETTINGS
@given(text=st.text(alphabet="0123456789-.,einfa +", max_size=24), size=st.tuples(st.integers(1, 50), st.integers(1, 50)))
def test_any_box_text_gives_a_box_inside_the_image_or_input_error(text, size):
    try:
        x0, y0, x1, y1 = imaging.parse_box(text, size)
    except InputError:
        return
    assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
