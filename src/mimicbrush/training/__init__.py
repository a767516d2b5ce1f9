"""Training: config schema, model assembly, the loss, the loop, checkpoints and export.

    config = load_train_config("configs/train-tiny.yaml", ["optim.lr=1e-4"])
    model_dir = train(config)                 # or train(config, resume="latest")
    export_checkpoint(config, "latest")       # a checkpoint -> MimicBrushPipeline folder
"""

from .config import TrainConfig, apply_overrides, load_train_config
from .trainer import TrainingDiverged, export_checkpoint, train

__all__ = ["TrainConfig", "TrainingDiverged", "apply_overrides", "export_checkpoint", "load_train_config", "train"]
