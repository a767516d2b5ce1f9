"""Resumable work split over processes: what `bench run` and `edit --batch` share.

Each item has one output file. An item whose output exists is done (outputs are written
atomically, so an existing file is a whole one) and is skipped unless `force`; the rest are split
between the processes of an `accelerate launch` (one process: all of them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

Item = TypeVar("Item")


def launch_state(device: str = "auto") -> PartialState:
    """The processes of this launch (`accelerate launch`, `torchrun`; one when run plainly).

    Accelerate joins processes without a GPU only when told they are CPU processes: otherwise
    each of them believes it is alone and does every item.
    """
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def process_device(state: PartialState, device: str) -> str:
    """The device a process edits on: its own (one GPU each) when several run and `device` is
    auto, else `device`."""
    return str(state.device) if device == "auto" and state.num_processes > 1 else device


def pending_items(items: Sequence[Item], output_path: Callable[[Item], Path], force: bool = False) -> list[Item]:
    """The items still to do, in order: those whose output file is missing (all with `force`)."""
    return [item for item in items if force or not output_path(item).is_file()]


def process_share(
    items: Sequence[Item],
    output_path: Callable[[Item], Path],
    state: PartialState,
    *,
    force: bool = False,
    desc: str = "items",
    progress: bool = True,
) -> Iterator[Item]:
    """This process's share of the pending items, under a progress bar.

    Every process lists the pending items before any process writes one, so all of them split
    the same list.
    """
    pending = pending_items(items, output_path, force)
    state.wait_for_everyone()
    with state.split_between_processes(pending) as share:
        yield from tqdm(share, desc=f"{desc} (process {state.process_index})", disable=not progress)
