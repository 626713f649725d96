"""MNIST-format IDX files from a directory, read with numpy (no TensorFlow).

`load_idx_dir` accepts the layouts people actually have: the four files side by side (the
official site, ``../shared/data/mnist-mini``, Debian's ``dataset-fashion-mnist``), torchvision's
``raw/`` folder, or torchvision's root (``MNIST/raw``, ``FashionMNIST/raw``), gzipped or not.
Every check names the offending file: unreadable gzip, wrong magic number, wrong image size,
truncated or over-long payload, labels outside 0..9, images and labels of different lengths.
Gzipped files whose SHA-256 tensorflow-datasets registers are verified against it.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import warnings
import zlib
from pathlib import Path

import numpy as np

from training._dataset import DATASETS, Dataset, check_dataset_name
from training._errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IMAGE_SIDE = 28
NUM_CLASSES = 10

# (field of Dataset, file name stem, magic number)
_FILES = (
    ("train_images", "train-images-idx3-ubyte", IMAGES_MAGIC),
    ("train_labels", "train-labels-idx1-ubyte", LABELS_MAGIC),
    ("test_images", "t10k-images-idx3-ubyte", IMAGES_MAGIC),
    ("test_labels", "t10k-labels-idx1-ubyte", LABELS_MAGIC),
)
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}

# SHA-256 of the upstream .gz files, as registered by tensorflow-datasets 4.9.10 in
# tensorflow_datasets/url_checksums/mnist.txt and .../fashion_mnist.txt (the files tfds downloads
# from storage.googleapis.com/cvdf-datasets/mnist and fashion-mnist.s3-website...amazonaws.com).
TFDS_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
        ),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
        ),
        "train-labels-idx1-ubyte.gz": (
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
        ),
    },
}


class ChecksumWarning(UserWarning):
    """A data file's SHA-256 differs from the one tensorflow-datasets registers for it.

    Attributes:
      finding: what differs, without the setting that would refuse it (for tools without it).
      path: the file.
      actual: its SHA-256.
      expected: the SHA-256 tensorflow-datasets registers for a file of that name.
    """

    def __init__(self, finding: str, remedy: str, *, path: Path, actual: str, expected: str):
        super().__init__(f"{finding} {remedy}")
        self.finding, self.path, self.actual, self.expected = finding, path, actual, expected


def load_idx_dir(
    data_dir: str | Path, *, dataset: str = "mnist", strict_checksums: bool = False
) -> Dataset:
    """Reads the four IDX files of MNIST or Fashion-MNIST from a directory.

    Args:
      data_dir: a directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally ``.gz``;
        also searched: ``data_dir/raw`` and torchvision's ``data_dir/MNIST/raw`` or
        ``data_dir/FashionMNIST/raw``. A ``.gz`` file is preferred to an uncompressed one.
      dataset: ``"mnist"`` or ``"fashion_mnist"``; selects the checksums to verify against.
      strict_checksums: make a checksum mismatch, or a file with no registered checksum (an
        uncompressed one), an error instead of a `ChecksumWarning`.

    Returns:
      A `Dataset`: images uint8 (N, 28, 28), labels int32 (N,).

    Raises:
      DataError: a file is missing, unreadable, truncated, corrupt, has the wrong magic number,
        images and labels differ in length, or (``strict_checksums``) a checksum does not match;
        the message names the file.
      ConfigError: an unknown ``dataset``.

    Warns:
      ChecksumWarning: a ``.gz`` file's SHA-256 differs from tensorflow-datasets' (for example
        Debian's repacked Fashion-MNIST or the mnist-mini subset), naming both checksums.
    """
    check_dataset_name(dataset)
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        problem = "it is a file" if root.exists() else "it does not exist"
        if root.is_symlink() and not root.exists():
            problem = "a symbolic link to nothing, or a loop of them"
        raise DataError(
            "{@data_dir} {root} is not a directory ({problem})", root=root, problem=problem
        )
    arrays = {}
    paths = {}
    for field, stem, magic in _FILES:
        path = _find(root, dataset, stem)
        raw = _read(path)
        _check_sha256(path, raw, dataset, strict=strict_checksums)
        arrays[field] = _parse(path, raw, magic)
        paths[field] = path
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DataError(
                "{images_path} holds {images} images but {labels_path} holds {labels} labels; "
                "the two files of a split must come from the same release",
                images_path=paths[f"{split}_images"],
                images=len(images),
                labels_path=paths[f"{split}_labels"],
                labels=len(labels),
            )
        if not len(images):
            raise DataError(
                "{path} holds no images; the {split} split must not be empty",
                path=paths[f"{split}_images"],
                split=split,
            )
    return Dataset(name=dataset, source=str(root), **arrays)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(
            "{path}: cannot be read ({reason}); check that the file is readable",
            path=path,
            reason=err.strerror or err,
        ) from None


def _find(root: Path, dataset: str, stem: str) -> Path:
    folders = [root, root / "raw", root / _TORCHVISION_FOLDER[dataset] / "raw"]
    broken = []  # symbolic links by the file's name that lead to no file
    for folder in folders:
        for name in (f"{stem}.gz", stem):
            path = folder / name
            try:
                if path.is_file():
                    return path
                if path.is_symlink():
                    broken.append(path)
            except OSError as err:  # a folder that cannot be searched (permissions, a loop)
                raise DataError(
                    "{@data_dir}: {folder} cannot be searched for {stem}[.gz] ({reason}); check "
                    "that the directory is readable",
                    folder=folder,
                    stem=stem,
                    reason=err.strerror or err,
                ) from None
    if broken:  # a link to nothing, or to itself: named as such, not as a missing file
        raise DataError(
            "{path} is a symbolic link to {target}, which {what}; point it at the file or "
            "replace it with the file",
            path=broken[0],
            target=os.readlink(broken[0]),
            what="is not a file" if broken[0].exists() else "cannot be reached",
        )
    raise DataError(
        "{stem}[.gz] not found in {folders}. {@data_dir} must hold the four {name} IDX files "
        "({wanted}), gzipped or not.",
        stem=stem,
        folders=", ".join(map(str, folders)),
        name=DATASETS[dataset],
        wanted=", ".join(f"{s}[.gz]" for _, s, _ in _FILES),
    )


def _check_sha256(path: Path, raw: bytes, dataset: str, *, strict: bool) -> None:
    expected = TFDS_SHA256[dataset].get(path.name)
    if expected is None:
        if strict:
            raise DataError(
                "{path}: {@strict_checksums}, but tensorflow-datasets registers no SHA-256 for "
                "this file (only for the upstream .gz archives: {names})",
                path=path,
                names=", ".join(TFDS_SHA256[dataset]),
            )
        return
    actual = hashlib.sha256(raw).hexdigest()
    if actual == expected:
        return
    message = (
        f"{path}: SHA-256 {actual} is not {expected}, the one tensorflow-datasets registers for "
        f"{dataset}'s {path.name} (a repack such as Debian's, a subset, or a damaged file; the "
        "contents passed the format checks)."
    )
    if strict:
        raise DataError("{message} Rejected because of {@strict_checksums}.", message=message)
    warnings.warn(
        ChecksumWarning(
            message,
            "strict_checksums=True makes this an error.",
            path=path,
            actual=actual,
            expected=expected,
        ),
        stacklevel=3,
    )


def _parse(path: Path, raw: bytes, magic: int) -> np.ndarray:
    """Decodes one IDX file (already read) into uint8 images or int32 labels."""
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise _bad(
                path,
                f"not a readable gzip file ({err}); it is truncated or corrupt, download it again",
            ) from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if len(raw) < 4:
        raise _bad(path, f"{len(raw)} bytes, too short for an IDX header (truncated)")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        hint = {IMAGES_MAGIC: " (an images file?)", LABELS_MAGIC: " (a labels file?)"}
        raise _bad(
            path,
            f"magic number 0x{got:08x}{hint.get(got, '')}, expected 0x{magic:08x} for an "
            f"IDX {kind} file; the file is not what its name says, or is corrupt",
        )
    if len(raw) < header:
        raise _bad(path, f"header cut short at {len(raw)} bytes (truncated)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if kind == "images" and dims[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise _bad(path, f"images of {dims[1]}x{dims[2]} pixels, expected 28x28")
    expected = math.prod(dims)
    payload = len(raw) - header
    if payload != expected:
        problem = "truncated" if payload < expected else "corrupt (trailing bytes)"
        raise _bad(
            path,
            f"{payload} bytes of data after the header, which promises {expected} "
            f"({' x '.join(map(str, dims))}); the file is {problem}",
        )
    array = np.frombuffer(raw, np.uint8, offset=header).reshape(dims)
    if kind == "labels":
        if array.size and int(array.max()) >= NUM_CLASSES:
            bad = int(np.argmax(array >= NUM_CLASSES))
            raise _bad(
                path, f"label {int(array[bad])} at index {bad} is outside 0..9; corrupt file"
            )
        return array.astype(np.int32)
    return array.copy()  # own, writable memory rather than a view of the file's bytes


def _bad(path: Path, problem: str) -> DataError:
    return DataError("{path}: {problem}", path=path, problem=problem)
