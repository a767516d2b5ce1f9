"""Unsafe and tampered weights: pickles never run code, damaged files are named, downloads are
checked against the hub's hashes, `convert` never writes over its input (docs/reliability.md)."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from tiny_models import tiny_pipeline

from mimicbrush import MimicBrushPipeline, weights
from mimicbrush.cli import main
from mimicbrush.errors import WeightsError


class RunsCode:
    """Unpickling this runs a shell command that leaves `marker` behind."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "code-ran"
    yield path
    assert not path.exists(), "a weight file ran code"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # pickle.dump's protocol, torch warns
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_checkpoint_that_runs_code_is_refused_and_never_runs(tmp_path, marker, writer):
    path = tmp_path / "mimicbrush.bin"
    state = {"unet": {"conv_in.weight": torch.zeros(1)}, "image_proj": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as file:
            pickle.dump(state, file)
    with pytest.raises(WeightsError, match=f"refusing to load {path}.*not a plain tensor checkpoint"):
        weights.read_state_dict(path)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ours") / "tiny"
    tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def test_our_format_folder_with_a_code_pickle_is_refused_in_one_line(tiny_folder, tmp_path, marker, capsys):
    folder = tmp_path / "tampered"
    shutil.copytree(tiny_folder, folder)
    component = folder / "image_proj"
    (component / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"projector.weight": RunsCode(marker)}, component / "diffusion_pytorch_model.bin")
    source = tmp_path / "source.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(source)
    code = main(["edit", str(source), "--mask", "2,2,8,8", "--reference", str(source), "-o", str(tmp_path / "o.png"),
                 "--model", str(folder)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert str(component / "diffusion_pytorch_model.bin") in error and "pickle" in error


def _truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "name,damage,message",
    [
        ("weights.bin", _truncated, "cannot read"),
        ("weights.bin", lambda path: path.write_bytes(b""), "cannot read"),
        ("weights.bin", lambda path: path.write_text('{"not": "a pickle"}'), "cannot read|refusing to load"),
        ("weights.safetensors", _truncated, "cannot read"),
        ("weights.safetensors", lambda path: path.write_bytes(b"\xff" * 8 + b"{garbage"), "cannot read"),
    ],
)
def test_damaged_weight_file_is_named(tmp_path, name, damage, message):
    path = tmp_path / name
    state = {"weight": torch.arange(1000.0)}
    save_file(state, path) if name.endswith(".safetensors") else torch.save(state, path)
    damage(path)
    with pytest.raises(WeightsError, match=message) as refused:
        weights.read_state_dict(path)
    assert str(path) in str(refused.value)


def _checkpoint_seeds(folder) -> dict[str, bytes]:
    """The same small state dict in each format read_state_dict accepts."""
    state = {"conv.weight": torch.arange(24.0).view(2, 3, 2, 2), "step": torch.tensor(7)}
    paths = {"zip.bin": folder / "zip.bin", "legacy.bin": folder / "legacy.bin", "file.safetensors": folder / "f.st"}
    torch.save(state, paths["zip.bin"])
    torch.save(state, paths["legacy.bin"], _use_new_zipfile_serialization=False)
    save_file(state, paths["file.safetensors"])
    return {name: path.read_bytes() for name, path in paths.items()}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # a mutated protocol byte
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_weight_files_load_or_raise_weights_error(tmp_path_factory, data):
    folder = tmp_path_factory.getbasetemp()
    seeds = _checkpoint_seeds(folder)
    name = data.draw(st.sampled_from(sorted(seeds)))
    contents = bytearray(seeds[name])
    for position, value in data.draw(st.lists(st.tuples(st.integers(0, len(contents) - 1), st.integers(0, 255)),
                                              max_size=6)):
        contents[position] = value
    cut = data.draw(st.integers(0, len(contents)))
    path = folder / f"mutated{Path(name).suffix}"
    path.write_bytes(bytes(contents[:cut]))
    try:
        state = weights.read_state_dict(path)
    except WeightsError as error:
        assert str(path) in str(error)
        return
    assert all(isinstance(key, str) for key in state)


@pytest.fixture
def vae_folder(tmp_path):
    """A tiny sd-vae-ft-mse folder, as the release layout holds it."""
    vae = AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), layers_per_block=1, norm_num_groups=8, latent_channels=4)
    vae.save_pretrained(tmp_path / "sd-vae-ft-mse", safe_serialization=True)
    return tmp_path / "sd-vae-ft-mse"


def _set(key, tensor):
    return lambda state: state.__setitem__(key, tensor)


@pytest.mark.parametrize(
    "tamper,message",
    [
        (_set("encoder.conv_in.weight", torch.zeros(1, 3, 3, 3)), "'encoder.conv_in.weight' has shape"),
        (lambda state: state.pop("decoder.conv_out.bias"), "missing key 'decoder.conv_out.bias'"),
        (_set("decoder.backdoor.weight", torch.zeros(1)), "unexpected key 'decoder.backdoor.weight'"),
        (_set("quant_conv.bias", torch.full((8,), float("inf"))), "'quant_conv.bias' holds NaN or infinite"),
    ],
)
def test_tampered_release_component_names_file_and_key(vae_folder, tamper, message):
    path = vae_folder / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    tamper(state)
    save_file(state, path)
    with pytest.raises(WeightsError, match=message) as refused:
        weights.load_vae(vae_folder, torch.float32)
    assert str(path) in str(refused.value)


@pytest.mark.parametrize("tamper", ["missing", "unexpected", "shape"])
def test_tampered_our_format_folder_names_file_and_key(tiny_folder, tmp_path, tamper):
    folder = tmp_path / "tampered"
    shutil.copytree(tiny_folder, folder)
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    if tamper == "missing":
        del state["conv_in.bias"]
    elif tamper == "unexpected":
        state["backdoor.weight"] = torch.zeros(1)
    else:
        state["conv_in.bias"] = torch.zeros(3)
    save_file(state, path)
    with pytest.raises(WeightsError, match=f"{path}.*conv_in.bias|{path}.*backdoor.weight"):
        MimicBrushPipeline.from_pretrained(folder)


# --- downloads -----------------------------------------------------------------------------


def _git_blob_id(contents: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(contents) + contents).hexdigest()


@pytest.fixture
def hub_cache(tmp_path):
    """A Hugging Face cache entry as huggingface_hub lays it out: blobs named by the hub's etag
    (sha256 for LFS files, the git blob id for small ones), a snapshot of links into them."""
    storage = tmp_path / "models--someone--model"
    snapshot = storage / "snapshots" / ("c" * 40)
    files = {"unet/diffusion_pytorch_model.safetensors": (b"\x01" * 4096, "sha256"),
             "model_index.json": (b'{"_class_name": "MimicBrushPipeline"}', "git")}
    for name, (contents, kind) in files.items():
        etag = hashlib.sha256(contents).hexdigest() if kind == "sha256" else _git_blob_id(contents)
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(contents)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def test_intact_download_is_verified_once(hub_cache):
    assert weights.verify_snapshot(hub_cache) == 2
    assert weights.verify_snapshot(hub_cache) == 0  # recorded: not hashed again


@pytest.mark.parametrize("name", ["unet/diffusion_pytorch_model.safetensors", "model_index.json"])
def test_corrupt_download_is_refused_naming_the_file(hub_cache, name):
    weights.verify_snapshot(hub_cache)
    blob = (hub_cache / name).resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")  # one byte changed after it was verified
    with pytest.raises(WeightsError, match=f"{name} in models--someone--model does not match the hub's") as refused:
        weights.verify_snapshot(hub_cache)
    assert blob.name in str(refused.value) and f"delete {blob}" in str(refused.value)


def test_every_hub_download_goes_through_verification(hub_cache, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *args, **kwargs: str(hub_cache))
    assert weights._snapshot("someone/model") == hub_cache
    blob = (hub_cache / "unet/diffusion_pytorch_model.safetensors").resolve()
    blob.write_bytes(b"\x02" * 4096)
    with pytest.raises(WeightsError, match="does not match the hub's sha256"):
        weights._snapshot("someone/model")


# --- convert -------------------------------------------------------------------------------


@pytest.fixture
def release_dir(tmp_path):
    """Enough of a release layout for `convert`'s checks, which come before any loading."""
    root = tmp_path / "data" / "release"
    (root / "mimicbrush").mkdir(parents=True)
    (root / "mimicbrush" / "mimicbrush.bin").write_bytes(b"precious")
    return root


@pytest.mark.parametrize("target", [".", "inside", "..", "../.."])
def test_convert_never_writes_over_or_into_its_input(release_dir, target, capsys):
    output = (release_dir / target).resolve()
    assert main(["convert", str(release_dir), str(output), "--force"]) == 2
    assert "outside RELEASE_DIR" in capsys.readouterr().err
    assert (release_dir / "mimicbrush" / "mimicbrush.bin").read_bytes() == b"precious"
    assert sorted(path.name for path in release_dir.rglob("*")) == ["mimicbrush", "mimicbrush.bin"]


def test_convert_refuses_a_non_empty_output_without_force(release_dir, tmp_path, capsys):
    output = tmp_path / "converted"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert main(["convert", str(release_dir), str(output)]) == 2
    assert "not empty" in capsys.readouterr().err and (output / "keep.txt").read_text() == "mine"
