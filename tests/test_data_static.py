"""Still-image sources: SA-1B RLE decoding, label-map PNGs, felzenszwalb fallback."""

import json

import numpy as np
import pytest
from PIL import Image

from mimicbrush.data.config import FelzenszwalbConfig, StaticDatasetConfig
from mimicbrush.data.rle import decode_counts_string, decode_rle
from mimicbrush.data.static import list_static_images, load_segments, read_static_image
from mimicbrush.errors import InputError


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE, written independently of the decoder under test."""
    flat = mask.T.reshape(-1).astype(np.uint8)  # column-major
    runs, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    characters = []
    for index, run in enumerate(runs):
        value = run - runs[index - 2] if index > 2 else run
        while True:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            characters.append(chr(48 + (group | (0x20 if more else 0))))
            if not more:
                break
    return {"size": list(mask.shape), "counts": "".join(characters)}


def random_blobs(shape, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(3):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(3, 15)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return mask


def test_rle_round_trip_including_negative_deltas():
    for seed in range(20):
        mask = random_blobs((37, 53), seed)
        assert np.array_equal(decode_rle(encode_rle(mask)), mask)
    # long runs followed by short ones need negative differences
    assert decode_counts_string(encode_rle(np.eye(40, dtype=bool))["counts"])[:4] == [0, 1, 40, 1]


def test_rle_uncompressed_counts_and_errors():
    mask = np.zeros((3, 4), dtype=bool)
    mask[1:, 2] = True  # column-major: columns 0-1 and row 0 of column 2 are 7 zeros, then 2 ones, 3 zeros
    assert np.array_equal(decode_rle({"size": [3, 4], "counts": [7, 2, 3]}), mask)
    with pytest.raises(InputError, match="cover 9 pixels"):
        decode_rle({"size": [3, 4], "counts": [7, 2]})
    with pytest.raises(InputError):
        decode_rle({"counts": "abc"})


def test_sa1b_json_is_found_and_decoded(tmp_path):
    shape = (48, 64)
    Image.fromarray(np.full((*shape, 3), 120, np.uint8)).save(tmp_path / "sa_1.jpg")
    masks = [random_blobs(shape, seed) for seed in (1, 2)]
    document = {
        "image": {"image_id": 1, "width": shape[1], "height": shape[0], "file_name": "sa_1.jpg"},
        "annotations": [{"id": i, "segmentation": encode_rle(m), "area": int(m.sum())} for i, m in enumerate(masks)],
    }
    (tmp_path / "sa_1.json").write_text(json.dumps(document))
    [item] = list_static_images(StaticDatasetConfig(images=tmp_path), "data.static.datasets[0]")
    assert item.format == "sa1b"
    image = read_static_image(item)
    segments = load_segments(item, image, FelzenszwalbConfig())
    assert len(segments) == 2
    for index, expected in enumerate(masks):
        assert np.array_equal(segments.mask(index), expected)
        assert segments.area_fraction(index) == pytest.approx(expected.mean())


def test_label_map_png_segments(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "segmentation"
    images.mkdir()
    labels.mkdir()
    label_map = np.zeros((30, 40), np.uint8)
    label_map[:, :10], label_map[:, 10:25], label_map[:, 25:] = 1, 2, 7
    label_map[0, 0] = 0  # unlabelled pixel: never a segment
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(images / "a.jpg")
    Image.fromarray(label_map).save(labels / "a.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(images / "b.jpg")  # no label map
    dataset = StaticDatasetConfig(images=images, segments=labels, format="label_map")
    [item] = list_static_images(dataset, "data.static.datasets[0]")
    segments = load_segments(item, read_static_image(item), FelzenszwalbConfig())
    assert len(segments) == 3
    assert [int(segments.mask(i).sum()) for i in range(3)] == [299, 450, 450]
    # auto: a.jpg has its label map, b.jpg falls back to felzenszwalb
    auto = list_static_images(StaticDatasetConfig(images=images, segments=labels), "x")
    assert [item.format for item in auto] == ["label_map", "felzenszwalb"]


def test_palette_label_map_gives_indices_and_size_mismatch_is_an_error(tmp_path):
    label_map = np.array([[0, 3], [5, 5]], np.uint8)
    palette_image = Image.fromarray(label_map, mode="P")
    palette_image.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200, 50, 50, 50, 90, 90, 90] * 10)
    palette_image.save(tmp_path / "p.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "p.jpg")
    [item] = list_static_images(StaticDatasetConfig(images=tmp_path), "x")  # p.png is p.jpg's label map
    assert item.format == "label_map" and item.image.name == "p.jpg"
    segments = load_segments(item, read_static_image(item), FelzenszwalbConfig())
    assert len(segments) == 2 and segments.mask(1).sum() == 2
    with pytest.raises(InputError, match="label map"):
        load_segments(item, np.zeros((3, 3, 3), np.uint8), FelzenszwalbConfig())


def test_felzenszwalb_fallback_finds_regions(tmp_path):
    image = np.zeros((120, 160, 3), np.uint8)
    image[:, :80] = (200, 30, 30)
    image[:, 80:] = (30, 30, 200)
    image[40:80, 60:100] = (30, 200, 30)
    Image.fromarray(image).save(tmp_path / "plain.png")
    [item] = list_static_images(StaticDatasetConfig(images=tmp_path), "x")
    assert item.format == "felzenszwalb" and item.segments is None
    segments = load_segments(item, read_static_image(item), FelzenszwalbConfig(max_side=64, min_size=5))
    assert len(segments) >= 3
    assert sum(segments.area_fraction(i) for i in range(len(segments))) == pytest.approx(1.0)
    green = next(i for i in range(len(segments)) if segments.mask(i)[60, 80])
    assert segments.mask(green)[45:75, 65:95].all()
