"""LPIPS (Zhang et al., 2018) through the optional `lpips` package.

`lpips` builds its backbone from torchvision, which this project does not depend on, so the
metric is optional: when the package cannot be imported or its weights cannot be loaded, the
benchmark reports LPIPS as skipped with the reason instead of failing.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from .defaults import DEFAULT_LPIPS_NET


class LpipsUnavailable(Exception):
    """LPIPS cannot run here; the message says why, for the summary's `skipped` entry."""


class Lpips:
    """LPIPS distance between two uint8 RGB images of the same size (lower is closer)."""

    def __init__(self, net: str = DEFAULT_LPIPS_NET, device: str | torch.device = "cpu"):
        try:
            import lpips
        except Exception as error:  # lpips imports torchvision at import time
            raise LpipsUnavailable(
                f"the `lpips` package is not importable ({type(error).__name__}: {error}); "
                "install `lpips` and torchvision to score LPIPS"
            ) from None
        self.net = net
        self.device = torch.device(device)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints its setup on stdout
                self.model = lpips.LPIPS(net=net, verbose=False).to(self.device).eval()
        except Exception as error:  # e.g. offline: the torchvision backbone is downloaded
            raise LpipsUnavailable(f"LPIPS ({net}) could not be loaded: {type(error).__name__}: {error}") from None

    @torch.no_grad()
    def distance(self, first: np.ndarray, second: np.ndarray) -> float:
        return float(self.model(self._tensor(first), self._tensor(second)).mean())

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0)  # LPIPS expects [-1, 1]
        return pixels.permute(2, 0, 1)[None].to(self.device)
