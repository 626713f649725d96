"""training.load_idx_dir: layouts, every data error, and checksum verification."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest

import train
from tests.conftest import SHARED_DATA, seeded_rng
from training import ChecksumWarning, DataError, load_idx_dir
from training._idx import TFDS_SHA256, _check_sha256

STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``array``."""
    magic = 0x0800 | array.ndim
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def make_arrays(n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    rng = seeded_rng("idx", n_train, n_test)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_dir(folder: Path, arrays=None, *, gz: bool = True, raw: dict[str, bytes] | None = None):
    """Writes the four files (``raw`` overrides a file's bytes, before gzip)."""
    arrays = make_arrays() if arrays is None else arrays
    folder.mkdir(parents=True, exist_ok=True)
    for field, stem in STEMS.items():
        data = (raw or {}).get(field, idx_bytes(arrays[field]))
        path = folder / (f"{stem}.gz" if gz else stem)
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return arrays


def load_quietly(folder, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChecksumWarning)
        return load_idx_dir(folder, **kwargs)


def assert_matches(dataset, arrays):
    for field, expected in arrays.items():
        actual = getattr(dataset, field)
        np.testing.assert_array_equal(actual, expected)
        assert actual.dtype == (np.int32 if field.endswith("labels") else np.uint8)


@pytest.mark.parametrize(
    ("subdir", "gz"),
    [
        pytest.param("", True, id="flat-gz"),
        pytest.param("", False, id="flat-uncompressed"),
        pytest.param("raw", True, id="torchvision-raw-folder"),
        pytest.param("MNIST/raw", False, id="torchvision-root"),
    ],
)
def test_layouts_load_the_same_arrays(tmp_path, subdir, gz):
    arrays = write_dir(tmp_path / subdir, gz=gz)
    assert_matches(load_quietly(tmp_path), arrays)


def test_gz_is_preferred_over_uncompressed(tmp_path):
    arrays = write_dir(tmp_path, gz=True)
    write_dir(tmp_path, make_arrays(3, 2), gz=False)
    assert_matches(load_quietly(tmp_path), arrays)


def test_missing_file_is_named(tmp_path):
    write_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found"):
        load_quietly(tmp_path)


def test_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_idx_dir(tmp_path / "nowhere")


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="dataset must be one of mnist, fashion_mnist"):
        load_idx_dir(tmp_path, dataset="cifar10")


def test_a_file_is_not_a_data_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"data_dir .*file is not a directory \(it is a file\)"):
        load_idx_dir(tmp_path / "file")


def refuse_to_read(monkeypatch, unreadable: Path) -> None:
    """Makes ``Path.read_bytes`` of ``unreadable`` raise a permission error.

    Simulated: root (as in CI containers) reads files whatever their mode.
    """
    read_bytes = Path.read_bytes

    def refuse(path):
        if path == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    write_dir(tmp_path)
    unreadable = tmp_path / "train-labels-idx1-ubyte.gz"
    refuse_to_read(monkeypatch, unreadable)
    with pytest.raises(DataError) as err:
        load_quietly(tmp_path)
    assert str(err.value) == (
        f"{unreadable}: cannot be read (Permission denied); check that the file is readable"
    )


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_split_is_named(tmp_path, split):
    arrays = make_arrays()
    arrays[f"{split}_images"] = arrays[f"{split}_images"][:0]
    arrays[f"{split}_labels"] = arrays[f"{split}_labels"][:0]
    write_dir(tmp_path, arrays)
    with pytest.raises(DataError, match=f"holds no images; the {split} split must not be empty"):
        load_quietly(tmp_path)


def _images(n=12, side=28):
    return idx_bytes(np.zeros((n, side, side), np.uint8))


@pytest.mark.parametrize(
    ("field", "data", "match"),
    [
        pytest.param("train_images", _images()[:-100], "truncated", id="truncated-images"),
        pytest.param("train_images", _images() + b"\0" * 7, r"trailing bytes", id="trailing-bytes"),
        pytest.param("train_images", _images()[:10], "header cut short", id="truncated-header"),
        pytest.param("train_labels", b"\0\0", "too short for an IDX header", id="two-bytes"),
        pytest.param(
            "train_labels", _images(), r"0x00000803 \(an images file\?\)", id="wrong-magic"
        ),
        pytest.param("test_images", b"PK\3\4" + bytes(100), "magic number 0x504b0304", id="zip"),
        pytest.param("test_images", _images(5, 32), "32x32 pixels, expected 28x28", id="32x32"),
        pytest.param("test_labels", idx_bytes(np.array([1, 2, 10, 3, 4])), "label 10 at index 2"),
    ],
)
def test_bad_file_contents_are_named(tmp_path, field, data, match):
    write_dir(tmp_path, gz=False, raw={field: data})
    with pytest.raises(DataError, match=match) as err:
        load_quietly(tmp_path)
    assert STEMS[field] in str(err.value)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-gzip"),
        pytest.param(lambda b: b[:20] + bytes(len(b) - 20), id="zeroed-gzip-body"),
        pytest.param(lambda b: b"\x1f\x8b" + bytes(30), id="bad-gzip-header"),
    ],
)
def test_damaged_gzip_is_named(tmp_path, damage):
    write_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: not a readable gzip file"):
        load_quietly(tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_images_and_labels_of_different_lengths(tmp_path, split):
    arrays = make_arrays()
    arrays[f"{split}_labels"] = arrays[f"{split}_labels"][:-1]
    write_dir(tmp_path, arrays)
    with pytest.raises(DataError, match=r"holds (12|5) images but .* holds (11|4) labels") as err:
        load_quietly(tmp_path)
    assert STEMS[f"{split}_images"] in str(err.value)
    assert STEMS[f"{split}_labels"] in str(err.value)


def test_checksum_mismatch_warns_with_both_checksums(tmp_path):
    write_dir(tmp_path)
    with pytest.warns(ChecksumWarning) as caught:
        load_idx_dir(tmp_path)
    assert len(caught) == 4
    message = str(caught[0].message)
    expected = TFDS_SHA256["mnist"]["train-images-idx3-ubyte.gz"]
    assert caught[0].message.expected == expected
    assert caught[0].message.path == tmp_path / "train-images-idx3-ubyte.gz"
    assert "train-images-idx3-ubyte.gz" in message
    assert expected in message
    assert len([w for w in message.split() if len(w.strip(",")) == 64]) == 2


def test_checksum_mismatch_is_fatal_when_strict(tmp_path):
    write_dir(tmp_path)
    with pytest.raises(DataError, match="Rejected because of strict_checksums") as err:
        load_idx_dir(tmp_path, strict_checksums=True)
    assert "Rejected because of --strict-checksums" in err.value.render(train.flag)


def test_strict_rejects_files_without_a_registered_checksum(tmp_path):
    write_dir(tmp_path, gz=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_idx_dir(tmp_path)  # uncompressed: nothing to verify, no warning
    with pytest.raises(DataError, match="registers no SHA-256 for this file"):
        load_idx_dir(tmp_path, strict_checksums=True)


@pytest.mark.skipif(
    not (SHARED_DATA / "mnist").is_dir(), reason="needs ../shared/data/mnist (official MNIST files)"
)
@pytest.mark.parametrize(
    "name",
    ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"],
)
def test_official_files_verify_silently(name):
    path = SHARED_DATA / "mnist" / name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_sha256(path, path.read_bytes(), "mnist", strict=True)


@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
def test_debian_fashion_mnist_warns_but_loads():
    with pytest.warns(ChecksumWarning) as caught:
        dataset = load_idx_dir(DEBIAN_FASHION, dataset="fashion_mnist")
    named = sorted(
        name for w in caught for name in STEMS.values() if f"{name}.gz" in str(w.message)
    )
    assert named == sorted(STEMS.values())
    assert dataset.train_images.shape == (60000, 28, 28)
    assert dataset.test_images.shape == (10000, 28, 28)
    assert np.bincount(dataset.train_labels).tolist() == [6000] * 10
