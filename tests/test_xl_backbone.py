"""The SDXL backbone in the pipeline, on tiny SDXL-shaped components: the backbone follows the
imitative U-Net, reference attention pairs layers by name, SDXL's added conditions reach both
U-Nets as data, the VAE runs in fp32 where its config says force_upcast, and an XL model folder
saves, loads and edits like any other."""

import json
import shutil

import numpy as np
import pytest
import torch

from mimicbrush import MimicBrushPipeline
from mimicbrush.errors import WeightsError
from mimicbrush.models.reference_attention import ReferenceReadProcessor, reference_block_names
from benchmark_scripts import load_benchmark
from test_pipeline import edit, images  # noqa: F401  (2 steps, the box 10,5,40,30, seed 0)
from test_train_support import one_thread  # noqa: F401
from tiny_models import XL_POOLED_WIDTH, tiny_pipeline, tiny_xl_components, tiny_xl_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

BOX = "10,5,40,30"  # test_pipeline.edit's


@pytest.fixture(scope="module")
def pipe():
    return tiny_xl_pipeline()


@pytest.fixture(scope="module")
def sd15_pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    """The XL pipeline saved as a model folder."""
    folder = tmp_path_factory.mktemp("saved") / "xl"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def sources(images):
    """The source and two references."""
    source, reference, other = images
    return source, [reference, other]


def record_calls(module, seen: list):
    """Each forward's keyword arguments (added_cond_kwargs among them)."""
    return module.register_forward_pre_hook(lambda _, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)


def test_the_backbone_follows_the_imitative_unet(pipe, sd15_pipe):
    assert pipe.config.backbone == "sdxl" and pipe.resolution == 32
    assert pipe.pooled_proj.config.out_features == XL_POOLED_WIDTH
    assert sd15_pipe.config.backbone == "sd15" and sd15_pipe.pooled_proj is None


def test_each_imitative_layer_reads_the_same_named_reference_layer(pipe, sources):
    """Layers of different depth have different widths and inputs: the bank of each imitative
    layer must be the input of the reference layer with its own name."""
    names = reference_block_names(pipe.unet)
    assert names == reference_block_names(pipe.reference_unet)
    assert len(names) == 8  # mid 2 + up 2×2 + 2×1 (SDXL: 10 + 3×10 + 3×2 = 46)
    modules = dict(pipe.reference_unet.named_modules())
    written, hooks = {}, []

    def keep(name):
        def hook(module, args, kwargs):
            written.setdefault(name, args[0] if args else kwargs["hidden_states"])
        return hook

    for name in names:
        hooks.append(modules[name].register_forward_pre_hook(keep(name), with_kwargs=True))
    read = {}
    hooks.append(pipe.unet.register_forward_pre_hook(lambda *_: read.update(pipe.bank.features)))
    try:
        source, references = sources
        edit(pipe, source, references[0], num_inference_steps=1)
    finally:
        for hook in hooks:
            hook.remove()
    assert set(read) == set(names)
    for name in names:
        assert read[name] is written[name], name


def test_sdxl_sized_unets_pair_their_46_layers_by_name():
    """SDXL's own U-Net configs (benchmarks/bench_inference.py's, on the meta device): 46 of their
    70 self-attention layers take part, up to 10 per block, each reader with its namesake."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from mimicbrush.models.reference_attention import (ReferenceBank, ReferenceWriteProcessor,
                                                       attach_reference_attention)

    bench = load_benchmark("bench_inference")
    with init_empty_weights():
        unet, reference = (UNet2DConditionModel(in_channels=channels, **bench.XL_SIZES["full"]["unet"])
                           for channels in (13, 4))
    attach_reference_attention(reference, unet, ReferenceBank())
    readers = [name for name, processor in unet.attn_processors.items() if isinstance(processor, ReferenceReadProcessor)]
    writers = {name: processor for name, processor in reference.attn_processors.items()
               if isinstance(processor, ReferenceWriteProcessor)}
    assert len(readers) == 46 and sum(name.endswith("attn1.processor") for name in unet.attn_processors) == 70
    assert sorted(readers) == sorted(writers)
    assert all(writers[name].name == name.removesuffix(".processor") for name in writers)
    assert max(sum(name.startswith(f"{block}.attentions.{index}.") for name in readers)
               for block in ("mid_block", "up_blocks.0", "up_blocks.1") for index in range(3)) == 10


def test_added_conditions_reach_both_unets_as_data(pipe, sources):
    """Each row's pooled vector (the mean of its references'; the unconditional row that of the
    all-zero encoder input) and (R, R, 0, 0, R, R) at the edit's resolution; the reference U-Net
    gets each reference's own pooled vector."""
    source, references = sources
    unet_calls, reference_calls = [], []
    hooks = [record_calls(pipe.unet, unet_calls), record_calls(pipe.reference_unet, reference_calls)]
    try:
        edit(pipe, source, references, num_inference_steps=1, resolution=64)
    finally:
        for hook in hooks:
            hook.remove()
    inputs = pipe.prepare_inputs(source, BOX, references, 64)
    with torch.no_grad():
        _, pooled = pipe.encode_images(torch.from_numpy(inputs.clip_pixels))
        _, unconditional = pipe.encode_images(torch.zeros(1, 3, 32, 32))
    assert not torch.allclose(pooled[0], pooled[1])
    expected_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)

    added = unet_calls[0][1]["added_cond_kwargs"]
    torch.testing.assert_close(added["text_embeds"], torch.stack([unconditional[0], pooled.mean(0)]))
    torch.testing.assert_close(added["time_ids"], expected_ids)
    reference_added = reference_calls[0][1]["added_cond_kwargs"]
    torch.testing.assert_close(reference_added["text_embeds"], pooled)  # one row per reference
    torch.testing.assert_close(reference_added["time_ids"], expected_ids)


def test_the_pooled_vector_changes_the_edit(pipe, sources):
    source, references = sources
    baseline = np.asarray(edit(pipe, source, references[0]).model_images[0])
    weight = pipe.pooled_proj.projector.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(-1)
    try:
        flipped = np.asarray(edit(pipe, source, references[0]).model_images[0])
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert np.abs(baseline.astype(int) - flipped).max() > 0


def test_saved_xl_model_reloads_and_edits_the_same_pixels(pipe, sources, saved):
    source, references = sources
    index = json.loads((saved / "model_index.json").read_text())
    assert index["backbone"] == "sdxl" and index["pooled_proj"] == ["mimicbrush.models.image_encoder", "PooledProjection"]
    loaded = MimicBrushPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.backbone == "sdxl"
    first = np.asarray(edit(pipe, source, references[0]).images[0])
    again = np.asarray(edit(loaded, source, references[0]).images[0])
    np.testing.assert_array_equal(first, again)
    outside = np.ones(source.shape[:2], bool)
    outside[0:40, 0:52] = False  # the box 10,5,40,30 and its feathered edge
    np.testing.assert_array_equal(first[outside], source[outside])
    assert np.abs(first[5:30, 10:40].astype(int) - source[5:30, 10:40]).mean() > 5


def test_a_folder_whose_backbone_contradicts_its_unet_is_refused(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "xl")
    index_path = tmp_path / "xl" / "model_index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**index, "backbone": "sd15"}))
    with pytest.raises(WeightsError, match=r"^backbone: the model says 'sd15', but its imitative U-Net is "
                                           r"sdxl-shaped \(text_time, "):
        MimicBrushPipeline.from_pretrained(tmp_path / "xl")
    index_path.write_text(json.dumps({key: value for key, value in index.items() if key != "pooled_proj"}))
    with pytest.raises(WeightsError, match="^pooled_proj: missing: an SDXL-shaped U-Net takes a 16-wide pooled vector"):
        MimicBrushPipeline.from_pretrained(tmp_path / "xl")


def test_an_sd15_reference_unet_with_an_xl_unet_is_refused(sd15_pipe):
    components = tiny_xl_components()
    components["reference_unet"] = sd15_pipe.reference_unet
    with pytest.raises(WeightsError, match="^reference_unet: addition_embed_type None, but the imitative U-Net has "
                                           "text_time, projection_class_embeddings_input_dim 64"):
        MimicBrushPipeline(**components)


@pytest.mark.parametrize("force_upcast, backbone, expected", [
    (True, "sdxl", torch.float32),
    (False, "sdxl", torch.float16),
    (True, "sd15", torch.float16),  # SD-1.5 keeps the release's fp16 VAE, as diffusers' SD pipelines do
])
def test_the_vae_runs_in_fp32_where_force_upcast_says_so(pipe, sd15_pipe, force_upcast, backbone, expected):
    """The edit's VAE encode (posterior sample) and decode with the VAE stored in fp16. A tiny
    random VAE never overflows, so the dtype it runs in is what is checked."""
    model = pipe if backbone == "sdxl" else sd15_pipe
    vae, stated = model.vae, model.vae.config.force_upcast
    seen = []
    for method in ("encode", "decode"):
        original = getattr(vae, method)

        def record(sample, *args, original=original, method=method, **kwargs):
            seen.append((method, sample.dtype, vae.dtype))
            return original(sample, *args, **kwargs)

        setattr(vae, method, record)
    vae.register_to_config(force_upcast=force_upcast)
    vae.to(dtype=torch.float16)
    try:
        pixels = np.random.default_rng(1).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():  # as in the pipeline's __call__
            latents = model._posterior_sample(pixels, torch.Generator().manual_seed(0))
            image = model.decode_latents(latents)
        assert vae.dtype == torch.float16  # cast back after each use
    finally:
        del vae.encode, vae.decode
        vae.register_to_config(force_upcast=stated)
        vae.to(dtype=torch.float32)
    assert [method for method, _, _ in seen] == ["encode", "decode"]
    assert all(sample == expected and weights == expected for _, sample, weights in seen), seen
    assert image.shape == (32, 32, 3) and torch.isfinite(latents).all()
