"""Training the tutorial's MLP with jaxce: data loaders, the model and the compiled loop.

Public names (everything else is private to the package):

- data: `Dataset`, `DataError`, `ChecksumWarning`, `load_idx_dir`, `load_tfds`, `load_dataset`
- model: `MLP`
- loop: `Trainer`, `TrainState`, `DeviceData`, `put_dataset`, `make_loss`
"""

from training._dataset import DATASETS, DataError, Dataset
from training._idx import ChecksumWarning, load_idx_dir
from training._loop import DeviceData, Trainer, TrainState, make_loss, put_dataset
from training._model import MLP
from training._tfds import load_tfds


def load_dataset(
    dataset: str = "mnist", *, data_dir: str | None = None, strict_checksums: bool = False
) -> Dataset:
    """`load_idx_dir` when ``data_dir`` is given, else `load_tfds` (download and cache)."""
    if data_dir is not None:
        return load_idx_dir(data_dir, dataset=dataset, strict_checksums=strict_checksums)
    return load_tfds(dataset)


__all__ = [
    "DATASETS",
    "MLP",
    "ChecksumWarning",
    "DataError",
    "Dataset",
    "DeviceData",
    "TrainState",
    "Trainer",
    "load_dataset",
    "load_idx_dir",
    "load_tfds",
    "make_loss",
    "put_dataset",
]
