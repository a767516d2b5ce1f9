"""`mimicbrush demo`: the bundled examples with the bundled model, offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .. import imaging, samplers
from . import options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the bundled examples with the bundled model (offline)",
        description="Edit the bundled examples (scikit-image's sample photos) and write inputs, edits "
        "and a contact sheet to DIR. Each example is edited twice: with its reference and with another "
        "example's (mismatched), so the sheet shows what the reference decides.",
    )
    parser.add_argument("-o", "--output-dir", required=True, help="folder for the results")
    parser.add_argument("--model", help="another model instead of the bundled one")
    parser.add_argument("--steps", type=int, default=20, help="scheduler steps (default 20)")
    options.add_scheduler_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    options.add_device_arguments(parser, dtype=False)
    parser.add_argument("--force", action="store_true", help="overwrite existing files in DIR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..examples import bundled_examples
    from ..loading import BUNDLED_MODEL_NOTICE, default_model, load_pipeline

    model = args.model or default_model()
    if args.model is None:
        print(f"{BUNDLED_MODEL_NOTICE} ({model})", file=sys.stderr)
    pipe = load_pipeline(model, device=args.device)
    samplers.use_sampler(pipe, args.scheduler)
    steps = args.steps
    output_dir = Path(args.output_dir)
    examples = bundled_examples()
    rows = []
    for example, mismatched in zip(examples, mismatched_references(examples), strict=True):
        print(f"{example.name}: {example.description}", file=sys.stderr)
        metadata = {"model": str(model), "seed": args.seed, "steps": steps, "scheduler": args.scheduler,
                    "keep_shape": example.keep_shape}
        edits = {}
        for kind, reference in (("edit", example.reference), ("edit-mismatched", mismatched)):
            result = pipe(
                source_image=example.source, mask_image=example.mask, reference_image=reference,
                keep_shape=example.keep_shape, num_inference_steps=steps,
                generator=torch.Generator("cpu").manual_seed(args.seed),
            )
            edits[kind] = result.images[0]
        images = {
            "source": Image.fromarray(example.source),
            "mask": Image.fromarray(example.mask),
            "reference": Image.fromarray(example.reference),
            "edit": edits["edit"],
            "mismatched-reference": Image.fromarray(mismatched),
            "edit-mismatched": edits["edit-mismatched"],
        }
        for kind, image in images.items():
            path = imaging.save_image(image, output_dir / f"{example.name}_{kind}.png", force=args.force,
                                      metadata=metadata if kind.startswith("edit") else None)
            if kind == "edit":
                print(path)
        rows.append(list(images.values()))
    sheet = imaging.save_image(contact_sheet(rows), output_dir / "demo.png", force=args.force)
    print(sheet)
    return 0


def mismatched_references(examples) -> list[np.ndarray]:
    """For each example, the reference of the next example (cyclically) whose reference differs."""
    references = []
    for index, example in enumerate(examples):
        others = examples[index + 1:] + examples[:index]
        other = next((o for o in others if not np.array_equal(o.reference, example.reference)), example)
        references.append(other.reference)
    return references


def contact_sheet(rows: list[list[Image.Image]], height: int = 192) -> Image.Image:
    """One row per example (source | mask | reference | edit | mismatched reference | its edit),
    each image scaled to `height`."""
    scaled = [[image.convert("RGB").resize((max(1, round(image.width * height / image.height)), height))
               for image in row] for row in rows]
    width = max(sum(image.width for image in row) for row in scaled)
    sheet = Image.new("RGB", (width, height * len(scaled)), "white")
    for index, row in enumerate(scaled):
        x = 0
        for image in row:
            sheet.paste(image, (x, index * height))
            x += image.width
    return sheet
