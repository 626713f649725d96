"""Training the tutorial's MLP with jaxce: settings, data, model, compiled loop, checkpoints, runs.

Public names (everything else is private to the package):

- settings and errors: `Config`, `TrainingError` and its kinds (`ConfigError`, `DataError`,
  `RunDirError`, `ResumeError`, `NonFiniteLossError`, `LaunchError`)
- data: `Dataset`, `ChecksumWarning`, `load_idx_dir`, `load_tfds`
- model: `MLP`
- loop: `Trainer`, `TrainState`, `DeviceData`, `put_dataset`, `make_loss`
- a whole run: `train`
"""

from training._config import Config
from training._dataset import DATASETS, Dataset
from training._errors import (
    ConfigError,
    DataError,
    LaunchError,
    NonFiniteLossError,
    ResumeError,
    RunDirError,
    TrainingError,
)
from training._idx import ChecksumWarning, load_idx_dir
from training._loop import DeviceData, Trainer, TrainState, make_loss, put_dataset
from training._model import MLP
from training._run import train
from training._tfds import load_tfds

__all__ = [
    "DATASETS",
    "MLP",
    "ChecksumWarning",
    "Config",
    "ConfigError",
    "DataError",
    "Dataset",
    "DeviceData",
    "LaunchError",
    "NonFiniteLossError",
    "ResumeError",
    "RunDirError",
    "TrainState",
    "Trainer",
    "TrainingError",
    "load_idx_dir",
    "load_tfds",
    "make_loss",
    "put_dataset",
    "train",
]
