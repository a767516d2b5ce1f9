"""Self-supervised training data: video frame pairs and augmented stills, masked for inpainting.

The trainer needs `DataConfig.from_dict` (the `data:` section of its YAML) and `build_dataset`.
"""

from .config import DataConfig
from .dataset import PairDataset, TrainingPair, build_dataset

__all__ = ["DataConfig", "PairDataset", "TrainingPair", "build_dataset"]
