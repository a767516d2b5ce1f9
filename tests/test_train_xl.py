"""Training an XL model: SDXL-shaped U-Nets in `model:` (from config or from saved folders) give
an XL model with nothing else changed; the loss passes SDXL's added conditions to both U-Nets;
resuming equals an uninterrupted run and 2 processes equal 1; the export edits through the command
line; each mismatch is refused in one line before training starts."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from mimicbrush import PooledProjection
from mimicbrush.cli import main
from mimicbrush.errors import ConfigError
from mimicbrush.models.image_encoder import penultimate_hidden_states
from mimicbrush.training import load_train_config, train
from mimicbrush.training.checkpoint import CheckpointStore
from mimicbrush.training.components import build_components
from mimicbrush.training.trainer import build_training_model
from test_train_distributed import FAST_LINEAR_OPTIM, train_in_two_processes
from test_train_model import capture_inputs, sample_batch
from test_train_support import (TINY_MODEL, one_thread, state_of, tiny_document, tiny_xl_model,  # noqa: F401
                                write_config, write_images)
from tiny_models import XL_POOLED_WIDTH, tiny_unet, tiny_xl_unet

pytestmark = pytest.mark.usefixtures("one_thread")

XL_ROLES = ("unet", "reference_unet", "image_proj", "pooled_proj", "depth_guider")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def saved_unets(tmp_path_factory):
    """Tiny SDXL-inpainting (9 channels) and SDXL-base U-Nets in diffusers folders."""
    root = tmp_path_factory.mktemp("sdxl")
    torch.manual_seed(0)
    tiny_xl_unet(9).save_pretrained(root / "sdxl-inpainting" / "unet")
    tiny_xl_unet(4).save_pretrained(root / "sdxl-base" / "unet")
    return root


def xl_document(images, output_dir, model=None, **sections):
    document = tiny_document(images, output_dir, **sections)
    document["model"] = model or tiny_xl_model()
    return document


def load(tmp_path, document, name="train"):
    return load_train_config(write_config(tmp_path / f"{name}.yaml", document))


def from_folders(saved_unets) -> dict:
    """TINY_MODEL with the U-Nets from folders: only `model.unet` and `model.reference_unet` change."""
    return {**copy.deepcopy(TINY_MODEL),
            "unet": {"pretrained": str(saved_unets / "sdxl-inpainting"), "subfolder": "unet"},
            "reference_unet": {"pretrained": str(saved_unets / "sdxl-base"), "subfolder": "unet"}}


def test_xl_unets_from_config_train_an_xl_model_with_its_pooled_projection(tmp_path, images):
    config = load(tmp_path, xl_document(images, tmp_path / "run"))
    model = build_training_model(config)
    pipeline, objective = model.pipeline, model.objective
    assert pipeline.config.backbone == "sdxl"
    assert pipeline.reference_unet.config.addition_embed_type == "text_time"  # the reference U-Net keeps it
    assert (pipeline.pooled_proj.config.in_features, pipeline.pooled_proj.config.out_features) == (32, XL_POOLED_WIDTH)
    assert torch.count_nonzero(pipeline.pooled_proj.projector.weight) == 0  # SDXL's empty-prompt vector at start
    assert "pooled_proj" in objective.trainable  # the default train.trainable adds it for an XL model

    pipeline.pooled_proj.projector.reset_parameters()  # as after some training, so rows differ
    seen = capture_inputs(model)
    batch = sample_batch([True, False, True], [True, True, False])
    objective(batch).backward()
    assert torch.count_nonzero(pipeline.pooled_proj.projector.weight.grad) > 0

    clip = torch.where(batch["keep_reference"].view(-1, 1, 1, 1), batch["clip_pixels"], 0.0)
    with torch.no_grad():
        pooled = pipeline.pooled_proj(penultimate_hidden_states(pipeline.image_encoder, clip)[:, 0])
    added = seen["unet"][1]["added_cond_kwargs"]
    torch.testing.assert_close(added["text_embeds"], pooled)  # a dropped reference: the unconditional vector
    torch.testing.assert_close(added["time_ids"], torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 3))
    reference_added = seen["reference_unet"][1]["added_cond_kwargs"]
    torch.testing.assert_close(reference_added["text_embeds"], pooled[[0, 2]])  # the kept rows, each its own
    torch.testing.assert_close(reference_added["time_ids"], added["time_ids"][:2])


def test_saved_sdxl_unet_folders_are_widened_and_paired(tmp_path, images, saved_unets):
    config = load(tmp_path, xl_document(images, tmp_path / "run", model=from_folders(saved_unets)))
    components = build_components(config.model, 32, seed=0)
    saved = state_of(saved_unets / "sdxl-inpainting", "unet")
    unet = components["unet"]
    assert unet.conv_in.in_channels == 13 and torch.count_nonzero(unet.conv_in.weight[:, 9:]) == 0
    assert torch.equal(unet.conv_in.weight[:, :9], saved["conv_in.weight"])
    reference = state_of(saved_unets / "sdxl-base", "unet")
    assert torch.equal(components["reference_unet"].add_embedding.linear_1.weight,
                       reference["add_embedding.linear_1.weight"])
    assert components["pooled_proj"].config.out_features == XL_POOLED_WIDTH


# ---------------------------------------------------------------------------------------------
# Mismatches, each one line before training starts


def release_layout(root):
    """What model.pretrained sees of the release layout: its checkpoint file and the SD-1.5 configs."""
    (root / "mimicbrush").mkdir(parents=True)
    (root / "mimicbrush" / "mimicbrush.bin").write_bytes(b"")  # never read: the config is refused first
    tiny_unet(9).save_config(root / "stable-diffusion-inpainting" / "unet")
    return root


def sd15_reference(model, _):
    model["reference_unet"] = copy.deepcopy(TINY_MODEL["unet"])


def reference_without_added_embedding(model, _):  # IDM-VTON's garment U-Net
    config = {key: value for key, value in model["unet"]["config"].items()
              if key not in ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")}
    model["reference_unet"] = {"config": config}


def reference_with_other_time_ids(model, _):
    config = dict(model["unet"]["config"], addition_time_embed_dim=4, projection_class_embeddings_input_dim=40)
    model["reference_unet"] = {"config": config}


def pooled_projection(width_in, width_out):
    def change(model, tmp_path):
        PooledProjection(width_in, width_out).save_pretrained(tmp_path / "pooled")
        model["pooled_proj"] = {"pretrained": str(tmp_path / "pooled")}
    return change


def refiner(model, _):
    model["unet"]["config"]["projection_class_embeddings_input_dim"] = 5 * 8 + 1280


MISMATCHES = {
    "sd15 reference": (sd15_reference, "model.reference_unet: cross_attention_dim 32 != the imitative U-Net's 48"),
    "no added embedding": (reference_without_added_embedding,
                           "model.reference_unet: addition_embed_type None, but the imitative U-Net has text_time, "
                           "projection_class_embeddings_input_dim 64 with addition_time_embed_dim 8: the reference "
                           "U-Net keeps SDXL's added embedding"),
    "other time ids": (reference_with_other_time_ids,
                       "model.reference_unet: text_time, projection_class_embeddings_input_dim 40 with "
                       "addition_time_embed_dim 4, but the imitative U-Net has text_time, "
                       "projection_class_embeddings_input_dim 64 with addition_time_embed_dim 8"),
    "pooled width": (pooled_projection(32, 8), "model.pooled_proj: out_features 8 != 16, the pooled width of the "
                                               "imitative U-Net \\(projection_class_embeddings_input_dim 64 − 6 × "
                                               "addition_time_embed_dim 8\\)"),
    "pooled input": (pooled_projection(64, 16), "model.pooled_proj: in_features 64 != the image encoder's "
                                                "hidden_size 32"),
    "refiner": (refiner, "model.unet: a refiner-style added embedding: projection_class_embeddings_input_dim 1320 = "
                         "5 × addition_time_embed_dim 8 \\+ 1280 \\(five time ids, as SDXL-refiner's\\), but "
                         "MimicBrush-XL gives six"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_mismatched_components_are_refused_in_one_line(tmp_path, images, case):
    change, message = MISMATCHES[case]
    model = tiny_xl_model()
    change(model, tmp_path)
    config = load(tmp_path, xl_document(images, tmp_path / "run", model=model))
    with pytest.raises(ConfigError, match=f"^{message}") as raised:
        build_components(config.model, 32, seed=0)
    assert "\n" not in str(raised.value)


def test_sdxl_entries_beside_an_sd15_release_layout_are_refused(tmp_path, images, saved_unets):
    model = {"pretrained": str(release_layout(tmp_path / "release")),
             "unet": {"pretrained": str(saved_unets / "sdxl-inpainting"), "subfolder": "unet"}}
    with pytest.raises(ConfigError, match=r"^model.unet: SDXL-shaped \(addition_embed_type text_time, "
                                          r"cross_attention_dim 48\), but model.pretrained .*release is an SD-1.5 "
                                          r"MimicBrush \(release layout: no added embedding, cross_attention_dim 32\)"):
        load(tmp_path, xl_document(images, tmp_path / "run", model=model))


def test_sd15_models_take_no_pooled_projection(tmp_path, images):
    document = tiny_document(images, tmp_path / "run")
    document["model"]["pooled_proj"] = {"config": {}}
    with pytest.raises(ConfigError, match="^model.pooled_proj: only an SDXL-shaped imitative U-Net"):
        build_components(load(tmp_path, document).model, 32, seed=0)
    document = tiny_document(images, tmp_path / "run", train={"trainable": ["unet", "pooled_proj"]})
    with pytest.raises(ConfigError, match=r"^train.trainable: pooled_proj, but this model has none \(an SD-1.5"):
        build_training_model(load(tmp_path, document))


def test_sdxls_vae_stays_float32_under_fp16_mixed_precision(tmp_path, images):
    """SDXL's VAE overflows in fp16: frozen, it is kept in float32 while the other frozen parts
    are stored in fp16, and the loss runs it outside autocast (a tiny VAE never overflows, so the
    dtype is what is checked)."""
    from mimicbrush.training.trainer import place_for_training

    model = build_training_model(load(tmp_path, xl_document(images, tmp_path / "run")))
    place_for_training(model.objective, torch.device("cpu"), "fp16", False)  # as the trainer does
    assert model.pipeline.vae.dtype == torch.float32 and model.pipeline.image_encoder.dtype == torch.float16
    seen = []
    encode = model.pipeline.vae.encode
    model.pipeline.vae.encode = lambda sample: seen.append((sample.dtype, torch.is_autocast_enabled("cpu"))) \
        or encode(sample)
    with torch.autocast("cpu", dtype=torch.float16):
        model.objective(sample_batch([True, False], [True, False]))
    assert seen == [(torch.float32, False)]
    sd15 = build_training_model(load(tmp_path, tiny_document(images, tmp_path / "sd15")))
    place_for_training(sd15.objective, torch.device("cpu"), "fp16", False)
    assert sd15.pipeline.vae.dtype == torch.float16  # SD-1.5 keeps storing its frozen VAE in fp16


# ---------------------------------------------------------------------------------------------
# The loop


def test_resuming_an_xl_run_gives_the_uninterrupted_run_and_its_export_edits(tmp_path, images, saved_unets):
    """From saved SDXL-shaped U-Net folders; then the exported model edits through the command line."""
    sections = {"train": {"max_steps": 3}, "checkpoint": {"every_steps": 2}}
    straight = load(tmp_path, xl_document(images, tmp_path / "straight", model=from_folders(saved_unets), **sections),
                    "straight")
    model_dir = train(straight)
    interrupted = load(tmp_path, xl_document(images, tmp_path / "interrupted", model=from_folders(saved_unets),
                                             **sections), "interrupted")
    train(load_train_config(interrupted.config_path, ["train.max_steps=2"]))  # stops at 2, as a kill would
    assert CheckpointStore(interrupted.output_dir / "checkpoints").latest().name == "step-00000002"
    train(interrupted, resume="latest")
    for component in XL_ROLES:
        expected, resumed = state_of(model_dir, component), state_of(interrupted.output_dir / "model", component)
        assert all(torch.equal(resumed[key], expected[key]) for key in expected), component

    source = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(source).save(tmp_path / "source.png")
    Image.fromarray(source[::-1].copy()).save(tmp_path / "reference.png")
    outputs = []
    for name in ("first.png", "again.png"):
        assert main(["edit", str(tmp_path / "source.png"), "--mask", "8,8,30,30", "--reference",
                     str(tmp_path / "reference.png"), "-o", str(tmp_path / name), "--model", str(model_dir),
                     "--steps", "2", "--seed", "3", "--device", "cpu"]) == 0
        outputs.append(np.asarray(Image.open(tmp_path / name).convert("RGB")))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    outside = np.ones(source.shape[:2], bool)
    outside[0:40, 0:40] = False  # the box and its feathered edge
    np.testing.assert_array_equal(outputs[0][outside], source[outside])
    assert np.abs(outputs[0][8:30, 8:30].astype(int) - source[8:30, 8:30]).mean() > 5


def test_two_processes_match_one_process_for_an_xl_model(tmp_path, images):
    document = xl_document(images, tmp_path / "ddp", train={"max_steps": 2, "batch_size": 1},
                           optim=FAST_LINEAR_OPTIM, checkpoint={"every_steps": 2})
    config_path = write_config(tmp_path / "ddp.yaml", document)
    completed = train_in_two_processes(config_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "training on 2 process(es)" in completed.stderr and "pooled_proj" in completed.stderr

    single = load_train_config(config_path, ["train.batch_size=2", f"output_dir={tmp_path / 'single'}"])
    train(single)
    for component in ("unet", "reference_unet"):
        two, one = state_of(tmp_path / "ddp" / "model", component), state_of(tmp_path / "single" / "model", component)
        for key in one:
            torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=0, msg=key)
    # the pooled projection starts at zero and moves little in 2 steps: compared relative to its move
    two, one = (state_of(tmp_path / run / "model", "pooled_proj")["projector.weight"] for run in ("ddp", "single"))
    assert one.abs().max() > 1e-6
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-3 * one.abs().max().item())


def test_the_tiny_xl_config_is_the_tiny_config_in_sdxl_shape():
    """configs/train-tiny-xl.yaml changes the U-Nets (and what trains) and nothing else, so the two
    tiny runs compare the backbones."""
    from test_train_support import CONFIGS

    tiny, tiny_xl = (load_train_config(CONFIGS / name, []) for name in ("train-tiny.yaml", "train-tiny-xl.yaml"))
    assert tiny_xl.data == tiny.data and tiny_xl.optim == tiny.optim and tiny_xl.seed == tiny.seed
    assert tiny_xl.train.trainable == (*tiny.train.trainable[:3], "pooled_proj", tiny.train.trainable[3])
    same = ("vae", "image_encoder", "depth_estimator")
    assert all(tiny_xl.model.components[role].config.items() >= tiny.model.components[role].config.items()
               for role in same)
    model = build_training_model(tiny_xl)
    assert model.pipeline.config.backbone == "sdxl" and model.pipeline.resolution == 64
    assert model.pipeline.pooled_proj.config.out_features == 32 and "pooled_proj" in model.objective.trainable
