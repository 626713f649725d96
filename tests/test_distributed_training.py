"""Data parallelism end to end: train.py on 1 device, 4 devices and 2 processes agree.

Real ``train.py`` subprocesses on ../shared/data/mnist-mini (2 epochs, tiny model), started
from the repository root with relative ``--data-dir`` and ``--out`` as a user types them: one
process with one CPU device; one process with 4 forced CPU devices (``JAX_NUM_CPU_DEVICES``,
the same as ``--xla_force_host_platform_device_count``); two processes on localhost with 2
devices each,
joined through ``jax.distributed`` and CPU collectives (gloo, jax's default). The batch is
sharded over the devices, so the gradient is summed in another order: the losses agree within
the ``data_parallel_loss`` tolerance, not bit for bit.
"""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.test_resume import (
    FLAGS,
    ROOT,
    cpu_env,
    metrics,
    needs_data,
    ok,
    output,
    reference,  # noqa: F401 (the session fixture, shared with the resume tests)
    train_command,
    train_py,
)
from tests.tolerances import assert_close

pytestmark = [pytest.mark.slow, needs_data]


@pytest.fixture
def one_device(request):
    """The metrics of the resume tests' uninterrupted run: the same flags, one device."""
    return metrics(request.getfixturevalue("reference"))


def assert_same_training(actual: dict, expected: dict, context: str) -> None:
    for key in ("train_loss", "test_loss"):
        assert_close(
            actual[key], expected[key], dtype="float32", quantity="data_parallel_loss", context=key
        )
    assert_close(
        actual["test_accuracy"],
        expected["test_accuracy"],
        dtype="float32",
        quantity="data_parallel_accuracy",
        context=context,
    )


def test_four_devices_match_one(tmp_path, one_device):
    out = tmp_path / "run"
    proc = ok(train_py(out, *FLAGS, devices=4))
    assert "backend cpu: 4 x cpu (jax " in output(proc)
    four = metrics(out)
    assert (four["device"]["device_count"], four["device"]["process_count"]) == (4, 1)
    assert_same_training(four, one_device, "4 devices vs 1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path, one_device):
    out = tmp_path / "run"
    address = f"127.0.0.1:{_free_port()}"
    multi = ["--coordinator-address", address, "--num-processes", "2", "--process-id"]
    procs = [
        subprocess.Popen(
            train_command(out, *FLAGS, *multi, str(i)),
            cwd=ROOT,
            env=cpu_env(devices=2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=400) for p in procs]
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr[-4000:]
    assert "epoch   2/2" in results[0][0]
    assert "backend cpu: 4 x cpu over 2 processes" in results[0][0]
    assert "epoch" not in results[1][0]  # only process 0 logs
    for i, (stdout, _) in enumerate(results):  # every process says whom it waits for
        assert f"joining the run as process {i} of 2, coordinator {address} (flags)" in stdout
    both = metrics(out)
    assert (both["device"]["device_count"], both["device"]["process_count"]) == (4, 2)
    assert_same_training(both, one_device, "2 processes x 2 devices vs 1 device")
