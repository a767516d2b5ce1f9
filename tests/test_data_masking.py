"""Masks: keypoint grid probabilities, grid sizes, never empty or full; boxes; segments."""

import numpy as np
import pytest

from mimicbrush.data.config import MaskingConfig
from mimicbrush.data.keypoints import match_keypoints
from mimicbrush.data.masking import box_mask, grid_bounds, grid_mask, segment_mask
from mimicbrush.data.segments import LabelMapSegments

SIZE = 60


def cell_states(result):
    """Masked flag of every grid cell, read at the cell centres."""
    bounds = grid_bounds(SIZE, len(result.matched_cells))
    centres = (bounds[:-1] + bounds[1:]) // 2
    return result.mask[np.ix_(centres, centres)].astype(bool)


def test_cells_with_matches_are_masked_more_often():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, SIZE, (6, 2))
    matched_hits = matched_total = other_hits = other_total = 0
    sizes = set()
    for _ in range(3000):
        result = grid_mask(SIZE, points, MaskingConfig(), rng)
        cells = cell_states(result)
        sizes.add(len(cells))
        assert cells.shape == result.matched_cells.shape
        matched_hits += cells[result.matched_cells].sum()
        matched_total += result.matched_cells.sum()
        other_hits += cells[~result.matched_cells].sum()
        other_total += (~result.matched_cells).sum()
        assert 0 < result.mask.sum() < result.mask.size
        assert set(np.unique(result.mask)) <= {0, 1}
    assert sizes == set(range(3, 11))
    assert matched_hits / matched_total == pytest.approx(0.75, abs=0.02)
    assert other_hits / other_total == pytest.approx(0.5, abs=0.02)


def test_matched_cells_are_the_cells_holding_points():
    config = MaskingConfig(grid_sizes=(4, 4))
    result = grid_mask(SIZE, np.array([[1.0, 1.0], [59.0, 31.0]]), config, np.random.default_rng(0))
    expected = np.zeros((4, 4), bool)
    expected[0, 0] = expected[2, 3] = True
    assert np.array_equal(result.matched_cells, expected)


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_degenerate_probabilities_still_give_partial_masks(probability):
    config = MaskingConfig(grid_sizes=(2, 3), p_matched=probability, p_unmatched=probability)
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = grid_mask(SIZE, np.zeros((0, 2)), config, rng).mask
        assert 0 < mask.sum() < mask.size


def test_box_masks_cover_the_configured_fraction():
    config = MaskingConfig(box_area=(0.1, 0.3))
    rng = np.random.default_rng(0)
    for _ in range(200):
        result = box_mask(64, config, rng)
        assert result.kind == "box"
        assert 0.07 <= result.mask.mean() <= 0.33  # rounding and clipping to the canvas


def test_segment_masks_respect_the_area_band_or_give_up():
    labels = np.ones((100, 100), np.int32)
    labels[:30, :30] = 2  # 9 % of the image
    labels[50:52, 50:52] = 3  # a speck
    segments = LabelMapSegments(labels)
    identity = np.eye(3)
    rng = np.random.default_rng(0)
    result = segment_mask(segments, identity, 100, MaskingConfig(segment_area=(0.05, 0.5)), rng)
    assert result.kind == "segment" and result.mask.sum() == 900
    assert segment_mask(segments, identity, 100, MaskingConfig(segment_area=(0.2, 0.5)), rng) is None


def test_keypoints_match_a_shifted_texture():
    rng = np.random.default_rng(0)
    texture = (rng.random((24, 24)) * 255).astype(np.uint8)
    big = np.kron(texture, np.ones((8, 8), np.uint8))
    image = np.dstack([big] * 3)[:160, :160]
    shifted = np.roll(image, (7, 11), axis=(0, 1))
    for method in ("sift", "orb"):
        matches = match_keypoints(image, shifted, method=method, max_keypoints=300)
        assert len(matches) >= 10
        offsets = matches.reference - matches.source
        inside = (matches.source[:, 0] < 140) & (matches.source[:, 1] < 140)
        assert np.median(offsets[inside], axis=0) == pytest.approx([11, 7], abs=0.5)
