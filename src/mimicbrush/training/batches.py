"""Micro-batches for training: sample order, model inputs and the resumable position.

The order of an epoch is a permutation seeded by (seed, epoch). Every micro-batch takes the next
`batch_size × num_processes` samples of it, and process r takes its r-th slice, so the samples a
step sees depend only on the global batch, and a run resumed from (epoch, offset) continues with
exactly the samples it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import imaging
from ..data import PairDataset
from ..data.dataset import to_unit_range
from ..errors import ConfigError
from .objective import DrawSettings, draw_sample_randomness


class TrainingSamples(Dataset):
    """A `PairDataset` item plus what the loss needs from it, computed in the loader's workers:
    CLIP and depth-estimator inputs (with inference's own preprocessing) and the sample's draws."""

    def __init__(self, pairs: PairDataset, draws: DrawSettings, clip_size: int, depth_size: int):
        self.pairs = pairs
        self.draws = draws
        self.clip_size = clip_size
        self.depth_size = depth_size

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.pairs.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.pairs[index]
        source_uint8 = item.pop("source_uint8").numpy()
        # the item's float reference is uint8/127.5 - 1, so this round trip is exact
        reference_uint8 = ((item["reference"] + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        item.update(encoder_inputs(source_uint8, reference_uint8, self.clip_size, self.depth_size))
        item.update(draw_sample_randomness(self.draws, self.pairs.epoch, index))
        return item


def encoder_inputs(source: np.ndarray, reference: np.ndarray, clip_size: int, depth_size: int) -> dict[str, torch.Tensor]:
    """The image encoder's input (from the reference) and the depth estimator's (from the
    source), with inference's own preprocessing; images are H×W×3 uint8."""
    return {"clip_pixels": torch.from_numpy(imaging.to_clip_pixels(reference, clip_size)[0]),
            "depth_pixels": torch.from_numpy(imaging.to_depth_pixels(source, depth_size)[0])}


def loss_inputs(source: np.ndarray, reference: np.ndarray, mask: np.ndarray, draws: DrawSettings, index: int,
                clip_size: int, depth_size: int) -> dict[str, torch.Tensor]:
    """One sample for the objective from S×S×3 uint8 images and an S×S {0, 1} mask, with the
    draws of sample `index` (epoch 0)."""
    return {"source": to_unit_range(source), "reference": to_unit_range(reference), "mask": torch.from_numpy(mask).float()[None],
            **encoder_inputs(source, reference, clip_size, depth_size), **draw_sample_randomness(draws, 0, index)}


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return torch.randperm(num_samples, generator=generator)


class EpochBatchSampler(Sampler[list[int]]):
    """This process's micro-batches of one epoch, starting `start` samples into the epoch's
    order. A tail shorter than one global micro-batch is skipped, so every process makes the
    same number of steps."""

    def __init__(self, num_samples: int, seed: int, epoch: int, batch_size: int, num_processes: int,
                 process_index: int, start: int = 0):
        self.order = epoch_order(num_samples, seed, epoch)
        self.batch_size = batch_size
        self.global_batch = batch_size * num_processes
        self.process_offset = process_index * batch_size
        self.starts = range(start, num_samples - self.global_batch + 1, self.global_batch)

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self) -> Iterator[list[int]]:
        for start in self.starts:
            first = start + self.process_offset
            yield self.order[first : first + self.batch_size].tolist()


@dataclass
class DataPosition:
    """How far training has read: the epoch, and the samples of it consumed by all processes."""

    epoch: int = 0
    offset: int = 0


class DataFeed:
    """Endless micro-batches, epoch after epoch; `position` always points past the last batch
    handed out, which is what a checkpoint records."""

    def __init__(self, samples: TrainingSamples, seed: int, batch_size: int, num_processes: int,
                 process_index: int, num_workers: int, pin_memory: bool, position: DataPosition):
        global_batch = batch_size * num_processes
        if len(samples) < global_batch:
            raise ConfigError(f"data.samples_per_epoch: {len(samples)} is smaller than one micro-batch over all "
                              f"processes ({batch_size} × {num_processes} = {global_batch})")
        self.samples = samples
        self.seed = seed
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.position = position
        self._batches = self._generate()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return next(self._batches)

    def _generate(self) -> Iterator[dict[str, torch.Tensor]]:
        global_batch = self.batch_size * self.num_processes
        while True:
            sampler = EpochBatchSampler(len(self.samples), self.seed, self.position.epoch, self.batch_size,
                                        self.num_processes, self.process_index, self.position.offset)
            self.samples.set_epoch(self.position.epoch)
            # a fresh loader per epoch: its workers copy the dataset, and with it the epoch
            loader = DataLoader(self.samples, batch_sampler=sampler, num_workers=self.num_workers,
                                pin_memory=self.pin_memory)
            for batch in loader:
                self.position.offset += global_batch
                yield batch
            self.position.epoch += 1
            self.position.offset = 0
