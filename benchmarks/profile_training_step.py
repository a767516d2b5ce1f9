"""Where a training step's time goes: data loading vs forward vs backward vs optimizer.

    OMP_NUM_THREADS=1 python benchmarks/profile_training_step.py configs/demo-model.yaml [KEY=VALUE ...] \
        [--samples 16] [--steps 4]

Builds the config's model and data (overrides as `mimicbrush train` takes them), loads one batch
of `--samples` pairs the way the trainer's loader does (timed: the data side), then times
`--steps` optimizer steps on that batch, split into forward, backward and optimizer. The first
step includes warm-up; the JSON printed gives every step and the median of the others.
Pin it to an idle core (`taskset -c 0`) for figures that mean anything.

`--compare OTHER.yaml` builds a second config's model and batch the same way (same overrides)
and alternates their steps, so both see the same machine load; the JSON adds its figures under
"compare" with the ratio of its median step times to the first config's, and the median of the
step-by-step ratios (the figure to trust on a shared machine). The tiny 1.5 and XL configs:

    OMP_NUM_THREADS=1 python benchmarks/profile_training_step.py configs/train-tiny.yaml \
        --compare configs/train-tiny-xl.yaml data.cache_dir=null --samples 4 --steps 30
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
    parser.add_argument("--compare", type=Path, help="a second config, stepped in turn with the first")
    args = parser.parse_intermixed_args(argv)  # overrides may follow --compare
    runs = [StepRun(path, args.overrides, args.samples) for path in (args.config, args.compare) if path]
    for _ in range(args.steps):
        for run in runs:
            run.step()
    report = runs[0].report()
    if len(runs) > 1:
        report["compare"] = runs[1].report()
        first = report["median"]
        report["compare"]["ratio_to_first"] = {
            key: round(value / first[key], 3) if first[key] else None for key, value in report["compare"]["median"].items()}
        # each step beside the first config's step just before it: the load they shared was alike
        pairs = list(zip(runs[0].steps, runs[1].steps))[1:]
        report["compare"]["paired_step_ratio_median"] = round(statistics.median(
            other["step_s"] / first_step["step_s"] for first_step, other in pairs), 3) if pairs else None
    report["samples"], report["threads"] = args.samples, torch.get_num_threads()
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


class StepRun:
    """One config's model, a fixed batch of its training data and an AdamW over what trains."""

    def __init__(self, path: Path, overrides: list[str], samples_count: int):
        self.path, self.overrides = path, overrides
        config = load_train_config(path, overrides)
        self.resolution = config.data.resolution
        model = build_training_model(config)
        pipeline, self.objective = model.pipeline, model.objective
        trainable = [p for p in self.objective.parameters() if p.requires_grad]
        self.parameters = sum(p.numel() for p in trainable)
        side = config.data.resolution // pipeline.vae_scale_factor
        draws = DrawSettings(config.seed, config.train.reference_drop, config.train.depth_drop,
                             pipeline.scheduler.config.num_train_timesteps,
                             (pipeline.vae.config.latent_channels, side, side))
        samples = TrainingSamples(build_dataset(config.data, config.seed), draws, pipeline.clip_input_size,
                                  pipeline.config.depth_input_size)
        start = time.perf_counter()
        items = [samples[index] for index in range(samples_count)]
        self.data_seconds = time.perf_counter() - start
        self.batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        self.optimizer = torch.optim.AdamW(trainable, lr=config.optim.lr)
        self.steps: list[dict[str, float]] = []

    def step(self) -> None:
        start = time.perf_counter()
        loss = self.objective(self.batch)
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.objective.bank.clear()
        done = time.perf_counter()
        self.steps.append({"forward_s": forward - start, "backward_s": backward - forward,
                           "optimizer_s": done - backward, "step_s": done - start})

    def report(self) -> dict:
        settled = self.steps[1:] or self.steps
        return {
            "config": str(self.path), "overrides": self.overrides, "resolution": self.resolution,
            "trainable_parameters": self.parameters, "data_s": round(self.data_seconds, 3),
            "median": {key: round(statistics.median(step[key] for step in settled), 3) for key in self.steps[0]},
            "steps": [{key: round(value, 3) for key, value in step.items()} for step in self.steps],
        }


if __name__ == "__main__":
    sys.exit(main())
