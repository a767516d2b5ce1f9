"""Score one edit: every metric, in each scope, as one row of numbers.

Scopes: `image` is the whole image (the paper's SSIM/PSNR/LPIPS/CLIP-T); `mask box` is the
source mask's bounding box (grown to at least 32 px a side), cut from the edit and the ground
truth alike, so the unedited surroundings cannot inflate the score; `region` is the paper's
DINO-I/CLIP-I: the reference's annotated region against the edit's mask box.
Scores are always against the case's true reference and ground truth, whatever reference the
edit was made with, so the ablations show up as a drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import imaging
from ..errors import InputError
from . import metrics
from .features import ClipEmbedder, DinoEmbedder, cosine_percent
from .perceptual import Lpips, LpipsUnavailable
from .regions import mask_box, reference_box
from .tracks import Case

SCOPES = {
    "image": "whole image, as the paper",
    "mask box": "inside the source mask's bounding box, grown to at least 32 px a side (stricter)",
    "region": "the reference's annotated region vs the edit's mask box, as the paper",
}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    scope: str
    digits: int
    higher_is_better: bool


# Table order: the paper's definitions first, then the stricter mask-box versions.
METRICS = (
    Metric("ssim_image", "SSIM", "image", 3, True),
    Metric("psnr_image", "PSNR", "image", 2, True),
    Metric("lpips_image", "LPIPS", "image", 3, False),
    Metric("dino_i", "DINO-I", "region", 2, True),
    Metric("clip_i", "CLIP-I", "region", 2, True),
    Metric("clip_t_image", "CLIP-T", "image", 2, True),
    Metric("ssim_box", "SSIM box", "mask box", 3, True),
    Metric("psnr_box", "PSNR box", "mask box", 2, True),
    Metric("lpips_box", "LPIPS box", "mask box", 3, False),
    Metric("clip_t_box", "CLIP-T box", "mask box", 2, True),
)
METRIC_KEYS = tuple(metric.key for metric in METRICS)


class CaseScorer:
    """Holds the (optional) networks; SSIM and PSNR need none and always run."""

    def __init__(
        self,
        dino: DinoEmbedder | None = None,
        clip: ClipEmbedder | None = None,
        lpips: Lpips | None = None,
        skipped: dict[str, str] | None = None,
    ):
        self.dino = dino
        self.clip = clip
        self.lpips = lpips
        self.skipped = dict(skipped or {})

    @classmethod
    def load(
        cls,
        dino_model: str | None,
        clip_model: str | None,
        lpips_net: str | None,
        device: str = "cpu",
    ) -> CaseScorer:
        """None for a model skips its metrics. A named DINO/CLIP model that cannot be loaded is an
        error (WeightsError); LPIPS that cannot run is recorded as skipped."""
        skipped = {}
        dino = DinoEmbedder(dino_model, device) if dino_model else None
        if dino is None:
            skipped["dino_i"] = "no DINOv2 model (--dino-model none)"
        clip = ClipEmbedder(clip_model, device) if clip_model else None
        if clip is None:
            skipped["clip_i"] = skipped["clip_t"] = "no CLIP model (--clip-model none)"
        lpips = None
        if lpips_net:
            try:
                lpips = Lpips(lpips_net, device)
            except LpipsUnavailable as reason:
                skipped["lpips"] = f"LPIPS skipped: {reason}"
        else:
            skipped["lpips"] = "LPIPS skipped (--lpips-net none)"
        return cls(dino, clip, lpips, skipped)

    def describe(self) -> dict:
        return {
            "dino_model": self.dino.name if self.dino else None,
            "clip_model": self.clip.name if self.clip else None,
            "lpips_net": self.lpips.net if self.lpips else None,
            "skipped": self.skipped,
        }

    def score(self, case: Case, edit: Image.Image) -> dict[str, float | None]:
        """Every metric of METRIC_KEYS (None where it does not apply), plus `mask_fraction`."""
        source = imaging.load_image(case.source_path, "source")
        if edit.size != source.size:
            raise InputError(f"edit of {case.name!r} is {edit.size}, its source {source.size}")
        mask = imaging.binary_mask(imaging.load_mask(case.mask_path, source.size)).astype(bool)
        box = mask_box(mask)
        edit = edit.convert("RGB")
        scores: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
        scores["mask_fraction"] = float(mask.mean())
        if case.gt_path is not None:
            scores.update(self._ground_truth_scores(case, np.asarray(edit), box))
        generated_region = edit.crop(box)
        reference = imaging.load_image(case.reference_path, "reference")
        reference_region = reference.crop(reference_box(case.reference_region, reference))
        if self.dino is not None:
            embeddings = self.dino.embed([reference_region, generated_region])
            scores["dino_i"] = cosine_percent(embeddings[0], embeddings[1])
        if self.clip is not None:
            images = self.clip.embed_images([reference_region, generated_region, edit])
            scores["clip_i"] = cosine_percent(images[0], images[1])
            if case.prompt:
                text = self.clip.embed_texts([case.prompt])[0]
                scores["clip_t_image"] = max(cosine_percent(images[2], text), 0.0)
                scores["clip_t_box"] = max(cosine_percent(images[1], text), 0.0)
        return scores

    def _ground_truth_scores(self, case: Case, edit: np.ndarray, box) -> dict[str, float]:
        truth = np.asarray(imaging.load_image(case.gt_path, "ground truth"))
        if truth.shape != edit.shape:
            raise InputError(f"ground truth of {case.name!r} is {truth.shape[1::-1]}, its edit {edit.shape[1::-1]}")
        x0, y0, x1, y1 = box
        edit_box, truth_box = edit[y0:y1, x0:x1], truth[y0:y1, x0:x1]
        scores = {
            "ssim_image": metrics.ssim(edit, truth),
            "ssim_box": metrics.ssim(edit_box, truth_box),
            "psnr_image": metrics.psnr(edit, truth),
            "psnr_box": metrics.psnr(edit_box, truth_box),
        }
        if self.lpips is not None:
            scores["lpips_image"] = self.lpips.distance(edit, truth)
            scores["lpips_box"] = self.lpips.distance(edit_box, truth_box)
        return scores
