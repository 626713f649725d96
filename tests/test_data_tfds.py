"""training.load_tfds without network: tfds' mock data, and the fast failure when offline."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

import train
from training import DataError, _tfds, load_tfds

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dataset", "host"),
    [
        pytest.param("mnist", ("storage.googleapis.com", 443), id="mnist"),
        pytest.param(
            "fashion_mnist",
            ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
            id="fashion_mnist",
        ),
    ],
)
def test_mock_data_through_the_tfds_route(tmp_path, monkeypatch, dataset, host):
    probed = []
    monkeypatch.setattr(_tfds, "probe_download_hosts", lambda hosts, **kw: probed.extend(hosts))
    with tfds.testing.mock_data(num_examples=24):
        data = load_tfds(dataset, data_dir=str(tmp_path))
    assert probed == [host]  # not cached yet: the download host was checked first
    assert data.name == dataset
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        assert images.shape == (24, 28, 28)
        assert images.dtype == np.uint8
        assert labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() < 10


def test_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    def unreachable(address, timeout):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_tfds("mnist", data_dir=str(tmp_path))
    elapsed = time.perf_counter() - start
    message = err.value.render(train.flag)
    assert "storage.googleapis.com:443 cannot be reached" in message
    assert "--data-dir" in message and "--dataset fashion_mnist" in message
    assert "pass data_dir DIR" in str(err.value)  # the library names its parameter
    assert elapsed < 30, f"took {elapsed:.1f} s to fail"
    assert not any(tmp_path.rglob("*.gz")), "nothing may be downloaded"


def test_probe_times_out_quickly():
    # A TCP connect to a port nothing listens on is refused at once; the probe turns that into
    # the same DataError (and a silent, dropped connection is bounded by its timeout).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    with pytest.raises(DataError, match=f"127.0.0.1:{port} cannot be reached"):
        _tfds.probe_download_hosts([("127.0.0.1", port)], dataset="mnist", timeout=2.0)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_tfds("imagenet")
