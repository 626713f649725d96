"""Smoke test of `python -m benchmarks.train_epoch`: every variant runs and the JSON adds up."""

from __future__ import annotations

import json
import warnings

import pytest

from benchmarks import train_epoch
from tests.test_resume import MNIST_MINI, needs_data
from training import ChecksumWarning


@pytest.mark.slow
@needs_data
def test_every_variant_is_timed_and_the_ratios_follow(tmp_path, capsys):
    path = tmp_path / "epoch.json"
    argv = ["--data-dir", str(MNIST_MINI), "--dataset", "mnist", "--repeats", "1"]
    argv += ["--torch-repeats", "1", "--torch-threads", "1", "--json", str(path)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChecksumWarning)  # summed up in one line, not raised
        train_epoch.main(argv)
    printed = capsys.readouterr()
    warned = [line for line in printed.err.splitlines() if "warning" in line]
    assert len(warned) == 1 and "mnist-mini" in warned[0]  # a subset of MNIST's test split
    report = json.loads(path.read_text())
    seconds = report["seconds_per_epoch"]
    names = {"jax_epoch", "jax_epoch_chunked", "matmul_floor", "matmul_floor_xla_defaults"}
    assert set(seconds) == names | {"torch_tutorial_1t", "torch_tensors_1t"}
    for name, times in seconds.items():
        assert len(times["all"]) == 1 and times["median"] == times["min"] > 0, name
    assert report["dataset"].startswith("MNIST: 8000 train / 2000 test images")
    assert report["compile_seconds"]["jax_epoch"] > 0
    ratios = report["ratios_of_medians"]
    median = {name: times["median"] for name, times in seconds.items()}
    # the floor is the faster of its two compilations (train.py's XLA options, XLA's defaults)
    median["floor"] = min(median["matmul_floor"], median["matmul_floor_xla_defaults"])
    expected = {
        "torch_tutorial (fastest threads) / jax_epoch": ("torch_tutorial_1t", "jax_epoch"),
        "jax_epoch / matmul_floor": ("jax_epoch", "floor"),
        "jax_epoch_chunked / matmul_floor": ("jax_epoch_chunked", "floor"),
    }
    for key, (num, den) in expected.items():
        assert ratios[key] == pytest.approx(median[num] / median[den])
    # the CPU and torch's version, as benchmarks.loss and .linear record them (it times torch)
    machine = report["machine"]
    assert machine["cpu"] and machine["caches"] is not None and "torch" in machine["versions"]
    assert printed.out.startswith(machine["cpu"])  # the table's header names the CPU
