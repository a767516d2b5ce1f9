import os
import sys
from pathlib import Path

import pytest

# test helpers (parity_kit, tiny_models) live beside the tests
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def weights_root(tmp_path_factory):
    """Where the parity kit's weights are written, once per session (MIMICBRUSH_PARITY_DIR keeps
    them between runs); skips where the kit is absent."""
    from parity_kit import require_kit

    require_kit()
    root = os.environ.get("MIMICBRUSH_PARITY_DIR")
    return Path(root) if root else tmp_path_factory.mktemp("parity")


@pytest.fixture(scope="session")
def tiny_release_dir(weights_root):
    """The kit's TINY release-layout folder of random weights."""
    from parity_kit import model_dir

    return model_dir("tiny", weights_root)


@pytest.fixture(scope="session")
def tiny_release_pipeline(tiny_release_dir):
    """The TINY release loaded in fp32 on the CPU, shared by the tests that only run it."""
    from mimicbrush import MimicBrushPipeline

    pipe = MimicBrushPipeline.from_pretrained(tiny_release_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe
