"""DINO-I / CLIP-I / CLIP-T plumbing against tiny random transformers models loaded by path,
the one-line errors when a model is unavailable, and LPIPS as an optional metric."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimicbrush import imaging
from mimicbrush.benchmark.features import DINO_INPUT_SIDE, ClipEmbedder, DinoEmbedder, cosine_percent
from mimicbrush.benchmark.regions import mask_box, square_for_embedding
from mimicbrush.benchmark.scoring import CaseScorer
from mimicbrush.benchmark.tracks import load_tracks
from mimicbrush.cli import main
from mimicbrush.errors import WeightsError
from mimicbrush.scheduling import release_scheduler

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DREAMBOOTH = SHARED / "data" / "dreambooth"
CLIP_SIDE = 32


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=DINO_INPUT_SIDE,
        patch_size=14,
    )
    folder = tmp_path_factory.mktemp("tiny-dinov2")
    Dinov2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny CLIP with a character-level tokenizer (printable ASCII, no merges)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    characters = [chr(code) for code in range(33, 127)]
    vocabulary = {token: index for index, token in enumerate(characters + [c + "</w>" for c in characters])}
    vocabulary["<|startoftext|>"] = len(vocabulary)
    vocabulary["<|endoftext|>"] = len(vocabulary)
    tokenizer = CLIPTokenizer(vocab=vocabulary, merges=[])
    text_config = {
        "vocab_size": len(vocabulary),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": vocabulary["<|startoftext|>"],
        "eos_token_id": vocabulary["<|endoftext|>"],
        "pad_token_id": vocabulary["<|endoftext|>"],
    }
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": CLIP_SIDE,
        "patch_size": 8,
        "projection_dim": 16,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    if not DREAMBOOTH.is_dir():
        pytest.skip("../shared/data not present")
    return [Image.open(DREAMBOOTH / name).convert("RGB").resize((160, 120)) for name in ("dog/00.jpg", "cat/00.jpg")]


def normalised(image: Image.Image, side: int, mean, std) -> torch.Tensor:
    pixels = np.asarray(square_for_embedding(image, side)).astype(np.float32) / 255.0
    pixels = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]


def test_square_for_embedding_pads_white_without_cropping():
    image = Image.fromarray(np.zeros((20, 60, 3), np.uint8))
    square = np.asarray(square_for_embedding(image, 60))
    assert square.shape == (60, 60, 3)
    assert (square[:15] == 255).all() and (square[-15:] == 255).all() and (square[25:35] == 0).all()


def test_dino_embedding_is_the_cls_token(tiny_dino, photos):
    from transformers import Dinov2Model

    embedder = DinoEmbedder(str(tiny_dino))
    embeddings = embedder.embed(photos)
    assert embeddings.shape == (2, 32)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2))
    reference = Dinov2Model.from_pretrained(tiny_dino).eval()
    with torch.no_grad():
        output = reference(
            pixel_values=normalised(photos[0], DINO_INPUT_SIDE, imaging.IMAGENET_MEAN, imaging.IMAGENET_STD)
        )
    expected = torch.nn.functional.normalize(output.pooler_output, dim=-1)[0]
    assert torch.allclose(embeddings[0], expected, atol=1e-5)
    assert cosine_percent(embeddings[0], embedder.embed([photos[0]])[0]) == pytest.approx(100.0, abs=1e-3)


def test_clip_embeddings_match_vision_with_projection_and_text_features(tiny_clip, photos):
    from transformers import AutoTokenizer, CLIPModel, CLIPVisionModelWithProjection

    embedder = ClipEmbedder(str(tiny_clip))
    images = embedder.embed_images(photos)
    vision = CLIPVisionModelWithProjection.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        image_embeds = vision(
            pixel_values=normalised(photos[1], CLIP_SIDE, imaging.CLIP_MEAN, imaging.CLIP_STD)
        ).image_embeds
    assert torch.allclose(images[1], torch.nn.functional.normalize(image_embeds, dim=-1)[0], atol=1e-5)

    texts = embedder.embed_texts(["a photo of a dog", "a cat"])
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_clip)(["a photo of a dog"], return_tensors="pt")
    with torch.no_grad():
        text_embeds = model(
            input_ids=tokens["input_ids"], pixel_values=torch.zeros(1, 3, CLIP_SIDE, CLIP_SIDE)
        ).text_embeds
    assert torch.allclose(texts[0], torch.nn.functional.normalize(text_embeds, dim=-1)[0], atol=1e-5)


@pytest.fixture
def one_case(tmp_path, photos):
    """A part-composition inter-ID case: reference region = a box of the reference photo."""
    folder = tmp_path / "PartComp" / "CrossInstance"
    folder.mkdir(parents=True)
    photos[0].save(folder / "a_source.png")
    photos[1].save(folder / "a_reference.png")
    mask = np.zeros((120, 160), np.uint8)
    mask[30:90, 40:120] = 255
    Image.fromarray(mask).save(folder / "a_source_mask.png")
    (folder / "track.json").write_text(
        '{"format": 1, "kind": {"task": "part_composition", "identity": "inter_id"}, "cases": '
        '[{"name": "a", "prompt": "a cat", "reference_region": {"box": [40, 30, 120, 90]}}]}'
    )
    (track,) = load_tracks(tmp_path)
    return track.cases[0]


def test_scorer_crops_the_reference_region_and_the_mask_box(tiny_dino, tiny_clip, one_case, photos):
    scorer = CaseScorer.load(str(tiny_dino), str(tiny_clip), None)
    assert scorer.describe()["dino_model"] == str(tiny_dino)
    # An edit whose mask box holds exactly the reference region scores 100 on DINO-I and CLIP-I.
    edit = photos[0].copy()
    edit.paste(photos[1].crop((40, 30, 120, 90)), (40, 30))
    scores = scorer.score(one_case, edit)
    assert scores["dino_i"] == pytest.approx(100.0, abs=1e-3) and scores["clip_i"] == pytest.approx(100.0, abs=1e-3)
    assert scores["ssim_image"] is None  # inter-ID: no ground truth
    text = scorer.clip.embed_texts(["a cat"])[0]
    expected_image = scorer.clip.embed_images([edit])[0]
    assert scores["clip_t_image"] == pytest.approx(max(cosine_percent(expected_image, text), 0.0), abs=1e-4)
    box = mask_box(np.asarray(Image.open(one_case.mask_path)) > 128)
    expected_box = scorer.clip.embed_images([edit.crop(box)])[0]
    assert scores["clip_t_box"] == pytest.approx(max(cosine_percent(expected_box, text), 0.0), abs=1e-4)
    # The unedited source differs from the reference region.
    assert scorer.score(one_case, photos[0])["dino_i"] < 99.9


def test_unavailable_models_are_one_line_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError) as error:
        DinoEmbedder("facebook/dinov2-base")
    message = str(error.value)
    assert "\n" not in message and "'facebook/dinov2-base'" in message and "--dino-model DIR" in message
    with pytest.raises(WeightsError, match="folder not found.*--clip-model"):
        ClipEmbedder(str(tmp_path / "no-such-clip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="--clip-model none"):
        ClipEmbedder(str(tmp_path / "empty"))


def test_cli_run_reports_network_metrics(tiny_dino, tiny_clip, one_case, tmp_path, capsys, monkeypatch):
    def load_pipeline(model, device="auto", dtype="auto"):
        class Pipeline:
            scheduler = release_scheduler()  # `bench run --scheduler` swaps it

            def __call__(self, *, source_image, mask_image, reference_image, **settings):
                return types.SimpleNamespace(images=[source_image])

        return Pipeline()

    monkeypatch.setitem(sys.modules, "mimicbrush.loading", types.SimpleNamespace(load_pipeline=load_pipeline))
    track_root = one_case.folder.parent.parent
    code = main(
        [
            "bench",
            "run",
            str(track_root),
            "--model",
            "m",
            "-o",
            str(tmp_path / "out"),
            "--dino-model",
            str(tiny_dino),
            "--clip-model",
            str(tiny_clip),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    header, _, paper, ours = captured.out.splitlines()
    assert header.split(" | ")[4:] == ["DINO-I", "CLIP-I", "CLIP-T", "CLIP-T box |"]
    assert paper.split(" | ")[4:] == ["56.48", "84.30", "30.08", "– |"]
    assert all(cell.strip(" |") not in ("", "–") for cell in ours.split(" | ")[4:])
    assert "LPIPS skipped" in captured.err
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert main(["bench", "run", str(track_root), "--model", "m", "-o", str(tmp_path / "out2")]) == 2
    assert "cannot load the DINOv2 model 'facebook/dinov2-base'" in capsys.readouterr().err


def test_lpips_is_skipped_with_a_reason_or_plumbed_through(one_case, photos, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lpips", None)  # absent, as here: the package needs torchvision
    skipped = CaseScorer.load(None, None, "alex").skipped["lpips"]
    assert skipped.startswith("LPIPS skipped: the `lpips` package is not importable")

    class MeanAbsoluteDifference(torch.nn.Module):
        def __init__(self, net, verbose):
            super().__init__()
            self.net = net

        def forward(self, first, second):
            assert first.min() >= -1 and first.max() <= 1
            return (first - second).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=MeanAbsoluteDifference))
    scorer = CaseScorer.load(None, None, "vgg")
    assert scorer.describe()["lpips_net"] == "vgg" and "lpips" not in scorer.skipped
    photos[0].save(one_case.folder / "a_gt.png")
    edit = photos[0].copy()
    edit.paste((0, 0, 0), (40, 30, 120, 90))
    scores = scorer.score(one_case, edit)
    truth = np.asarray(photos[0]).astype(np.float64)
    changed = np.asarray(edit).astype(np.float64)
    assert scores["lpips_image"] == pytest.approx(np.abs(truth - changed).mean() / 127.5, rel=1e-4)
    assert scores["lpips_box"] > scores["lpips_image"]
