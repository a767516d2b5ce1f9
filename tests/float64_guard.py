"""A test helper (no tests here): records every float64 tensor that torch produces while it is
active, for the checks that an edit or a training step never makes one. MPS has no float64, so on
a Mac any such tensor on the device is an error; on the CPU it passes silently, which is why CI
looks for them.

A dispatch mode sees every operator torch runs, backward ones included, whatever Python called
it. Exempt: what diffusers' schedulers make in `set_timesteps`, which computes a schedule in
numpy float64 on the CPU and converts it to float32 or int64 before it moves to the device.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class Float64Result:
    operator: str
    where: str  # the innermost frame outside torch: the line that asked for it

    def __str__(self) -> str:
        return f"{self.operator} at {self.where}"


def _exempt(stack: traceback.StackSummary) -> bool:
    return any("diffusers/schedulers/" in frame.filename and frame.name == "set_timesteps" for frame in stack)


def _caller(stack: traceback.StackSummary) -> str:
    for frame in reversed(stack):
        if "/torch/" not in frame.filename and not frame.filename.endswith(__file__.split("/")[-1]):
            return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} ({frame.line})"
    return "?"


class Float64Guard(TorchDispatchMode):
    """`with Float64Guard() as guard: ...` then `guard.found`: one entry per float64 result."""

    def __init__(self):
        super().__init__()
        self.found: list[Float64Result] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if any(isinstance(leaf, torch.Tensor) and leaf.dtype == torch.float64 for leaf in tree_leaves(result)):
            stack = traceback.extract_stack()
            if not _exempt(stack):
                self.found.append(Float64Result(str(func), _caller(stack)))
        return result

    def report(self) -> str:
        distinct = dict.fromkeys(map(str, self.found))
        return f"{len(self.found)} float64 tensor(s): " + "; ".join(distinct)
