"""The bundled examples (mimicbrush.examples) as files for the page's gr.Examples."""

from __future__ import annotations

from pathlib import Path

import PIL.Image

from ..examples import bundled_examples


def write_examples(folder: str | Path) -> tuple[list[list], list[str]]:
    """Write the examples as PNG files under `folder`; return gr.Examples rows
    [source, box text, mask file, reference, keep_shape] and their labels."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for example in bundled_examples():
        paths = {}
        for kind, array in (("source", example.source), ("mask", example.mask), ("reference", example.reference)):
            paths[kind] = folder / f"{example.name}-{kind}.png"
            PIL.Image.fromarray(array).save(paths[kind])
        rows.append([str(paths["source"]), "", str(paths["mask"]), str(paths["reference"]), example.keep_shape])
        labels.append(example.description)
    return rows, labels
