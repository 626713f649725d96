"""training._distributed: cluster detection, initialisation, the mesh and global batches.

Multi-device and multi-process behaviour runs in subprocesses (4 forced CPU devices; two
processes on localhost with CPU collectives), since a process's device count is fixed when its
backend starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from training import _distributed
from training._distributed import check_batch_size, detect_cluster, initialize_distributed

ROOT = Path(__file__).resolve().parents[1]
SLURM = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_NODELIST": "node[1-2]",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, None, id="laptop"),
        pytest.param({**SLURM, "SLURM_NTASKS": "1"}, None, id="slurm-one-task"),
        pytest.param({**SLURM, "SLURM_NTASKS": "4"}, "slurm", id="slurm-four-tasks"),
        pytest.param({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None, id="sbatch-without-srun"),
        pytest.param(
            {"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "2"}, "openmpi", id="mpirun"
        ),
        pytest.param({"TPU_WORKER_HOSTNAMES": "a,b"}, "tpu", id="tpu-pod"),
        pytest.param({"JAX_COORDINATOR_ADDRESS": "h:1234"}, "env", id="jax-env"),
    ],
)
def test_detect_cluster(environ, expected):
    assert detect_cluster(environ) == expected


@pytest.fixture
def calls(monkeypatch):
    recorded: list[dict] = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: recorded.append(kw))
    return recorded


def test_single_machine_is_a_no_op(calls):
    assert initialize_distributed(environ={}) == "single"
    assert calls == []


def test_cluster_lets_jax_read_its_environment(calls):
    assert initialize_distributed(environ={**SLURM, "SLURM_NTASKS": "2"}) == "slurm"
    assert calls == [{}]


def test_flags_are_passed_through(calls):
    assert initialize_distributed("10.0.0.1:1234", 2, 1, environ={}) == "flags"
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param(("h:1", None, 0), "not --num-processes", id="missing-num-processes"),
        pytest.param((None, 2, None), "not --coordinator-address, --process-id", id="two-missing"),
        pytest.param(("h:1", 2, 2), r"--process-id must be in \[0, 2\)", id="id-out-of-range"),
        pytest.param(("h:1", 0, 0), "--num-processes must be at least 1", id="zero-processes"),
    ],
)
def test_bad_flags_raise(calls, args, match):
    with pytest.raises(ValueError, match=match):
        initialize_distributed(*args, environ={})
    assert calls == []


@pytest.mark.parametrize(
    ("batch", "devices"),
    [(64, 1), (64, 4), (64, 64), (12, 3)],
    ids=["1dev", "4dev", "64dev", "3dev"],
)
def test_batch_size_that_divides_is_accepted(batch, devices):
    check_batch_size(batch, num_devices=devices)


@pytest.mark.parametrize(
    ("batch", "devices", "processes", "match"),
    [
        (30, 4, 1, r"--batch-size 30 .* 4 devices: .* --batch-size 28 or --batch-size 32"),
        (2, 4, 1, r"--batch-size 4 or --batch-size 4"),
        (10, 8, 2, r"8 devices on 2 processes"),
    ],
    ids=["30-on-4", "smaller-than-devices", "multi-process"],
)
def test_batch_size_that_does_not_divide_is_an_error(batch, devices, processes, match):
    with pytest.raises(ValueError, match=match):
        check_batch_size(batch, num_devices=devices, num_processes=processes)


def test_one_device_mesh():
    mesh = _distributed.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    assert _distributed.is_primary()
    assert _distributed.broadcast_int(5) == 5


_PROBE = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from training import _distributed as d
    args = [None if a == "-" else a for a in sys.argv[1:4]]
    how = d.initialize_distributed(args[0], *(None if a is None else int(a) for a in args[1:]))
    mesh = d.make_mesh()
    sharding = d.batch_sharded(mesh, 2)
    full = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    rows = d.local_rows(sharding, 8)
    batch = d.global_batch(full[rows], sharding, full.shape)
    total = jax.jit(lambda x: (x * x).sum(), out_shardings=d.replicated(mesh))(batch)
    d.barrier("probe")
    print(json.dumps({
        "how": how, "devices": mesh.size, "process": jax.process_index(),
        "rows": [rows.start, rows.stop], "shard_rows": batch.addressable_shards[0].data.shape[0],
        "total": float(total), "primary": d.is_primary(),
        "broadcast": d.broadcast_int(100 + jax.process_index()),
    }))
    """
)


def _probe_env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_"))}
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
    return env


def _probe(args, devices):
    return subprocess.Popen(
        [sys.executable, "-c", _PROBE, *args],
        cwd=ROOT,
        env=_probe_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc) -> dict:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


EXPECTED_TOTAL = float((np.arange(24, dtype=np.float64) ** 2).sum())


def test_four_devices_one_process():
    result = _result(_probe(["-", "-", "-"], devices=4))
    assert result == {
        "how": "single",
        "devices": 4,
        "process": 0,
        "rows": [0, 8],
        "shard_rows": 2,
        "total": EXPECTED_TOTAL,
        "primary": True,
        "broadcast": 100,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_localhost_each_feed_their_rows():
    address = f"127.0.0.1:{_free_port()}"
    procs = [_probe([address, "2", str(i)], devices=2) for i in range(2)]
    results = [_result(p) for p in procs]
    for i, result in enumerate(results):
        assert result == {
            "how": "flags",
            "devices": 4,
            "process": i,
            "rows": [4 * i, 4 * i + 4],
            "shard_rows": 2,
            "total": EXPECTED_TOTAL,
            "primary": i == 0,
            "broadcast": 100,
        }
