"""benchmarks/xl_imitation_compare.py: the two arms differ in their U-Nets alone, and the table
checks issue #22's target (XL's gain above zero and at least half the 1.5 arm's) at each step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark
from mimicbrush.errors import ConfigError
from test_train_support import SHARED

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compare():
    return load_benchmark("xl_imitation_compare")


def without(document: dict, *paths: str) -> dict:
    document = json.loads(json.dumps(document))
    for path in paths:
        *parents, leaf = path.split(".")
        node = document
        for key in parents:
            node = node[key]
        node.pop(leaf, None)
    return document

# the recipe's data sections name folders of ../shared/data, which the config reader checks
needs_shared_data = pytest.mark.skipif(not (SHARED / "data" / "video").is_dir(),
                                       reason=f"no shared data at {SHARED / 'data'} (the recipe's data sections)")


@needs_shared_data
def test_the_arms_differ_in_their_unets_alone(compare, tmp_path):
    recipe = REPOSITORY / "configs" / "demo-model.yaml"
    settings = ["train.max_steps=300", "imitation.every_steps=100"]
    arms = {arm: compare.compose(config, recipe, "unets", tmp_path / arm, settings)
            for arm, config in compare.ARMS.items()}
    assert arms["xl"]["model"]["unet"]["config"]["addition_embed_type"] == "text_time"
    assert "addition_embed_type" not in arms["sd15"]["model"]["unet"]["config"]
    assert arms["xl"]["train"]["trainable"] == [*arms["sd15"]["train"]["trainable"], "pooled_proj"]
    assert arms["sd15"]["train"]["max_steps"] == arms["xl"]["train"]["max_steps"] == 300
    rest = {arm: without(document, "model.unet", "model.reference_unet", "train.trainable", "output_dir")
            for arm, document in arms.items()}
    assert rest["sd15"] == rest["xl"]
    # the recipe's data and imitation sections, not the tiny configs'
    assert arms["xl"]["data"] == compare.read_yaml(recipe)["data"]


def test_a_bad_override_fails_before_either_run(compare, tmp_path):
    with pytest.raises(ConfigError, match="train.no_such_key: unknown key"):
        compare.compose(compare.ARMS["xl"], REPOSITORY / "configs" / "demo-model.yaml", "unets",
                        tmp_path / "xl", ["train.no_such_key=1"])


def entry(step: int, gain800: float) -> dict:
    return {"step": step, "samples": 16 * step, "t500": {"gain": 0.05, "win": 0.6},
            "t800": {"gain": gain800, "win": 0.7}}


def test_the_target_at_each_step(compare):
    histories = {"sd15": [entry(100, 0.20), entry(200, 0.10), entry(300, -0.01)],
                 "xl": [entry(100, 0.12), entry(200, 0.04), entry(300, 0.05), entry(400, 0.3)]}
    rows = compare.comparison(histories, "t800")
    assert [row["step"] for row in rows] == [100, 200, 300]  # only steps both arms measured
    assert [row["target_met"] for row in rows] == [True, False, None]  # 0.6 of, 0.4 of, a 1.5 gain <= 0
    assert rows[0]["xl_to_sd15_gain"] == pytest.approx(0.6)
    table = compare.markdown(rows, "t800")
    assert "| 100 (1,600) |" in table and "**no**" in table and "1.5 gain ≤ 0" in table
