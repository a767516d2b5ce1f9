"""The quantities tests/test_demo_model_imitates.py asserts, for any model folder: the imitation
gain (and win share) on the photo pairs (seeds 0 and 1) and on the held-out video pairs, against
the same gain with learnt weights shuffled (the reference U-Net alone; on photos also the
reference U-Net and image encoder together). What the test's docstrings and docs/demo-model.md
quote, and how a candidate model is checked before it is shipped.

    OMP_NUM_THREADS=1 python benchmarks/imitation_margins.py src/mimicbrush/assets/demo-model

Prints JSON: {name: {"gain", "win", "shuffled_reference_unet", ["shuffled_both"]}}. The video
pairs need ../shared beside the clone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_demo_model_imitates as imitation  # noqa: E402  (the test's own definitions)

from mimicbrush import MimicBrushPipeline  # noqa: E402
from mimicbrush.training.config import load_train_config  # noqa: E402
from mimicbrush.training.imitation import ImitationProbe  # noqa: E402


def measure(pipe, probe, with_both: bool) -> dict:
    gain, win = imitation.gain_and_win(pipe, probe)
    result = {"gain": round(gain, 4), "win": round(win, 3),
              "shuffled_reference_unet": [round(g, 4) for g in imitation.shuffled_gains(pipe, probe)]}
    if with_both:
        both = imitation.shuffled_gains(pipe, probe, ("reference_unet", "image_encoder"))
        result["shuffled_both"] = [round(g, 4) for g in both]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model folder (save_pretrained layout)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = MimicBrushPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    results = {f"photo_seed{seed}": measure(pipe, imitation.photo_probe(pipe, seed), True) for seed in (0, 1)}
    config = load_train_config(imitation.REPO / "configs" / "demo-model.yaml").imitation
    objective, latent_shape = imitation.objective_and_shape(pipe)
    probe = ImitationProbe.from_config(config, objective, latent_shape, pipe.clip_input_size,
                                       pipe.config.depth_input_size)
    results["video"] = measure(pipe, probe, False)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
