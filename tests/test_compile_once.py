"""Compiled edits compile once: `edit --batch --compile` and an app with compiled U-Nets run many
edits, and on a GPU a recompilation per edit would cost minutes and lose what compiling gains.

Three edits with different seeds, references, masks and source sizes at one resolution, for each
kind of model (the release's, whose reference U-Net runs at every step's timestep, and the
bundled model's, at timestep 0 once per edit): any graph dynamo compiles after a kind's first
edit is a recompilation, and fails with the guard that caused it. The U-Nets are compiled with
dynamo's `eager` backend: guards, and so recompilations, are dynamo's whatever the backend, and
inductor would spend minutes of a 2-core CPU generating C++ for the same answer.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from mimicbrush import edit_options
from mimicbrush.acceleration import CompiledForward, compile_unets
from test_train_support import one_thread  # noqa: F401
from tiny_models import tiny_pipeline


@pytest.fixture
def recompilations():
    """dynamo from scratch; the reasons it gives for each recompilation, as they are logged."""
    torch._dynamo.reset()
    counters.clear()
    reasons: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: reasons.append(record.getMessage())
    torch._logging.set_logs(recompiles=True)
    logger = logging.getLogger("torch._dynamo.guards.__recompiles")
    logger.addHandler(handler)
    yield reasons
    logger.removeHandler(handler)
    torch._logging.set_logs()
    torch._dynamo.reset()


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.usefixtures("one_thread")
def test_compiled_edits_compile_once(recompilations):
    pipe = tiny_pipeline()
    compile_unets(pipe, backend="eager")
    rng = np.random.default_rng(0)
    for reference_timestep in (None, 0):
        pipe.register_to_config(reference_timestep=reference_timestep)
        graphs_after_first = None
        for edit in range(3):
            height, width = 40 + 8 * edit, 56 - 4 * edit
            pipe(source_image=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                 mask_image=f"{2 + edit},{3 * edit},{30 - edit},{height - 4}",
                 reference_image=rng.integers(0, 256, (30 + 5 * edit, 28, 3), dtype=np.uint8),
                 num_inference_steps=2, generator=edit_options.generator(edit))
            if graphs_after_first is None:
                graphs_after_first, reasons_after_first = compiled_graphs(), len(recompilations)
        new_reasons = "\n".join(recompilations[reasons_after_first:])
        assert compiled_graphs() == graphs_after_first, f"recompiled after the first edit:\n{new_reasons}"
    assert compiled_graphs() > 0  # dynamo did compile them
    for unet in (pipe.unet, pipe.reference_unet):
        assert isinstance(unet.forward, CompiledForward) and not unet.forward.failed  # no fall-back to eager
