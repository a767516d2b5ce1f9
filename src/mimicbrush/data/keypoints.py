"""Keypoint matches between the augmented source and reference (SIFT or ORB, Lowe ratio test)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Matches:
    source: np.ndarray  # N×2 float32, x y in source pixels
    reference: np.ndarray  # N×2 float32, x y in reference pixels

    def __len__(self) -> int:
        return len(self.source)


def match_keypoints(source: np.ndarray, reference: np.ndarray, *, method: str = "sift",
                    max_keypoints: int = 1000, ratio: float = 0.75) -> Matches:
    """Matches whose best descriptor distance is below `ratio` times the second best."""
    if method == "sift":
        detector = cv2.SIFT_create(nfeatures=max_keypoints)
        norm = cv2.NORM_L2
    elif method == "orb":
        detector = cv2.ORB_create(nfeatures=max_keypoints)
        norm = cv2.NORM_HAMMING
    else:
        raise ValueError(f"unknown keypoint method {method!r}")
    source_keypoints, source_descriptors = detector.detectAndCompute(_grey(source), None)
    reference_keypoints, reference_descriptors = detector.detectAndCompute(_grey(reference), None)
    empty = np.zeros((0, 2), dtype=np.float32)
    if source_descriptors is None or reference_descriptors is None or len(reference_keypoints) < 2:
        return Matches(empty, empty.copy())
    pairs = cv2.BFMatcher(norm).knnMatch(source_descriptors, reference_descriptors, k=2)
    good = [pair[0] for pair in pairs if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance]
    if not good:
        return Matches(empty, empty.copy())
    source_points = np.float32([source_keypoints[match.queryIdx].pt for match in good])
    reference_points = np.float32([reference_keypoints[match.trainIdx].pt for match in good])
    return Matches(source_points, reference_points)


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
