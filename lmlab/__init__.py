"""lmlab: the model and training code behind the workbook on how language models are pretrained."""

__version__ = "0.1.0"

from .config import ModelConfig, TrainConfig  # noqa: E402
from .device import pick_device, profile, seed_everything  # noqa: E402
from .generate import generate  # noqa: E402
from .model import Transformer  # noqa: E402
from .train import Run, TrainingDiverged, evaluate, train  # noqa: E402

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
