"""Weights: the release's on-disk layout, its key names, safe pickle loading and hub downloads.

The release ships one 9.4 GB pickle (`mimicbrush/mimicbrush.bin`) holding the effective weights of
both U-Nets, the CLIP tower and two small heads, plus SD folders whose U-Net weights the pickle
overrides: we read only their configs. Pickles are opened with `weights_only=True` and memory-mapped,
and every model is built on the meta device and filled tensor by tensor, so peak RAM stays near
the size of the weights in the compute dtype.
"""

from __future__ import annotations

import json
import pickle
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from accelerate import init_empty_weights
from torch import nn

from .errors import WeightsError

RELEASE_REPO = "xichenhku/MimicBrush"
RELEASE_BASE_REPO = "xichenhku/cleansd"
RELEASE_CHECKPOINT = "mimicbrush/mimicbrush.bin"
RELEASE_ENTRIES = ("image_proj", "depth_guider", "referencenet", "image_encoder", "unet")

# Keys the release's reference U-Net lacks: everything after the last block it records.
REFERENCE_UNET_UNUSED = re.compile(
    r"^(conv_norm_out|conv_out)\.|^up_blocks\.3\.attentions\.2\.proj_out\."
    r"|^up_blocks\.3\.attentions\.2\.transformer_blocks\.0\.(attn1\.|norm2\.|attn2\.|norm3\.|ff\.)"
)
# transformers >= 4.31 no longer stores this buffer; the release's checkpoint (4.25) does.
CLIP_DROPPED_KEYS = ("vision_model.embeddings.position_ids",)


# ---------------------------------------------------------------------------------------------
# Safe reading


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch pickle, never running code from the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise WeightsError(f"cannot read {path}: {error}") from None
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"refusing to load {path}: it is not a plain tensor checkpoint "
            f"(weights_only=True rejected it: {_first_line(error)})"
        ) from None
    except Exception as error:  # a damaged file surfaces as many types (RuntimeError, EOFError, KeyError, …)
        raise WeightsError(f"cannot read {path}: {_first_line(error)}") from None
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} does not hold a dict of tensors")
    return dict(state)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_config(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"config not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path} is not valid JSON: {error}") from None


def fill_module(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    dtype: torch.dtype,
    allowed_missing: re.Pattern | None = None,
    ignored_unexpected: Iterable[str] = (),
) -> nn.Module:
    """Load `state` into a (meta-device) module, checking names and shapes, one tensor at a time.

    Missing keys matching `allowed_missing` are zero-filled (the release drops modules whose
    output is never used). Anything else missing, unexpected or misshapen is a WeightsError
    that names the file and the key.
    """
    expected = module.state_dict(keep_vars=True)
    unexpected = sorted(set(state) - set(expected) - set(ignored_unexpected))
    if unexpected:
        raise WeightsError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all)")
    filled = {}
    for key, reference in expected.items():
        tensor = state.get(key)
        if tensor is None:
            if allowed_missing is None or not allowed_missing.search(key):
                raise WeightsError(f"{source}: missing key {key!r}")
            tensor = torch.zeros(reference.shape)
        if tuple(tensor.shape) != tuple(reference.shape):
            raise WeightsError(
                f"{source}: key {key!r} has shape {tuple(tensor.shape)}, the model expects {tuple(reference.shape)}"
            )
        target = dtype if tensor.is_floating_point() else tensor.dtype
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise WeightsError(f"{source}: key {key!r} holds NaN or infinite values")
        filled[key] = tensor.to(target)
    module.load_state_dict(filled, strict=True, assign=True)
    return module


def build_empty(factory):
    """Build a module on the meta device (no memory), for `fill_module` to fill."""
    with init_empty_weights():
        return factory()


def load_saved_component(folder: Path, model_class, dtype: torch.dtype) -> nn.Module:
    """One component of a mimicbrush folder, strictly: a missing, extra or misshapen tensor is an
    error naming the file and key (diffusers and transformers only warn on missing or extra keys,
    leaving a missing weight random), and so is a NaN or infinite value."""
    weights = sorted(folder.glob("*.safetensors"))
    source = str(weights[0] if weights else folder)
    pickles = sorted(folder.glob("*.bin"))
    if pickles and not weights:
        raise WeightsError(f"{pickles[0]}: pickle weights in a mimicbrush folder are never loaded "
                           "(a pickle can run code); save the model as safetensors")
    try:
        loaded = model_class.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise WeightsError(f"{source}: {str(error).strip().splitlines()[0]}") from None
    model, info = loaded if isinstance(loaded, tuple) else (loaded, {})
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(info.get(kind) or [])
        if keys:
            key = keys[0][0] if isinstance(keys[0], tuple) else keys[0]
            raise WeightsError(f"{source}: {kind.replace('_keys', '')} key {key!r} ({len(keys)} in all)")
    check_finite(model, source)
    return model


def check_finite(module: nn.Module, source: str) -> None:
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise WeightsError(f"{source}: key {name!r} holds NaN or infinite values")


# ---------------------------------------------------------------------------------------------
# Depth Anything v1 (original key names) → transformers' DepthAnythingForDepthEstimation


def depth_anything_config(state: Mapping[str, torch.Tensor]):
    """transformers config of a Depth Anything v1 checkpoint, read from its tensor shapes."""
    from transformers import DepthAnythingConfig, Dinov2Config

    hidden_size = state["pretrained.cls_token"].shape[-1]
    num_layers = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("pretrained.blocks."))
    positions = state["pretrained.pos_embed"].shape[1] - 1
    patch_size = state["pretrained.patch_embed.proj.weight"].shape[-1]
    image_size = int(round(positions**0.5)) * patch_size
    backbone = Dinov2Config(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 64,
        mlp_ratio=state["pretrained.blocks.0.mlp.fc1.weight"].shape[0] // hidden_size,
        patch_size=patch_size,
        image_size=image_size,
        # v1 reads the last four blocks, layer-normed, as tokens
        out_indices=list(range(num_layers - 3, num_layers + 1)),
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=patch_size,
        reassemble_hidden_size=hidden_size,
        neck_hidden_sizes=[state[f"depth_head.projects.{i}.weight"].shape[0] for i in range(4)],
        fusion_hidden_size=state["depth_head.scratch.layer1_rn.weight"].shape[0],
        head_hidden_size=state["depth_head.scratch.output_conv2.0.weight"].shape[0],
        depth_estimation_type="relative",
    )


_DEPTH_RENAMES = [
    (r"^pretrained\.cls_token$", "backbone.embeddings.cls_token"),
    (r"^pretrained\.mask_token$", "backbone.embeddings.mask_token"),
    (r"^pretrained\.pos_embed$", "backbone.embeddings.position_embeddings"),
    (r"^pretrained\.patch_embed\.proj\.", "backbone.embeddings.patch_embeddings.projection."),
    (r"^pretrained\.norm\.", "backbone.layernorm."),
    (r"^pretrained\.blocks\.(\d+)\.attn\.proj\.", r"backbone.encoder.layer.\1.attention.o_proj."),
    (r"^pretrained\.blocks\.(\d+)\.ls(\d)\.gamma$", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
    (r"^pretrained\.blocks\.(\d+)\.", r"backbone.encoder.layer.\1."),
    (r"^depth_head\.projects\.(\d)\.", r"neck.reassemble_stage.layers.\1.projection."),
    (r"^depth_head\.resize_layers\.(\d)\.", r"neck.reassemble_stage.layers.\1.resize."),
    (r"^depth_head\.scratch\.layer(\d)_rn\.", lambda m: f"neck.convs.{int(m.group(1)) - 1}."),
    (r"^depth_head\.scratch\.output_conv1\.", "head.conv1."),
    (r"^depth_head\.scratch\.output_conv2\.0\.", "head.conv2."),
    (r"^depth_head\.scratch\.output_conv2\.2\.", "head.conv3."),
]
_FUSION_PARTS = {"out_conv": "projection", "resConfUnit1": "residual_layer1", "resConfUnit2": "residual_layer2"}


def convert_depth_anything_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Depth Anything v1 keys to transformers' names (qkv split into q/k/v)."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        fusion = re.match(r"^depth_head\.scratch\.refinenet(\d)\.(\w+)\.(.*)$", key)
        if fusion:
            # refinenet4 (deepest) is the first fusion layer in transformers
            index, part, rest = 4 - int(fusion.group(1)), fusion.group(2), fusion.group(3)
            rest = rest.replace("conv1", "convolution1").replace("conv2", "convolution2")
            converted[f"neck.fusion_stage.layers.{index}.{_FUSION_PARTS[part]}.{rest}"] = tensor
            continue
        qkv = re.match(r"^pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if qkv:
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                converted[f"backbone.encoder.layer.{qkv.group(1)}.attention.{name}.{qkv.group(2)}"] = chunk
            continue
        for pattern, replacement in _DEPTH_RENAMES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                converted[new_key] = tensor
                break
        else:
            converted[key] = tensor  # reported as unexpected by fill_module
    return converted


_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def load_vae(folder: Path, dtype: torch.dtype):
    """sd-vae-ft-mse from its folder (.safetensors or .bin), accepting the old attention names."""
    from diffusers import AutoencoderKL

    config = read_config(folder / "config.json")
    files = [folder / f"diffusion_pytorch_model.{ext}" for ext in ("safetensors", "bin")]
    weights = next((file for file in files if file.is_file()), None)
    if weights is None:
        raise WeightsError(f"no diffusion_pytorch_model.safetensors or .bin in {folder}")
    state = {}
    for key, tensor in read_state_dict(weights).items():
        legacy = re.match(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$", key)
        if legacy:
            key = f"{legacy.group(1)}.{_LEGACY_VAE_ATTENTION[legacy.group(2)]}.{legacy.group(3)}"
            if tensor.ndim == 4:  # very old checkpoints stored these linears as 1×1 convs
                tensor = tensor[:, :, 0, 0]
        state[key] = tensor
    vae = build_empty(lambda: AutoencoderKL.from_config(config))
    return fill_module(vae, state, str(weights), dtype)


def load_depth_anything_v1(path: Path, dtype: torch.dtype):
    from transformers import DepthAnythingForDepthEstimation

    state = read_state_dict(path)
    if "pretrained.cls_token" not in state:
        raise WeightsError(f"{path}: not a Depth Anything v1 checkpoint (no 'pretrained.cls_token')")
    config = depth_anything_config(state)
    model = build_empty(lambda: DepthAnythingForDepthEstimation(config))
    return fill_module(model, convert_depth_anything_keys(state), str(path), dtype)


# ---------------------------------------------------------------------------------------------
# The release layout


def is_release_layout(path: Path) -> bool:
    return (Path(path) / RELEASE_CHECKPOINT).is_file()


def find_depth_checkpoint(root: Path) -> Path:
    candidates = sorted((root / "depth_model").glob("depth_anything_vit*14.pth"))
    if not candidates:
        raise WeightsError(f"no depth_model/depth_anything_vit*14.pth in {root}")
    return candidates[0]


def load_release_components(root: str | Path, dtype: torch.dtype = torch.float32) -> dict[str, object]:
    """Every component of the release layout, ready for `MimicBrushPipeline(**components)`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .models.depth import DepthGuider
    from .models.image_encoder import ImageProjection
    from .scheduling import release_scheduler

    root = Path(root)
    checkpoint_path = root / RELEASE_CHECKPOINT
    entries = set(read_state_dict(checkpoint_path))
    missing = [entry for entry in RELEASE_ENTRIES if entry not in entries]
    if missing:
        raise WeightsError(f"{checkpoint_path}: missing entry {missing[0]!r} (expected {', '.join(RELEASE_ENTRIES)})")

    def fill(module, entry: str, **checks):
        # the pickle is memory-mapped afresh for each entry and unmapped after it, so only one
        # entry's pages are resident at a time beside the converted weights
        state = read_state_dict(checkpoint_path)[entry]
        return fill_module(module, state, f"{checkpoint_path}[{entry!r}]", dtype, **checks)

    # U-Nets: configs from the SD folders, weights from the checkpoint
    unet_config = read_config(root / "stable-diffusion-inpainting" / "unet" / "config.json")
    unet_config["in_channels"] = 13
    unet = fill(build_empty(lambda: UNet2DConditionModel.from_config(unet_config)), "unet")

    reference_config = read_config(root / "stable-diffusion-v1-5" / "unet" / "config.json")
    reference_unet = fill(build_empty(lambda: UNet2DConditionModel.from_config(reference_config)), "referencenet",
                          allowed_missing=REFERENCE_UNET_UNUSED)

    clip_config = CLIPVisionConfig.from_dict(read_config(root / "image_encoder" / "config.json"))
    image_encoder = fill(build_empty(lambda: CLIPVisionModelWithProjection(clip_config)), "image_encoder",
                         ignored_unexpected=CLIP_DROPPED_KEYS)

    heads = {entry: read_state_dict(checkpoint_path)[entry] for entry in ("image_proj", "depth_guider")}
    projector = heads["image_proj"].get("projector.weight")
    if projector is None:
        raise WeightsError(f"{checkpoint_path}['image_proj']: missing key 'projector.weight'")
    image_proj = fill(build_empty(lambda: ImageProjection(projector.shape[1], projector.shape[0])), "image_proj")

    guider_state = heads["depth_guider"]
    num_blocks = sum(1 for key in guider_state if re.fullmatch(r"blocks\.\d+\.weight", key))
    # widths: conv_in's output, then each stride-2 block's (blocks 1, 3, 5)
    widths = [guider_state["conv_in.weight"].shape[0]] + [
        guider_state[f"blocks.{i}.weight"].shape[0] for i in range(1, num_blocks, 2)
    ]
    vae_scale = 2 ** (len(read_config(root / "sd-vae-ft-mse" / "config.json")["block_out_channels"]) - 1)
    depth_guider = fill(build_empty(
        lambda: DepthGuider(block_out_channels=tuple(widths), resolution=unet_config["sample_size"] * vae_scale)
    ), "depth_guider")
    del heads, guider_state, projector

    vae = load_vae(root / "sd-vae-ft-mse", dtype)
    depth_estimator = load_depth_anything_v1(find_depth_checkpoint(root), dtype)

    return {
        "unet": unet.eval(),
        "reference_unet": reference_unet.eval(),
        "vae": vae.eval(),
        "image_encoder": image_encoder.eval(),
        "image_proj": image_proj.eval(),
        "depth_estimator": depth_estimator.eval(),
        "depth_guider": depth_guider.eval(),
        "scheduler": release_scheduler(),
    }


# ---------------------------------------------------------------------------------------------
# Hub downloads


_RELEASE_FILES = [
    RELEASE_CHECKPOINT,
    "image_encoder/config.json",  # its 2.5 GB weights are overridden by the checkpoint
    "sd-vae-ft-mse/*",
    "depth_model/depth_anything_vitb14.pth",
]
_BASE_FILES = [
    "stable-diffusion-inpainting/unet/config.json",
    "stable-diffusion-v1-5/unet/config.json",
]


def _snapshot(repo_id: str, allow_patterns: list[str] | None = None, revision: str | None = None,
              cache_dir: str | Path | None = None) -> Path:
    """The repo's files in the Hugging Face cache (`cache_dir`, default the user's), checked."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, allow_patterns=allow_patterns, revision=revision,
                                          cache_dir=cache_dir))
    except LocalEntryNotFoundError:
        raise WeightsError(
            f"cannot download {repo_id!r}: no connection to the Hugging Face Hub and nothing cached. "
            "Pass a local folder with --model (release layout or `mimicbrush convert` output)."
        ) from None
    except RepositoryNotFoundError:
        raise WeightsError(f"{repo_id!r} is neither a local folder nor a repository on the Hugging Face Hub") from None
    except (HfHubHTTPError, OSError) as error:
        raise WeightsError(f"cannot download {repo_id!r}: {error}") from None
    verify_snapshot(snapshot)
    return snapshot


_SHA256 = re.compile(r"[0-9a-f]{64}")  # the hub's etag of an LFS file: its sha256
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")  # of a regular file: its git blob id
VERIFIED_RECORDS = "mimicbrush-verified"  # beside the cache's blobs/, one record per verified blob


def verify_snapshot(snapshot: Path) -> int:
    """Check each file of a hub cache snapshot against the hash the hub announced for it.

    huggingface_hub (2.x) checks only the size of a download. The cache names each blob by the
    hub's etag, which is the file's sha256 (LFS files: all weights) or git blob id (small files),
    so the check needs no network. A blob once verified is recorded with its size and mtime and
    not hashed again. Returns how many files were hashed; a mismatch is a WeightsError naming the file.
    """
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    storage = snapshot.parent.parent
    records = storage / VERIFIED_RECORDS
    hashed = 0
    for file in sorted(path for path in snapshot.rglob("*") if path.is_file()):
        blob = file.resolve()
        expected = blob.name
        if blob.parent != storage / "blobs" or not (_SHA256.fullmatch(expected) or _GIT_SHA1.fullmatch(expected)):
            continue  # a copy, not a cache link (filesystems without symlinks): nothing to check against
        stat = blob.stat()
        record = records / expected
        fingerprint = f"{stat.st_size}:{stat.st_mtime_ns}"
        if record.is_file() and record.read_text() == fingerprint:
            continue
        if hashed == 0:
            print(f"verifying {storage.name} against the hub's hashes", file=sys.stderr)
        with blob.open("rb") as stream:
            actual = sha_fileobj(stream).hex() if len(expected) == 64 else git_hash(stream.read())
        hashed += 1
        if actual != expected:
            algorithm = "sha256" if len(expected) == 64 else "git blob id"
            raise WeightsError(
                f"{file.relative_to(snapshot)} in {storage.name} does not match the hub's {algorithm}: "
                f"expected {expected}, got {actual}. The download is corrupt or was tampered with; "
                f"delete {blob} and run again to download it afresh"
            )
        records.mkdir(exist_ok=True)
        record.write_text(fingerprint)
    return hashed


def download_release(repo_id: str = RELEASE_REPO, base_repo_id: str = RELEASE_BASE_REPO,
                     cache_dir: str | Path | None = None) -> Path:
    """Fetch what inference needs from the release's two repos (with progress bars, cached in
    `cache_dir`, default the user's Hugging Face cache), and assemble the release layout beside
    the cache as links into it."""
    release = _snapshot(repo_id, _RELEASE_FILES, cache_dir=cache_dir)
    base = _snapshot(base_repo_id, _BASE_FILES, cache_dir=cache_dir)
    layout = release.parent.parent / "mimicbrush-layout" / release.name
    for snapshot, patterns in ((release, _RELEASE_FILES), (base, _BASE_FILES)):
        for pattern in patterns:
            for file in snapshot.glob(pattern):
                target = layout / file.relative_to(snapshot)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    target.symlink_to(file.resolve())
    if not is_release_layout(layout):
        raise WeightsError(f"{repo_id!r} does not contain {RELEASE_CHECKPOINT}")
    return layout


def resolve_model(name_or_path: str | Path, cache_dir: str | Path | None = None) -> tuple[str, Path | str]:
    """('release', folder) | ('ours', folder or hub id) for a local folder or a hub id; a hub id
    is downloaded into `cache_dir` (a Hugging Face cache; default the user's)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise WeightsError(f"--model must be a folder or a hub id, got the file {path}")
        if (path / "model_index.json").is_file():
            return "ours", path
        if is_release_layout(path):
            return "release", path
        raise WeightsError(
            f"{path} is neither a release-layout folder (no {RELEASE_CHECKPOINT}) "
            "nor a mimicbrush folder (no model_index.json)"
        )
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise WeightsError(f"model folder not found: {name}")
    if name == RELEASE_REPO:
        return "release", download_release(name, cache_dir=cache_dir)
    snapshot = _snapshot(name, cache_dir=cache_dir)
    if (snapshot / "model_index.json").is_file():
        return "ours", snapshot
    if is_release_layout(snapshot):
        raise WeightsError(f"{name!r} holds a release checkpoint but not its SD configs; download it and "
                           f"{RELEASE_BASE_REPO!r} into one release-layout folder and pass that folder")
    raise WeightsError(f"{name!r} is not a MimicBrush model repository (no model_index.json)")
