"""The in-memory dataset every loader returns, and the data errors they raise."""

from __future__ import annotations

import dataclasses

import numpy as np

# --dataset value -> human name.
DATASETS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


class DataError(ValueError):
    """A data file or download is missing, unreadable, corrupt or inconsistent."""


def check_dataset_name(dataset: str) -> None:
    """Raises ValueError unless ``dataset`` is one of `DATASETS`."""
    if dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """MNIST-shaped train and test splits, as numpy arrays in host memory.

    Attributes:
      name: ``"mnist"`` or ``"fashion_mnist"``.
      source: where it came from (a directory, or ``tfds:<name>``).
      train_images: uint8 (N, 28, 28), pixel values 0..255.
      train_labels: int32 (N,), classes 0..9.
      test_images: uint8 (M, 28, 28).
      test_labels: int32 (M,).
    """

    name: str
    source: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def __post_init__(self):
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
                raise DataError(
                    f"{split}_images must be uint8 (N, 28, 28), got {images.dtype} {images.shape}"
                )
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise DataError(
                    f"{split}_labels must be int32 of shape {images.shape[:1]}, got "
                    f"{labels.dtype} {labels.shape}"
                )

    def describe(self) -> str:
        """One line: name, split sizes and source."""
        return (
            f"{DATASETS[self.name]}: {len(self.train_labels)} train / {len(self.test_labels)} "
            f"test images from {self.source}"
        )
