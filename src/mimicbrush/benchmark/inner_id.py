"""Build the part-composition inner-ID track (`PartComp/WithinInstance/`) from DreamBooth photos.

Each case pairs two distinct photos of one subject: the source (masked over part of the
subject, see subject_masks.py) and the reference (another photo of the same subject); the
ground truth is the unmasked source. Each case also names a mismatched reference (a case of
another subject) for the wrong-reference ablation. Everything is a function of `--seed`.
"""

from __future__ import annotations

import itertools
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .. import __version__, imaging
from ..errors import InputError
from . import subject_masks
from .regions import tight_box
from .tracks import CASE_FILE_SUFFIXES, TRACK_FILE, Track, TrackKind, load_track, region_to_json, write_track_file

KIND = TrackKind("part_composition", "inner_id")
PAPER_CASE_COUNT = 30
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
PART_FRACTION_OF_SUBJECT = (0.15, 0.40)  # default masks: this share of the subject's area
SMALL_FRACTION_OF_IMAGE = (0.01, 0.04)  # --small-masks: this share of the whole image
SMALL_MASK_LIMIT = 0.05
SMALL_MASK_ATTEMPTS = 8
PNG_COMPRESS_LEVEL = 3  # 3× faster than PIL's default 6 for about 8% more bytes

PROCEDURE = {
    "pairs": "per subject (a folder of photos), the unordered pairs of distinct photos are shuffled "
    "and the first pairs_per_subject taken; each pair's order (which photo is the source) is a coin flip",
    "subject_region": "cv2.grabCut on a copy with long side 160 px, 4 iterations, initialised with the "
    "central box leaving 10% margins; definite+probable foreground, 3x3 open and close, largest "
    "connected component, holes filled, resized back bilinear > 0.5; if that covers <3% or >90% of "
    "the photo: the ellipse inscribed in the initial box. cv2.setRNGSeed(seed) before each call",
    "mask": "one shape (ellipse, rotated box or smooth blob, equally likely) centred on a subject "
    "pixel drawn with probability proportional to its distance to the subject's edge, scaled until "
    "its intersection with the subject region covers the target area within 10%; the mask is that "
    "intersection. Target: a U(0.15, 0.40) share of the subject's area, or with small_masks a "
    "U(0.01, 0.04) share of the image (capped at half the subject), redrawn until under 5% of the image",
    "crossing_mask": "with crossing_masks instead: an ellipse or rotated box (equally likely) centred on a "
    "pixel of the subject region's edge, scaled until it covers a U(0.15, 0.40) share of the subject's area "
    "within 10%, kept whole (not cut to the subject); redrawn until 20-80% of it lies on the subject",
    "reference_region": "the tight box of the reference photo's subject region (same procedure)",
    "mismatched_reference": "a case of another subject and, where there is one, another class, drawn uniformly",
    "prompt": "'a photo of a {class}' with the class from prompts_and_classes.txt (else the folder name)",
    "random_streams": "numpy default_rng([seed, 0]) pairs, [seed, 1] mismatched references, "
    "[seed, 2, case index] masks",
}


@dataclass(frozen=True)
class InnerIdOptions:
    seed: int = 0
    pairs_per_subject: int = 2
    small_masks: bool = False
    crossing_masks: bool = False  # ellipses and boxes over the subject's edge, not cut to it


def list_subjects(dreambooth_dir: Path) -> dict[str, list[Path]]:
    """Subject folder name -> its photos (sorted), for folders holding at least two photos."""
    if not dreambooth_dir.is_dir():
        raise InputError(f"DreamBooth folder not found: {dreambooth_dir}")
    subjects = {}
    for folder in sorted(path for path in dreambooth_dir.iterdir() if path.is_dir()):
        photos = sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)
        if len(photos) >= 2:
            subjects[folder.name] = photos
    if len(subjects) < 2:
        raise InputError(
            f"{dreambooth_dir} needs at least two subject folders with two photos each "
            "(one folder per subject, as the DreamBooth dataset)"
        )
    return subjects


def read_subject_classes(dreambooth_dir: Path) -> dict[str, str]:
    """Subject -> class from DreamBooth's `prompts_and_classes.txt` (`subject_name,class` lines)."""
    table = dreambooth_dir / "prompts_and_classes.txt"
    if not table.is_file():
        return {}
    classes = {}
    for line in table.read_text(errors="replace").splitlines():
        match = re.fullmatch(r"\s*([\w-]+)\s*,\s*([\w ][\w -]*?)\s*", line)
        if match and match.group(1) != "subject_name":
            classes[match.group(1)] = match.group(2)
    return classes


def choose_pairs(
    subjects: dict[str, list[Path]], pairs_per_subject: int, rng: np.random.Generator
) -> list[tuple[str, Path, Path]]:
    """(subject, source photo, reference photo) triples; no photo pair is used twice."""
    chosen = []
    for subject, photos in subjects.items():
        pairs = list(itertools.combinations(photos, 2))
        for index in rng.permutation(len(pairs))[:pairs_per_subject]:
            first, second = pairs[index]
            chosen.append((subject, second, first) if rng.random() < 0.5 else (subject, first, second))
    return chosen


def build_inner_id_track(
    dreambooth_dir: str | Path,
    root: str | Path,
    options: InnerIdOptions = InnerIdOptions(),
    *,
    force: bool = False,
    progress: bool = True,
) -> Track:
    """Write `root/PartComp/WithinInstance/` and return the loaded track."""
    dreambooth_dir = Path(dreambooth_dir)
    if options.pairs_per_subject < 1:
        raise InputError("--pairs-per-subject must be at least 1")
    if options.small_masks and options.crossing_masks:
        raise InputError("--small-masks and --crossing-masks are two kinds of mask: give one")
    subjects = list_subjects(dreambooth_dir)
    classes = read_subject_classes(dreambooth_dir)
    folder = Path(root) / KIND.track_id
    _prepare_folder(folder, force)

    pairs = choose_pairs(subjects, options.pairs_per_subject, np.random.default_rng([options.seed, 0]))
    subject_cache: dict[Path, subject_masks.SubjectEstimate] = {}

    def subject_of(photo: Path, pixels: np.ndarray) -> subject_masks.SubjectEstimate:
        if photo not in subject_cache:
            subject_cache[photo] = subject_masks.estimate_subject(pixels, options.seed)
        return subject_cache[photo]

    entries = []
    for index, (subject, source_photo, reference_photo) in enumerate(
        tqdm(pairs, desc="inner-ID cases", disable=not progress)
    ):
        name = f"{subject}_{source_photo.stem}_{reference_photo.stem}"
        source = imaging.load_image(source_photo, "photo")
        reference = imaging.load_image(reference_photo, "photo")
        source_subject = subject_of(source_photo, np.asarray(source))
        reference_subject = subject_of(reference_photo, np.asarray(reference))
        mask, shape = _sample_mask(source_subject.mask, options, np.random.default_rng([options.seed, 2, index]))

        source.save(folder / f"{name}_source.png", compress_level=PNG_COMPRESS_LEVEL)
        shutil.copyfile(folder / f"{name}_source.png", folder / f"{name}_gt.png")
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(folder / f"{name}_source_mask.png")
        reference.save(folder / f"{name}_reference.png", compress_level=PNG_COMPRESS_LEVEL)
        subject_class = classes.get(subject, _class_from_folder(subject))
        entries.append(
            {
                "name": name,
                "prompt": f"a photo of a {subject_class}",
                "reference_region": region_to_json(tight_box(reference_subject.mask)),
                "mismatched_reference": None,  # drawn below, once every case exists
                "subject": subject,
                "class": subject_class,
                "source_photo": f"{subject}/{source_photo.name}",
                "reference_photo": f"{subject}/{reference_photo.name}",
                "mask_shape": shape,
                "mask_fraction": round(float(mask.mean()), 5),
                "subject_estimate": {"source": source_subject.method, "reference": reference_subject.method},
            }
        )
    _draw_mismatched_references(entries, np.random.default_rng([options.seed, 1]))

    builder = {
        "command": "mimicbrush bench build-inner-id",
        "version": __version__,
        "source": dreambooth_dir.name,
        "seed": options.seed,
        "pairs_per_subject": options.pairs_per_subject,
        "small_masks": options.small_masks,
        "crossing_masks": options.crossing_masks,
        "procedure": PROCEDURE,
    }
    write_track_file(folder, KIND, entries, builder)
    return load_track(folder)


def _prepare_folder(folder: Path, force: bool) -> None:
    """Create the folder; an existing track there is replaced only with `force`."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = [path for path in folder.iterdir() if path.name == TRACK_FILE or path.name.endswith(CASE_FILE_SUFFIXES)]
    if existing and not force:
        raise InputError(f"{folder} already holds a track (pass --force to replace it)")
    for path in existing:
        path.unlink()


def _sample_mask(subject: np.ndarray, options: InnerIdOptions, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    subject_pixels = float(subject.sum())
    if options.crossing_masks:
        return subject_masks.sample_crossing_mask(subject, subject_pixels * rng.uniform(*PART_FRACTION_OF_SUBJECT), rng)
    if not options.small_masks:
        return subject_masks.sample_part_mask(subject, subject_pixels * rng.uniform(*PART_FRACTION_OF_SUBJECT), rng)
    for _ in range(SMALL_MASK_ATTEMPTS):
        target = min(subject.size * rng.uniform(*SMALL_FRACTION_OF_IMAGE), subject_pixels / 2)
        mask, shape = subject_masks.sample_part_mask(subject, target, rng)
        if mask.mean() < SMALL_MASK_LIMIT:
            return mask, shape
    raise InputError(f"could not draw a mask under 5% of the image in {SMALL_MASK_ATTEMPTS} attempts")


def _class_from_folder(subject: str) -> str:
    return re.sub(r"\d+$", "", subject).replace("_", " ").strip() or subject


def _draw_mismatched_references(entries: list[dict], rng: np.random.Generator) -> None:
    """Another subject, of another class where there is one (another dog would half match)."""
    for entry in entries:
        others = [other for other in entries if other["subject"] != entry["subject"]]
        other_classes = [other for other in others if other["class"] != entry["class"]]
        candidates = other_classes or others
        entry["mismatched_reference"] = candidates[rng.integers(len(candidates))]["name"]
