"""Benchmark defaults shared by the library and the CLI (importable without torch, for --help)."""

# The paper names neither backbone. DINOv2 ViT-B/14; CLIP ViT-B/32 is DreamBooth's CLIP-I/CLIP-T choice.
DEFAULT_DINO_MODEL = "facebook/dinov2-base"
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_LPIPS_NET = "alex"  # the lpips package's recommended "forward metric"

# The paper's (and the release runner's) edit settings.
PAPER_STEPS = 50
PAPER_GUIDANCE = 5.0
PAPER_SEED = 1

REFERENCE_MODES = ("true", "mismatched", "none", "flipped")  # flipped: the true one mirrored left-right
