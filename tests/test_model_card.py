"""Model cards of exported models (mimicbrush.model_card): every pretrained source listed with its
licence, the front matter's `license:`, unknown sources marked. The expected licences are written
out here on purpose, not read from mimicbrush.licences: a wrong entry in that table fails here."""

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from mimicbrush.licences import SOURCES, UNKNOWN, carried_licences
from mimicbrush.model_card import declared_licence, release_card, training_card
from mimicbrush.training.components import COMPONENT_ROLES
from mimicbrush.training.config import load_train_config
from test_train_support import CONFIGS, SHARED, tiny_document, write_config, write_images

# each publisher's licence, as its hub page gives it
EXPECTED = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stable-diffusion-v1-5/stable-diffusion-inpainting": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "runwayml/stable-diffusion-inpainting": "creativeml-openrail-m",
    "stabilityai/sd-vae-ft-mse": "mit",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
    "diffusers/stable-diffusion-xl-1.0-inpainting-0.1": "openrail++",
    "stabilityai/sdxl-vae": "mit",
    "madebyollin/sdxl-vae-fp16-fix": "mit",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": "mit",
    "h94/IP-Adapter": "apache-2.0",
    "LiheYoung/depth-anything-small-hf": "apache-2.0",
    "LiheYoung/depth-anything-base-hf": "apache-2.0",
    "LiheYoung/depth-anything-large-hf": "apache-2.0",
    "depth_anything_vits14.pth": "apache-2.0",
    "depth_anything_vitb14.pth": "apache-2.0",
    "depth_anything_vitl14.pth": "apache-2.0",
    "xichenhku/MimicBrush": "apache-2.0",
}


def card_rows(card: str) -> dict[str, tuple[str | None, str]]:
    """role -> (source, licence id) from the card's table: the id of the licence the cell opens
    with ("MIT (`mit`)"), "unknown", or the cell as it is (a component made in the run)."""
    rows = {}
    section = card.split("## Where the weights come from", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("component", "---"):
            continue
        source = re.match(r"`([^`]+)`", cells[2])
        licence = re.match(r"[A-Z][^`(]*\(`([^`]+)`\)", cells[3])
        rows[cells[0]] = (source[1] if source else None,
                          "unknown" if cells[3].startswith(UNKNOWN) else (licence[1] if licence else cells[3]))
    return rows


def front_matter(card: str) -> dict:
    return yaml.safe_load(re.match(r"---\n(.*?)\n---\n", card, re.S)[1])


def check_card(card: str, config) -> None:
    """Every pretrained component is in the card with its source and the right licence."""
    rows = card_rows(card)
    for role, spec in config.model.components.items():
        if spec.pretrained is None:
            continue
        assert role in rows, f"the card omits {role} ({spec.pretrained})"
        source, licence = rows[role]
        assert source == spec.pretrained, f"{role}: the card names {source}, the config {spec.pretrained}"
        assert licence == EXPECTED[spec.pretrained], f"{role}: {spec.pretrained} is {EXPECTED[spec.pretrained]}, " \
                                                     f"the card says {licence}"


def parameters(config) -> dict[str, int]:
    """What an export of this config counts (no weights needed to write its card)."""
    roles = [role for role in COMPONENT_ROLES if role != "pooled_proj"]
    if "pooled_proj" in config.train.trainable or "pooled_proj" in COMPONENT_ROLES:
        roles.append("pooled_proj")
    return {role: 1000 for role in roles}


def load(name: str, *overrides: str):
    if name == "train-sdxl.yaml" and "pooled_proj" not in COMPONENT_ROLES:
        # until the SDXL backbone (branch xl-core) adds the pooled_proj role, the loader rejects it
        overrides += ("train.trainable=[unet,reference_unet,image_proj,depth_guider]",)
    return load_train_config(CONFIGS / name, list(overrides))


@pytest.mark.parametrize("name, licence", [("train-sd15.yaml", "creativeml-openrail-m"),
                                           ("train-sdxl.yaml", "openrail++")])
def test_the_shipped_recipes_cards_list_every_source_with_its_licence(name, licence):
    config = load(name)
    card = training_card(config, parameters(config), record=None)
    check_card(card, config)
    meta = front_matter(card)
    assert meta["license"] == licence  # the one licence among them with use restrictions
    hub_ids = [spec.pretrained for spec in config.model.components.values() if spec.pretrained]
    assert meta["base_model"] == list(dict.fromkeys(hub_ids))
    assert "use restrictions carry over" in card and "`export.data_licence`" in card  # undeclared data: a warning
    rows = card_rows(card)
    assert rows["image_proj"] == (None, "trained from scratch in this run: the training data's terms "
                                        "(`training_data.json`)")


def test_the_check_itself_catches_an_omitted_source_and_a_wrong_licence():
    config = load("train-sd15.yaml")
    card = training_card(config, parameters(config), record=None)
    vae_row = next(line for line in card.splitlines() if line.startswith("| vae |"))
    with pytest.raises(AssertionError, match="omits vae"):
        check_card(card.replace(vae_row + "\n", ""), config)
    with pytest.raises(AssertionError, match="stabilityai/sd-vae-ft-mse is mit, the card says apache-2.0"):
        check_card(card.replace(vae_row, vae_row.replace("(`mit`)", "(`apache-2.0`)")), config)


def test_the_package_table_gives_each_source_its_publishers_licence():
    assert set(SOURCES) == set(EXPECTED)
    assert {key: carried_licences(key)[0] for key in SOURCES} == EXPECTED
    # what derived weights carry on: the release's U-Nets come from SD-1.5
    assert "creativeml-openrail-m" in carried_licences("xichenhku/MimicBrush")


def test_an_unknown_source_is_marked_and_makes_the_licence_unknown():
    config = load("train-sd15.yaml", "model.vae.pretrained=someone/a-vae-nobody-listed")
    card = training_card(config, parameters(config), record=None)
    assert card_rows(card)["vae"] == ("someone/a-vae-nobody-listed", "unknown")
    assert front_matter(card)["license"] == "unknown" and "check its terms before you share" in card


def test_local_sources_hub_cache_release_layout_and_own_card(tmp_path):
    cache = tmp_path / "hub" / "models--stabilityai--sdxl-vae" / "snapshots" / "0123abc"
    cache.mkdir(parents=True)
    release = tmp_path / "release"
    (release / "mimicbrush").mkdir(parents=True)
    (release / "mimicbrush" / "mimicbrush.bin").write_bytes(b"")
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# a model of ours\n")
    config = load("train-sd15.yaml", f"model.vae.pretrained={cache}", f"model.unet.pretrained={release}",
                  f"model.reference_unet.pretrained={ours}")
    card = training_card(config, parameters(config), record=None)
    rows = card_rows(card)
    assert rows["vae"] == (Path(os.path.relpath(cache, CONFIGS.resolve())).as_posix(), "mit")
    assert rows["unet"][1] == "apache-2.0" and rows["reference_unet"][1] == "cc-by-nc-4.0"
    assert "creativeml-openrail-m" in card  # the release's U-Nets carry SD-1.5's terms
    assert front_matter(card)["license"] == "other"  # OpenRAIL-M and CC BY-NC together
    assert f"`{tmp_path}" not in card  # local paths relative to the config, not absolute ones


@pytest.mark.skipif(not (SHARED / "data" / "video").is_dir(),
                    reason=f"no shared data at {SHARED / 'data'} (demo-model.yaml's data folders, which the config reader checks)")
def test_the_demo_model_recipe_declares_the_licence_the_shipped_card_gives():
    from mimicbrush.loading import default_model

    card = training_card(load("demo-model.yaml"), {"unet": 10, "vae": 0, "depth_estimator": 0}, record=None)
    assert front_matter(card)["license"] == declared_licence(default_model() / "README.md") == "cc-by-nc-4.0"
    assert card_rows(card)["vae"] == (None, "parameter-free: no weights")


def test_an_export_writes_its_card_beside_its_data_record(tmp_path):
    from mimicbrush.training.export import export_trained
    from tiny_models import tiny_pipeline

    images = write_images(tmp_path / "images")
    config = load_train_config(write_config(tmp_path / "train.yaml", tiny_document(images, tmp_path / "run",
                                                                                     export={"data_licence": "mit"})))
    target = export_trained(tiny_pipeline(), config, tmp_path / "model")
    card = (target / "README.md").read_text()
    record = json.loads((target / "training_data.json").read_text())
    assert front_matter(card)["license"] == "mit" and record["trained_on"] == ["images"]
    rows = card_rows(card)
    assert set(rows) == {"unet", "reference_unet", "vae", "image_encoder", "image_proj", "depth_estimator",
                         "depth_guider"}
    assert "- `images`" in card


def test_converted_release_card(tmp_path):
    release = tmp_path / "release"
    (release / "mimicbrush").mkdir(parents=True)
    (release / "mimicbrush" / "mimicbrush.bin").write_bytes(b"")
    card = release_card(release, {"unet": 10, "vae": 5})
    assert card_rows(card)["unet"] == ("xichenhku/MimicBrush (release layout)", "apache-2.0")
    assert front_matter(card)["license"] == "creativeml-openrail-m"
    assert front_matter(card)["base_model"] == ["xichenhku/MimicBrush"]
