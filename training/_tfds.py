"""MNIST and Fashion-MNIST through tensorflow-datasets (download once, then the local cache).

Offline, tfds retries each download for minutes before it gives up. So when the dataset is not
in the cache yet, `load_tfds` first opens a TCP connection to every host tfds would download
from, with a short timeout, and fails at once with a message pointing at the offline route (the
IDX files in a directory).
"""

from __future__ import annotations

import contextlib
import logging
import socket

import numpy as np

from training._dataset import Dataset, check_dataset_name
from training._errors import DataError

PROBE_TIMEOUT_S = 5.0
# Where tensorflow-datasets 4.9.10 downloads each dataset from (its url_checksums/mnist.txt and
# fashion_mnist.txt). Kept here rather than read from the builder, whose `url_infos` needs
# importlib_resources (see `load_tfds`).
DOWNLOAD_HOSTS = {
    "mnist": [("storage.googleapis.com", 443)],
    "fashion_mnist": [("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80)],
}
_OFFLINE_HELP = (
    "Without network, pass {@data_dir} DIR with the four IDX files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, "
    "gzipped or not), e.g. torchvision's MNIST/raw folder, or /usr/share/datasets/fashion-mnist "
    "from Debian's dataset-fashion-mnist package with {@dataset} fashion_mnist."
)


def load_tfds(dataset: str = "mnist", *, data_dir: str | None = None) -> Dataset:
    """Loads a dataset with tensorflow-datasets, downloading it on first use.

    Args:
      dataset: ``"mnist"`` or ``"fashion_mnist"`` (tfds names).
      data_dir: tfds' cache directory; tfds' default (``~/tensorflow_datasets`` or
        ``$TFDS_DATA_DIR``) when None.

    Returns:
      A `Dataset`: images uint8 (N, 28, 28), labels int32 (N,).

    Raises:
      DataError: tensorflow-datasets is not usable, or the dataset is not cached and its
        download hosts cannot be reached (within `PROBE_TIMEOUT_S` seconds per host).
      ConfigError: an unknown ``dataset``.
    """
    check_dataset_name(dataset)
    try:
        import tensorflow_datasets as tfds

        with _absl_warnings_off():  # e.g. "Variant folder ... has no dataset_info.json"
            builder = tfds.builder(dataset, data_dir=data_dir)
            prepared = builder.is_prepared()
        if not prepared:
            probe_download_hosts(DOWNLOAD_HOSTS[dataset], dataset=dataset)
        splits = tfds.load(
            dataset, split=["train", "test"], as_supervised=True, batch_size=8192, data_dir=data_dir
        )
        arrays = [_to_numpy(tfds.as_numpy(split)) for split in splits]
    except ModuleNotFoundError as err:
        raise DataError(
            "the tensorflow-datasets route needs the Python module {module!r} ({err}). "
            "pip install tensorflow-datasets importlib_resources (tfds 4.9 imports "
            "importlib_resources without declaring it). " + _OFFLINE_HELP,
            module=err.name,
            err=err,
        ) from err
    (train_images, train_labels), (test_images, test_labels) = arrays
    return Dataset(
        name=dataset,
        source=f"tfds:{dataset} ({builder.data_dir})",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
    )


@contextlib.contextmanager
def _absl_warnings_off():
    """tfds' warnings about the state of its cache (the run's own checks say what matters)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def probe_download_hosts(
    hosts: list[tuple[str, int]], *, dataset: str, timeout: float = PROBE_TIMEOUT_S
) -> None:
    """Raises DataError unless a TCP connection to every ``(host, port)`` opens within ``timeout``.

    Args:
      hosts: the download hosts and ports.
      dataset: named in the message.
      timeout: seconds allowed per host.

    Raises:
      DataError: a host cannot be resolved or reached; the message points at the offline route.
    """
    for host, port in hosts:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            raise DataError(
                "{dataset} is not in the tensorflow-datasets cache and its download host "
                "{host}:{port} cannot be reached ({err}). " + _OFFLINE_HELP,
                dataset=dataset,
                host=host,
                port=port,
                err=err,
            ) from None


def _to_numpy(batches) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates tfds' (images (B, 28, 28, 1), labels (B,)) batches into uint8/int32 arrays."""
    images, labels = zip(*batches, strict=True)
    images = np.concatenate(images)
    images = images.reshape(images.shape[:3]).astype(np.uint8)
    return images, np.concatenate(labels).astype(np.int32)
