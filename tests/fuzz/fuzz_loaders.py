"""Coverage-guided fuzzing (atheris/libFuzzer) of the image and mask loaders.

Each input is written to a file and loaded as a source image and as a mask; the only exception
allowed out is InputError, and what loads must be what the loaders promise (RGB at a size within
the limits; an L mask at the source's size with at least one pixel to edit). Any other exception,
or a broken promise, is a crash: libFuzzer stops and writes the input as crash-<sha1>.

    pip install atheris
    python tests/fuzz/fuzz_loaders.py -atheris_runs=20000              # seeds from hostile_images.py
    python tests/fuzz/fuzz_loaders.py CORPUS_DIR -max_total_time=600   # keep what it finds in CORPUS_DIR
    python tests/fuzz/fuzz_loaders.py crash-…                          # replay one input

Not collected by pytest (tests/test_reliability_images.py runs the same checks with hypothesis).
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["mimicbrush", "PIL"]):
    from PIL import Image

    Image.init()  # import every format plugin now, inside the block, so they are instrumented too
    from mimicbrush import imaging
    from mimicbrush.errors import InputError

from hostile_images import seed_corpus

WORK = Path(tempfile.mkdtemp(prefix="fuzz-loaders-"))
INPUT_FILE = WORK / "input"


def check_loaders(data: bytes, mask_size: tuple[int, int]) -> None:
    """Load `data` as an image and as a mask for a `mask_size` source; raise on a broken promise."""
    INPUT_FILE.write_bytes(data)
    try:
        image = imaging.load_image(INPUT_FILE, "image")
    except InputError:
        pass
    else:
        assert image.mode == "RGB", image.mode
        assert 1 <= image.width * image.height <= imaging.MAX_IMAGE_PIXELS, image.size
        assert max(image.size) <= imaging.MAX_IMAGE_SIDE, image.size
    try:
        mask = imaging.load_mask(str(INPUT_FILE), mask_size)
    except InputError:
        pass
    else:
        assert mask.mode == "L" and mask.size == mask_size, (mask.mode, mask.size)
        assert mask.getextrema()[1] > imaging.MASK_THRESHOLD


def test_one_input(data: bytes) -> None:
    """The first two bytes choose the source size the mask must fit (1..64 each), the rest is the file."""
    if len(data) < 2:
        return
    check_loaders(data[2:], (1 + data[0] % 64, 1 + data[1] % 64))


def write_seeds(corpus: Path) -> None:
    """The seed files, each behind the two size bytes of a 24×16 source (the seeds' own size)."""
    corpus.mkdir(parents=True, exist_ok=True)
    for name, contents in seed_corpus().items():
        (corpus / name).write_bytes(bytes([23, 15]) + contents)


def main() -> None:
    warnings.simplefilter("ignore")  # the loaders' notices, thousands of times
    arguments = list(sys.argv)
    corpora = [argument for argument in arguments[1:] if not argument.startswith("-")]
    if not corpora:  # no corpus given: start from the seeds, in a scratch folder
        corpus = WORK / "corpus"
        arguments.append(str(corpus))
        corpora = [str(corpus)]
    for corpus in map(Path, corpora):  # a file is an input to replay (a crash), not a corpus
        if not corpus.exists() or (corpus.is_dir() and not any(corpus.iterdir())):
            write_seeds(corpus)
    atheris.Setup(arguments, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
