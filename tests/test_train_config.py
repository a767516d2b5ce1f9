"""Training config: schema validation with key paths, key=value overrides, shipped configs, CLI."""

from pathlib import Path

import pytest
import yaml

from mimicbrush.cli import build_parser, main
from mimicbrush.errors import ConfigError
from mimicbrush.training import apply_overrides, load_train_config
from mimicbrush.training.config import DEFAULT_TRAINABLE, parse_override
from test_train_support import CONFIGS, tiny_document, write_config


@pytest.fixture
def config_file(tmp_path):
    return write_config(tmp_path / "train.yaml", tiny_document(tmp_path / "images", tmp_path / "run"))


def load_with(config_file, *overrides):
    return load_train_config(config_file, list(overrides))


def test_defaults_and_values_are_read(config_file):
    config = load_train_config(config_file)
    assert config.train.batch_size == 2 and config.train.trainable == DEFAULT_TRAINABLE
    assert config.train.reference_drop == 0.1 and config.train.depth_drop == 0.5
    assert config.optim.lr == 1e-3 and config.optim.optimizer == "adamw"
    assert config.data.resolution == 32
    assert config.model.components["unet"].config["block_out_channels"] == [32, 64]
    assert "reference_unet" not in config.model.components  # the unet's architecture by default


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "optim.lrr: unknown key"),
    ("lrr=1", "lrr: unknown key"),
    ("train.bach_size=3", "train.bach_size: unknown key"),
    ("model.unet.config.block_out_channelz=[8]", "model.unet.config.block_out_channelz: unknown key"),
    ("model.depth_estimator.config.backbone_config.hiden_size=8",
     "model.depth_estimator.config.backbone_config.hiden_size: unknown key"),
    ("model.vae.klass=AutoencoderKL", "model.vae.klass: unknown key"),
    ("data.video.foo=1", "data.video.foo: unknown key"),
])
def test_unknown_keys_are_errors_naming_the_path(config_file, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_with(config_file, override)


def test_unknown_key_suggests_the_close_one(config_file):
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        load_with(config_file, "optim.lrr=1")


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size: must be at least 1"),
    ("train.batch_size=two", "train.batch_size: expected an integer"),
    ("train.reference_drop=1.5", "train.reference_drop: must be at most 1"),
    ("train.mixed_precision=fp8", "train.mixed_precision: expected one of"),
    ("train.trainable=[unet,text_encoder]", "train.trainable: unknown entry 'text_encoder'"),
    ("train.gradient_checkpointing=maybe", "train.gradient_checkpointing: expected true or false"),
    ("optim.lr=0", "optim.lr: must be above 0"),
    ("optim.betas=[0.9]", "optim.betas: expected a list of 2 numbers"),
    ("optim.warmup_steps=10", "optim.warmup_steps: the constant schedule has no warmup"),
    ("model.unet.pretrained=some/where", "model.unet: give either `pretrained` or `config`"),
    ("model.vae.class=VQModel", "model.vae.class: expected one of AutoencoderKL"),
    ("model.pretrained=/no/such/model", "model.unet: not allowed with model.pretrained"),
    ("model.image_encoder=null", "model.image_encoder: required"),
    ("data=null", "data: required"),
])
def test_bad_values_are_errors_naming_the_key(config_file, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_with(config_file, override)


def test_override_values_are_yaml_with_floats_in_e_notation():
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], 1e-4)
    assert parse_override("optim.betas=[0.9, 0.99]") == (["optim", "betas"], [0.9, 0.99])
    assert parse_override("train.max_grad_norm=null") == (["train", "max_grad_norm"], None)
    assert parse_override("train.gradient_checkpointing=true") == (["train", "gradient_checkpointing"], True)
    assert parse_override("output_dir=runs/a=b") == (["output_dir"], "runs/a=b")
    for bad in ("optim.lr", "=3", "optim..lr=1", "a=[1,"):
        with pytest.raises(ConfigError, match="override"):
            parse_override(bad)


def test_overrides_create_mappings_and_index_lists():
    document = {"optim": {"lr": 1.0}, "data": {"static": {"datasets": [{"images": "a"}, {"images": "b"}]}}}
    result = apply_overrides(document, ["optim.lr=2", "checkpoint.every_steps=7", "data.static.datasets.1.images=c"])
    assert result["optim"]["lr"] == 2 and result["checkpoint"] == {"every_steps": 7}
    assert result["data"]["static"]["datasets"][1] == {"images": "c"}
    assert document["optim"]["lr"] == 1.0  # the input is not changed
    with pytest.raises(ConfigError, match="data.static.datasets.5: expected an index below 2"):
        apply_overrides(document, ["data.static.datasets.5.images=x"])
    with pytest.raises(ConfigError, match="optim.lr is a float, not a mapping"):
        apply_overrides(document, ["optim.lr.x=1"])


def test_e_notation_in_the_file_is_a_float(tmp_path):
    document = tiny_document(tmp_path, tmp_path / "run")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(document).replace("lr: 0.001", "lr: 3e-5"))
    assert load_train_config(path).optim.lr == 3e-5


def test_paths_are_relative_to_the_config_and_output_dir_option_to_the_cwd(tmp_path, monkeypatch):
    document = tiny_document(Path("images"), Path("runs/x"))
    (tmp_path / "configs").mkdir()
    config_file = write_config(tmp_path / "configs" / "train.yaml", document)
    config = load_train_config(config_file)
    assert config.output_dir == tmp_path / "configs" / "runs" / "x"
    assert config.data.static.datasets[0].images == tmp_path / "configs" / "images"
    monkeypatch.chdir(tmp_path)
    config = load_train_config(config_file, max_steps=9, output_dir="elsewhere")
    assert config.output_dir == tmp_path / "elsewhere" and config.train.max_steps == 9
    del document["output_dir"]
    assert load_train_config(write_config(config_file, document)).output_dir == tmp_path / "runs" / "train"


def test_shipped_configs_are_valid():
    tiny = load_train_config(CONFIGS / "train-tiny.yaml")
    assert tiny.data.resolution == 64 and tiny.model.pretrained is None
    assert str(tiny.data.video.roots[0]).endswith("shared/data/video")
    sd15 = load_train_config(CONFIGS / "train-sd15.yaml")
    assert sd15.data.resolution == 512 and sd15.train.batch_size == 8 and sd15.optim.lr == 1e-5
    assert sd15.model.components["unet"].pretrained == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert sd15.train.reference_drop == 0.1 and sd15.train.depth_drop == 0.5


def test_cli_accepts_overrides_after_options():
    parser = build_parser()
    args = parser.parse_args(["train", "c.yaml", "--max-steps", "5", "optim.lr=1e-4", "--resume", "train.batch_size=2"])
    assert args.config == Path("c.yaml") and args.max_steps == 5
    assert args.overrides == ["optim.lr=1e-4"] and args.resume == "train.batch_size=2"  # given back in run()
    args = parser.parse_args(["train", "c.yaml", "--resume"])
    assert args.resume == "latest"


def test_cli_reports_config_errors_in_one_line(config_file, capsys):
    assert main(["train", str(config_file), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: optim.lrr: unknown key")
    assert main(["train", str(config_file.parent / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
