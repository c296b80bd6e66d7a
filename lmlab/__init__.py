"""lmlab: the model and training code behind the workbook on how language models are pretrained."""

from .config import ModelConfig, TrainConfig
from .device import pick_device, profile, seed_everything
from .evaluation import evaluate
from .generate import generate
from .model import Transformer
from .train import Run, TrainingDiverged, train
from .version import __version__

__all__ = [
    "ModelConfig",
    "Run",
    "TrainConfig",
    "TrainingDiverged",
    "Transformer",
    "__version__",
    "evaluate",
    "generate",
    "pick_device",
    "profile",
    "seed_everything",
    "train",
]
