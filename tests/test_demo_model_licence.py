"""What the bundled model is trained on, and the licence it ships under (docs/demo-model.md,
"Licence"). The names below are written out here on purpose, not read from our configs: a config
or clip list that starts to train on one of them fails this test."""

import json
import re
import tomllib
from pathlib import Path

import pytest

from mimicbrush.loading import BUNDLED_MODEL_NOTICE, default_model

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEMO_MODEL = default_model()

# the DAVIS README's "downloaded from YouTube" sequences: their uploaders' terms, not DAVIS's
YOUTUBE_SOURCED = {"breakdance", "dog-agility", "drift-chicane", "drift-straight", "drift-turn",
                   "motocross-bumps", "motocross-jump", "parkour"}
# the imitation metric's held-out DAVIS clips
HELD_OUT = {"dog", "goat", "libby", "soapbox"}
# sources whose terms do not allow (or do not say they allow) shipping weights trained on them
NEVER_TRAINED_ON = ("vspw_", "bsds500", "dreambooth")


def forbidden(name: str) -> str | None:
    """Why a source folder named `name` must not train the shipped model, or None."""
    if name.startswith("davis_") and name.removeprefix("davis_") in YOUTUBE_SOURCED:
        return "a YouTube-sourced DAVIS sequence"
    if name.startswith("davis_") and name.removeprefix("davis_") in HELD_OUT:
        return "a held-out clip"
    if any(part in name for part in NEVER_TRAINED_ON):
        return "a source used only to measure"
    return None


def test_the_rule_itself_catches_each_excluded_name():
    assert len(YOUTUBE_SOURCED) == 8 and len(HELD_OUT) == 4
    assert all(forbidden(f"davis_{name}") for name in YOUTUBE_SOURCED | HELD_OUT)
    assert forbidden("davis_bear") is None and forbidden("davis_breakdance-flare") is None
    assert forbidden("sam2_dog") is None


def test_the_bundled_models_own_record_trains_on_nothing_excluded():
    record = json.loads((DEMO_MODEL / "training_data.json").read_text())
    trained = [Path(path).name for path in record["trained_on"]]
    assert trained, "training_data.json lists no training data"
    assert {name: forbidden(name) for name in trained if forbidden(name)} == {}
    davis = {name for name in trained if name.startswith("davis_")}
    assert len(davis) == 38  # every DAVIS 2016 sequence but the 8 YouTube-sourced and the 4 held out
    held_out = {Path(path).name for path in record["held_out_for_the_imitation_metric"]}
    assert {f"davis_{name}" for name in HELD_OUT} <= held_out


def test_the_model_card_and_the_package_state_the_weights_licence():
    card = (DEMO_MODEL / "README.md").read_text()
    front_matter = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert front_matter, "the model card has no front matter"
    assert re.search(r"^license: cc-by-nc-4\.0$", front_matter.group(1), re.M)
    assert "CC BY-NC 4.0" in card and not re.search(r"DAVIS[^\n]*\): BSD", card)  # the old card's wrong claim
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "CC-BY-NC-4.0" in project["license"]
    assert "non-commercial" in BUNDLED_MODEL_NOTICE and "CC BY-NC 4.0" in BUNDLED_MODEL_NOTICE


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the training data is not beside the clone ({SHARED_DATA})")
def test_the_demo_model_config_trains_on_nothing_excluded():
    from mimicbrush.data.sources import data_sources
    from mimicbrush.training.config import load_train_config

    config = load_train_config(ROOT / "configs" / "demo-model.yaml")
    trained = [path.name for path in data_sources(config.data)]
    assert {name: forbidden(name) for name in trained if forbidden(name)} == {}
    assert sum(name.startswith("davis_") for name in trained) == 38
    held_out = {path.name for path in data_sources(config.imitation.data, "imitation.data")}
    assert {f"davis_{name}" for name in HELD_OUT} <= held_out
