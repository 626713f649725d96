"""Training the tutorial's MLP with jaxce: settings, data, model, compiled loop, checkpoints, runs.

Public names (everything else is private to the package):

- settings and errors: `Config`, `TrainingError` and its kinds (`ConfigError`, `DataError`,
  `RunDirError`, `ResumeError`, `NonFiniteLossError`, `LaunchError`, `WriteError`,
  `Interrupted`)
- data: `Dataset`, `ChecksumWarning`, `load_idx_dir`, `load_tfds`
- model: `MLP`
- loop: `Trainer`, `TrainState`, `DeviceData`, `put_dataset`, `make_loss`
- a whole run: `train`
"""

import importlib

from training._config import Config
from training._dataset import DATASETS, Dataset
from training._errors import (
    ConfigError,
    DataError,
    Interrupted,
    LaunchError,
    NonFiniteLossError,
    ResumeError,
    RunDirError,
    TrainingError,
    WriteError,
)
from training._idx import ChecksumWarning, load_idx_dir
from training._tfds import load_tfds

# Imported on first use: they import jax, Flax, optax and Orbax, which the settings, the data
# readers and the errors do not need (so that `train.py --help` and a bad flag answer at once).
_LAZY = {
    "DeviceData": "training._loop",
    "TrainState": "training._loop",
    "Trainer": "training._loop",
    "make_loss": "training._loop",
    "put_dataset": "training._loop",
    "MLP": "training._model",
    "train": "training._run",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DATASETS",
    "MLP",
    "ChecksumWarning",
    "Config",
    "ConfigError",
    "DataError",
    "Dataset",
    "DeviceData",
    "Interrupted",
    "LaunchError",
    "NonFiniteLossError",
    "ResumeError",
    "RunDirError",
    "TrainState",
    "Trainer",
    "TrainingError",
    "WriteError",
    "load_idx_dir",
    "load_tfds",
    "make_loss",
    "put_dataset",
    "train",
]
