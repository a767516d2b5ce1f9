"""Pixel metrics against ground truth: SSIM and PSNR on 8-bit RGB images.

SSIM is Wang et al. (2004): an 11-tap Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
data range 255, population (not sample) covariances, computed per RGB channel; the mean is taken
over all channels and over the pixels whose window lies inside the image (5-pixel border left
out). That is scikit-image's `structural_similarity(..., channel_axis=-1, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255)` and torchmetrics' default SSIM.
PSNR is 10·log10(255² / MSE) with the MSE over all pixels and channels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11 taps: scikit-image's int(3.5 * sigma + 0.5) truncation, torchmetrics' kernel 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0
# Identical images would score +inf; a cap keeps means finite (any real edit stays far below).
PSNR_CAP_DB = 100.0


def _as_float_images(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if first.shape != second.shape:
        raise ValueError(f"images differ in shape: {first.shape} vs {second.shape}")
    return first.astype(np.float64), second.astype(np.float64)


def _gaussian_window() -> np.ndarray:
    offsets = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    weights = np.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return weights / weights.sum()


def ssim(first: np.ndarray, second: np.ndarray) -> float:
    """Mean SSIM of two H×W×3 (or H×W) uint8 images, both sides at least 11 pixels."""
    x, y = _as_float_images(first, second)
    if min(x.shape[:2]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * SSIM_RADIUS + 1} pixels a side, got {x.shape[:2]}")
    window = _gaussian_window()

    def local_mean(image: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(image, cv2.CV_64F, window, window, borderType=cv2.BORDER_REFLECT)

    mean_x, mean_y = local_mean(x), local_mean(y)
    variance_x = local_mean(x * x) - mean_x**2
    variance_y = local_mean(y * y) - mean_y**2
    covariance = local_mean(x * y) - mean_x * mean_y
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (variance_x + variance_y + c2)
    )
    inside = ssim_map[SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS]
    return float(inside.mean())


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of the same shape, capped at PSNR_CAP_DB."""
    x, y = _as_float_images(first, second)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0:
        return PSNR_CAP_DB
    return min(10.0 * math.log10(DATA_RANGE**2 / mse), PSNR_CAP_DB)


def box_scores(edit: np.ndarray, other: np.ndarray, box: tuple[int, int, int, int]) -> dict[str, float]:
    """PSNR and SSIM of two H×W×3 uint8 images inside `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    edit_box, other_box = edit[y0:y1, x0:x1], other[y0:y1, x0:x1]
    return {"psnr_box": psnr(edit_box, other_box), "ssim_box": ssim(edit_box, other_box)}
