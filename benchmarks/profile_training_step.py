"""Where a training step's time goes: data loading vs forward vs backward vs optimizer.

    OMP_NUM_THREADS=1 python benchmarks/profile_training_step.py configs/demo-model.yaml [KEY=VALUE ...] \
        [--samples 16] [--steps 4]

Builds the config's model and data (overrides as `mimicbrush train` takes them), loads one batch
of `--samples` pairs the way the trainer's loader does (timed: the data side), then times
`--steps` optimizer steps on that batch, split into forward, backward and optimizer. The first
step includes warm-up; the JSON printed gives every step and the median of the others.
Pin it to an idle core (`taskset -c 0`) for figures that mean anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mimicbrush.data import build_dataset
from mimicbrush.training.batches import TrainingSamples
from mimicbrush.training.config import load_train_config
from mimicbrush.training.objective import DrawSettings
from mimicbrush.training.trainer import build_training_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--samples", type=int, default=16, help="samples per step (default 16)")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    config = load_train_config(args.config, args.overrides)
    model = build_training_model(config)
    pipeline, objective = model.pipeline, model.objective
    side = config.data.resolution // pipeline.vae_scale_factor
    draws = DrawSettings(config.seed, config.train.reference_drop, config.train.depth_drop,
                         pipeline.scheduler.config.num_train_timesteps,
                         (pipeline.vae.config.latent_channels, side, side))
    samples = TrainingSamples(build_dataset(config.data, config.seed), draws, pipeline.clip_input_size,
                              pipeline.config.depth_input_size)
    start = time.perf_counter()
    items = [samples[index] for index in range(args.samples)]
    data_seconds = time.perf_counter() - start
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=config.optim.lr)
    steps = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = objective(batch)
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.bank.clear()
        done = time.perf_counter()
        steps.append({"forward_s": forward - start, "backward_s": backward - forward, "optimizer_s": done - backward})
    settled = steps[1:] or steps
    report = {
        "config": str(args.config), "overrides": args.overrides, "resolution": config.data.resolution,
        "samples": args.samples, "threads": torch.get_num_threads(), "data_s": round(data_seconds, 3),
        "median": {key: round(statistics.median(step[key] for step in settled), 3) for key in steps[0]},
        "steps": [{key: round(value, 3) for key, value in step.items()} for step in steps],
    }
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
