"""The in-memory dataset every loader returns, and its content fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from training._errors import DataError, check_choice

# --dataset value -> human name.
DATASETS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
_SPLITS = ("train", "test")


def check_dataset_name(dataset: str) -> None:
    """Raises ConfigError unless ``dataset`` is one of `DATASETS`."""
    check_choice("dataset", dataset, DATASETS)


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
        for split in _SPLITS:
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
                raise DataError(
                    "{split}_images must be uint8 (N, 28, 28), got {dtype} {shape}",
                    split=split,
                    dtype=images.dtype,
                    shape=images.shape,
                )
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise DataError(
                    "{split}_labels must be int32 of shape {want}, got {dtype} {shape}",
                    split=split,
                    want=images.shape[:1],
                    dtype=labels.dtype,
                    shape=labels.shape,
                )

    def describe(self) -> str:
        """One line: name, split sizes and source."""
        return (
            f"{DATASETS[self.name]}: {len(self.train_labels)} train / {len(self.test_labels)} "
            f"test images from {self.source}"
        )

    def check_not_empty(self) -> None:
        """Raises DataError when a split holds no images (nothing to train on or to measure)."""
        for split in _SPLITS:
            if not len(getattr(self, f"{split}_labels")):
                raise DataError(
                    "the {split} split of {source} holds no images; a run needs at least one "
                    "in each split",
                    split=split,
                    source=self.source,
                )

    def fingerprint(self) -> str:
        """SHA-256 of the content: both splits' shapes, pixels and labels, in a fixed order.

        Two datasets have the same fingerprint exactly when they hold the same examples in the
        same order (whatever files or cache they came from). About 0.1 s for MNIST's 70k images.
        """
        digest = hashlib.sha256()
        for split in _SPLITS:
            for kind in ("images", "labels"):
                array = np.ascontiguousarray(getattr(self, f"{split}_{kind}"))
                digest.update(f"{split}_{kind}:{array.dtype.str}:{array.shape};".encode())
                digest.update(array.data)
        return digest.hexdigest()
