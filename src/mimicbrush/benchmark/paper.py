"""The paper's reported numbers (Chen et al., 2024, MimicBrush), shipped as a reference row."""

PAPER_LABEL = "MimicBrush (paper)"

# track id -> metric key -> value, on the paper's own (never released) benchmark data.
PAPER_RESULTS = {
    "PartComp/WithinInstance": {"ssim_image": 0.70, "psnr_image": 17.54, "lpips_image": 0.28},
    "PartComp/CrossInstance": {"dino_i": 56.48, "clip_i": 84.30, "clip_t_image": 30.08},
}
