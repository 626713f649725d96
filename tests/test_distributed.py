"""training._distributed: the mesh, the batch-size rule and the collectives, on 1, 4 devices and
2 processes.

Multi-device and multi-process behaviour runs in subprocesses (4 forced CPU devices; two
processes on localhost with CPU collectives), since a process's device count is fixed when its
backend starts. Which processes make up a run is tests/test_train_launch.py's subject.
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

from training import RunDirError, _distributed
from training._distributed import check_batch_size

ROOT = Path(__file__).resolve().parents[1]


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
        (30, 4, 1, r"batch_size 30 .* 4 devices: .* batch_size 28 or batch_size 32"),
        (2, 4, 1, r"a multiple of 4, e\.g\. batch_size 4\.$"),
        (10, 8, 2, r"8 devices on 2 processes"),
    ],
    ids=["30-on-4", "smaller-than-devices", "multi-process"],
)
def test_batch_size_that_does_not_divide_is_an_error(batch, devices, processes, match):
    with pytest.raises(ValueError, match=match) as error:
        check_batch_size(batch, num_devices=devices, num_processes=processes)
    flags = error.value.render(lambda name: "--" + name.replace("_", "-"))
    assert f"--batch-size {batch} does not split evenly" in flags


def test_the_sizes_a_batch_size_error_suggests_fit_the_training_split():
    # 8001 on 2 devices suggested 8002, which the split of 8000 examples then refused
    with pytest.raises(ValueError) as error:
        check_batch_size(8001, num_devices=2, num_train=8000)
    assert error.value.render(str).endswith("e.g. batch_size 8000.")


@pytest.mark.parametrize(
    ("batch", "devices", "num_train", "largest"),
    [(65, 1, 64, 64), (8, 4, 5, 8), (12, 4, 5, 8), (4, 4, 1, 4)],
    ids=["one-over", "rounded-up-to-devices-is-fine", "past-rounded-up", "one-example"],
)
def test_batch_size_up_to_the_training_split(batch, devices, num_train, largest):
    if batch <= largest:
        check_batch_size(batch, num_devices=devices, num_train=num_train)
        return
    with pytest.raises(ValueError, match=f"at most batch_size {largest}"):
        check_batch_size(batch, num_devices=devices, num_train=num_train)


def test_one_device_mesh():
    mesh = _distributed.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    assert _distributed.is_primary()
    assert _distributed.broadcast_int(5) == 5
    assert _distributed.on_primary(lambda: {"path": "/x"}) == {"path": "/x"}

    def refuse():
        raise RunDirError("refused")

    with pytest.raises(RunDirError, match="refused"):
        _distributed.on_primary(refuse)


_PROBE = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from training import _distributed as d
    from training import RunDirError
    from training._launch import join, resolve_launch
    args = [None if a == "-" else a for a in sys.argv[1:4]]
    launch = resolve_launch(args[0], *(None if a is None else int(a) for a in args[1:]))
    join(launch, timeout_s=60, log=lambda message: None)
    mesh = d.make_mesh()
    sharding = d.batch_sharded(mesh, 2)
    full = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    batch = jax.make_array_from_callback(full.shape, sharding, lambda i: full[i])
    total = jax.jit(lambda x: (x * x).sum(), out_shardings=d.replicated(mesh))(batch)
    d.barrier("probe")
    shared = d.on_primary(lambda: {"from": jax.process_index()})
    def refuse():
        raise RunDirError("{p} refused", p=jax.process_index())
    try:
        d.on_primary(refuse)
    except RunDirError as err:
        refused = str(err)
    print(json.dumps({
        "how": launch.source, "devices": mesh.size, "process": jax.process_index(),
        "shard_rows": batch.addressable_shards[0].data.shape[0],
        "total": float(total), "primary": d.is_primary(),
        "broadcast": d.broadcast_int(100 + jax.process_index()),
        "text": d.broadcast_str(f"from {jax.process_index()}"), "shared": shared,
        "refused": refused,
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
        "how": "one process",
        "devices": 4,
        "process": 0,
        "shard_rows": 2,
        "total": EXPECTED_TOTAL,
        "primary": True,
        "broadcast": 100,
        "text": "from 0",
        "shared": {"from": 0},
        "refused": "0 refused",
    }


_STEP_COLLECTIVES = textwrap.dedent(
    """
    import json, re
    import jax, jax.numpy as jnp, numpy as np
    from training import Dataset, Trainer, put_dataset
    rng = np.random.default_rng(0)
    def split(n):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        return images, rng.integers(0, 10, n, dtype=np.int32)
    dataset = Dataset("mnist", "random", *split(200), *split(40))
    counts = {}
    for loss in ("jaxce", "optax"):
        trainer = Trainer(hidden=(16,), learning_rate=1e-3, batch_size=64, num_train=200, loss=loss)
        state = trainer.init_state(0)
        data = put_dataset(dataset, trainer.mesh)
        order = jax.ShapeDtypeStruct((trainer.steps_per_epoch * 64,), jnp.int32,
                                     sharding=trainer._replicated)
        text = trainer.run_steps.lower(state, data, order, 0, 0).compile().as_text()
        counts[loss] = len(re.findall(r" all-reduce(?:-start)?\\(", text))
    print(json.dumps(counts))
    """
)


def test_a_train_step_all_reduces_once():
    """The step's loss and gradients cross the devices in one all-reduce: the mean's divisor,
    the step's real rows, follows from the step (a ragged last batch here: 200 = 3 x 64 + 8)."""
    proc = subprocess.run(
        [sys.executable, "-c", _STEP_COLLECTIVES],
        cwd=ROOT,
        env=_probe_env(4),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"jaxce": 1, "optax": 1}


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
            "shard_rows": 2,
            "total": EXPECTED_TOTAL,
            "primary": i == 0,
            "broadcast": 100,
            "text": "from 0",
            "shared": {"from": 0},
            "refused": "0 refused",
        }
