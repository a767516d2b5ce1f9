"""A test helper (no tests here): records every use of a float64 tensor while it is active, for
the checks that an edit or a training step never makes one. MPS has no float64, so on a Mac such
a tensor on the device is an error; on the CPU it passes silently, which is why CI looks for them.

A dispatch mode sees every operator torch runs, backward ones included, whatever Python called
it, and records each one that takes or gives a float64 tensor. Exempt, because they take another
path on MPS or never reach a device: diffusers' schedulers while they are built or
`set_timesteps` runs (a schedule computed in float64 on the CPU and converted to float32 or int64
before it goes to the device; a float64 tensor they leave behind is still caught when anything
else uses it), and torch's GradScaler.unscale_ (its reciprocal is taken in float64 except on MPS).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class Float64Use:
    operator: str
    where: str  # the innermost frame outside torch: the line that asked for it

    def __str__(self) -> str:
        return f"{self.operator} at {self.where}"


EXEMPT = (("diffusers/schedulers/", ("__init__", "set_timesteps")), ("torch/amp/grad_scaler.py", ("unscale_",)))


def _exempt(stack: traceback.StackSummary) -> bool:
    return any(part in frame.filename and frame.name in names for frame in stack for part, names in EXEMPT)


def _float64(tree) -> bool:
    return any(isinstance(leaf, torch.Tensor) and leaf.dtype == torch.float64 for leaf in tree_leaves(tree))


def _caller(stack: traceback.StackSummary) -> str:
    for frame in reversed(stack):
        if "/torch/" not in frame.filename and frame.filename != __file__:
            return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} ({frame.line})"
    return "?"


class Float64Guard(TorchDispatchMode):
    """`with Float64Guard() as guard: ...` then `guard.found`: one entry per operator call that
    takes or gives float64."""

    def __init__(self):
        super().__init__()
        self.found: list[Float64Use] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if _float64(result) or _float64((args, kwargs)):
            stack = traceback.extract_stack()
            if not _exempt(stack):
                self.found.append(Float64Use(str(func), _caller(stack)))
        return result

    def report(self) -> str:
        distinct = dict.fromkeys(map(str, self.found))
        return f"{len(self.found)} operator call(s) on float64: " + "; ".join(distinct)
