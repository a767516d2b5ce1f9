"""Numerical parity with the release (../shared/parity kit): every tiny case, and the full-size
2-step case when MIMICBRUSH_FULL_PARITY=1 (it writes about 9 GB of random weights)."""

import os

import pytest
import torch

from mimicbrush import MimicBrushPipeline

from parity_kit import compare, load_cases, model_dir, run_case


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_release_pipeline):  # conftest.py: shared with the half-precision tests
    return tiny_release_pipeline


@pytest.mark.slow
@pytest.mark.parametrize("case_name", ["tiny_a", "tiny_b", "tiny_c"])
def test_tiny_case_matches_release(tiny_pipeline, case_name):
    case = load_cases()[case_name]
    torch.set_num_threads(2)
    assert compare(case, run_case(tiny_pipeline, case)) == []


@pytest.mark.slow
def test_faithful_path_matches_release_too(tiny_pipeline):
    case = load_cases()["tiny_c"]
    assert compare(case, run_case(tiny_pipeline, case, faithful=True)) == []


def test_keep_shape_changes_the_depth_path(tiny_pipeline):
    """Negative check of the comparison itself: tiny_a's arrays are not tiny_b's."""
    cases = load_cases()
    case_b = dict(cases["tiny_b"], steps=2)
    arrays = run_case(tiny_pipeline, dict(cases["tiny_a"], steps=2))
    failures = compare(case_b, arrays)
    assert any(line.startswith("depth_feature") for line in failures)


@pytest.mark.skipif(os.environ.get("MIMICBRUSH_FULL_PARITY") != "1", reason="set MIMICBRUSH_FULL_PARITY=1 (writes ~9 GB)")
def test_full_size_case_matches_release(weights_root):
    case = load_cases()["full_a"]
    pipe = MimicBrushPipeline.from_pretrained(model_dir("full", weights_root))
    pipe.set_progress_bar_config(disable=True)
    assert compare(case, run_case(pipe, case)) == []
