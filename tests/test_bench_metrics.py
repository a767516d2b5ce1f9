"""SSIM / PSNR against scikit-image, torchmetrics and the hand formula; the crop rules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mimicbrush.benchmark import metrics
from mimicbrush.benchmark.regions import MIN_BOX_SIDE, grow_box, mask_box, reference_box, tight_box
from mimicbrush.errors import InputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DREAMBOOTH = SHARED / "data" / "dreambooth"


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    if not DREAMBOOTH.is_dir():
        pytest.skip("../shared/data not present")

    def load(name: str) -> np.ndarray:
        return np.asarray(Image.open(DREAMBOOTH / name).convert("RGB").resize((384, 384), Image.BICUBIC))

    first, second = load("dog/00.jpg"), load("dog/01.jpg")
    rng = np.random.default_rng(0)
    noisy = np.clip(first + rng.normal(0, 12, first.shape), 0, 255).astype(np.uint8)
    return {"first": first, "second": second, "noisy": noisy, "other": load("teapot/00.jpg")}


PAIRS = [("first", "second"), ("first", "noisy"), ("first", "other"), ("second", "noisy")]


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    channel_axis = -1 if a.ndim == 3 else None
    return structural_similarity(
        a, b, channel_axis=channel_axis, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )


@pytest.mark.parametrize("pair", PAIRS)
def test_ssim_matches_scikit_image_on_real_photos(photos, pair):
    a, b = photos[pair[0]], photos[pair[1]]
    assert metrics.ssim(a, b) == pytest.approx(skimage_ssim(a, b), abs=1e-9)


def test_ssim_matches_scikit_image_on_gray_and_odd_sized_crops(photos):
    a = photos["first"][13:200, 7:99]
    b = photos["noisy"][13:200, 7:99]
    assert metrics.ssim(a, b) == pytest.approx(skimage_ssim(a, b), abs=1e-9)
    gray_a, gray_b = a.mean(axis=2).astype(np.uint8), b.mean(axis=2).astype(np.uint8)
    assert metrics.ssim(gray_a, gray_b) == pytest.approx(skimage_ssim(gray_a, gray_b), abs=1e-9)


def test_ssim_matches_torchmetrics_away_from_the_border(photos):
    # torchmetrics >= 1.0 averages its map over the border too (reflection-padded windows);
    # on the windows that lie inside the image it is the same quantity as ours.
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torchmetrics.functional.image")
    a, b = photos["first"], photos["second"]

    def tensor(image: np.ndarray):
        return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].double()

    _, full_map = functional.structural_similarity_index_measure(
        tensor(a), tensor(b), data_range=255.0, return_full_image=True
    )
    radius = metrics.SSIM_RADIUS
    assert metrics.ssim(a, b) == pytest.approx(float(full_map[..., radius:-radius, radius:-radius].mean()), abs=1e-9)
    whole = float(functional.structural_similarity_index_measure(tensor(a), tensor(b), data_range=255.0))
    assert abs(whole - metrics.ssim(a, b)) < 0.01  # the border's share on a 384² image


def test_ssim_matches_the_hand_formula(photos):
    """Brute force: an explicit 11×11 Gaussian window at every inside position."""
    a = photos["first"][100:124, 200:220].astype(np.float64)
    b = photos["second"][100:124, 200:220].astype(np.float64)
    offsets = np.arange(-5, 6)
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for channel in range(3):
        for row in range(5, a.shape[0] - 5):
            for column in range(5, a.shape[1] - 5):
                x = a[row - 5 : row + 6, column - 5 : column + 6, channel]
                y = b[row - 5 : row + 6, column - 5 : column + 6, channel]
                mean_x, mean_y = (window * x).sum(), (window * y).sum()
                var_x = (window * (x - mean_x) ** 2).sum()
                var_y = (window * (y - mean_y) ** 2).sum()
                cov = (window * (x - mean_x) * (y - mean_y)).sum()
                values.append(
                    (2 * mean_x * mean_y + c1) * (2 * cov + c2) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
                )
    expected = float(np.mean(values))
    assert metrics.ssim(a.astype(np.uint8), b.astype(np.uint8)) == pytest.approx(expected, abs=1e-9)


def test_ssim_bounds_and_size_check(photos):
    a = photos["first"]
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.ssim(a, 255 - a) < 0.2
    with pytest.raises(ValueError, match="11 pixels"):
        metrics.ssim(a[:10, :40], a[:10, :40])
    with pytest.raises(ValueError, match="shape"):
        metrics.ssim(a, a[:-1])


@pytest.mark.parametrize("pair", PAIRS)
def test_psnr_matches_scikit_image_and_the_formula(photos, pair):
    a, b = photos[pair[0]], photos[pair[1]]
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    assert metrics.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)


def test_psnr_matches_torchmetrics(photos):
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torchmetrics.functional.image")
    a, b = photos["first"], photos["noisy"]
    expected = functional.peak_signal_noise_ratio(
        torch.from_numpy(a.copy()).double(), torch.from_numpy(b.copy()).double(), data_range=255.0
    )
    assert metrics.psnr(a, b) == pytest.approx(float(expected), abs=1e-6)


def test_psnr_of_identical_images_is_capped(photos):
    assert metrics.psnr(photos["first"], photos["first"]) == metrics.PSNR_CAP_DB


def test_tight_box_is_exclusive_at_the_far_side():
    mask = np.zeros((50, 80), bool)
    mask[10:20, 30:45] = True
    assert tight_box(mask) == (30, 10, 45, 20)
    with pytest.raises(InputError, match="empty"):
        tight_box(np.zeros((5, 5), bool))


def test_mask_box_grows_small_boxes_inside_the_image():
    mask = np.zeros((100, 200), bool)
    mask[50:54, 100:104] = True  # 4×4 in the middle: grown symmetrically
    assert mask_box(mask) == (86, 36, 118, 68)
    mask[:] = False
    mask[0:3, 195:200] = True  # at a corner: grown, then shifted inside
    x0, y0, x1, y1 = mask_box(mask)
    assert (x1 - x0, y1 - y0) == (MIN_BOX_SIDE, MIN_BOX_SIDE)
    assert x1 == 200 and y0 == 0
    assert grow_box((0, 0, 5, 5), (20, 10)) == (0, 0, 20, 10)  # never larger than the image
    big = (10, 10, 90, 60)
    assert grow_box(big, (100, 100)) == big


def test_reference_box_from_box_mask_or_whole_image(tmp_path):
    reference = Image.new("RGB", (120, 90))
    assert reference_box(None, reference) == (0, 0, 120, 90)
    assert reference_box((5, 6, 50, 60), reference) == (5, 6, 50, 60)
    with pytest.raises(InputError, match="outside"):
        reference_box((5, 6, 150, 60), reference)
    mask = np.zeros((90, 120), np.uint8)
    mask[20:30, 40:70] = 255
    Image.fromarray(mask).save(tmp_path / "region.png")
    assert reference_box(tmp_path / "region.png", reference) == (40, 20, 70, 30)
