"""The data mesh, its shardings, the batch-size rule and the few collectives a run needs.

One process or many, one device or many, the training code sees the same thing: a 1-D
`jax.sharding.Mesh` named ``"data"`` over every device of every process, batches sharded along
it and everything else replicated. One device is the one-device case of the same code. Joining
the processes is `training._launch`'s job.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from orbax.checkpoint import multihost as ocp_multihost

from training import _errors
from training._errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over every device of every process (topology-aware order).

    Args:
      devices: the devices to use; `jax.devices()` (all processes) when None.

    Returns:
      The mesh, with an ``Auto`` axis (shardings propagate through jit as usual).
    """
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of parameters and optimizer state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, ndim: int = 1, *, axis: int = 0) -> NamedSharding:
    """The sharding of a batch: dimension ``axis`` split over the ``"data"`` axis.

    Args:
      mesh: the data mesh.
      ndim: rank of the arrays this sharding is for.
      axis: the batch dimension (``1`` for a stack of batches shaped ``[steps, batch, ...]``).
    """
    spec = [None] * ndim
    spec[axis] = DATA_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


class BatchSizeError(ConfigError):
    """The global batch size does not split evenly over the devices, or exceeds the data."""


def check_batch_size(
    batch_size: int, *, num_devices: int, num_processes: int = 1, num_train: int | None = None
) -> None:
    """Checks that a global batch splits evenly over the devices and fits the training split.

    Args:
      batch_size: the global batch size.
      num_devices: devices in the mesh, all processes together.
      num_processes: processes feeding the mesh (named in the message).
      num_train: examples in the training split; a batch may hold at most that many, rounded
        up to a multiple of ``num_devices`` (a larger one would be mostly padding).

    Raises:
      BatchSizeError: ``batch_size`` is not a positive multiple of ``num_devices`` (the message
        names the two nearest valid sizes), or is larger than the training split.
    """
    largest = None if num_train is None else -(-num_train // num_devices) * num_devices
    if batch_size < 1 or batch_size % num_devices:
        lower = max(num_devices, batch_size // num_devices * num_devices)
        upper = (batch_size // num_devices + 1) * num_devices
        sizes = sorted({lower, upper})  # one size when the batch is below the device count
        if largest is not None:  # not a size refused next for exceeding the training split
            sizes = [size for size in sizes if size <= largest] or [largest]
        raise BatchSizeError(
            "{@batch_size} {got} does not split evenly over {devices} devices{hosts}: the global "
            "batch is divided equally between devices. Use a multiple of {devices}, e.g. "
            + " or ".join("{@batch_size} " + str(size) for size in sizes)
            + ".",
            got=batch_size,
            devices=num_devices,
            hosts=f" on {num_processes} processes" if num_processes > 1 else "",
        )
    if largest is not None and batch_size > largest:
        raise BatchSizeError(
            "{@batch_size} {got} is larger than the training split ({n} examples): every step "
            "would be mostly padding. Use at most {@batch_size} {largest}.",
            got=batch_size,
            n=num_train,
            largest=largest,
        )


def is_primary() -> bool:
    """True on process 0, the only one that writes logs, metrics and checkpoints."""
    return jax.process_index() == 0


BARRIER_TIMEOUT_S = 1800
_barriers = itertools.count()


def barrier(name: str, *, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Waits until every process reaches barrier ``name``; free with one process.

    It waits through jax.distributed's coordination service (up to ``timeout_s``), not through a
    collective on the devices, whose CPU (gloo) form gives up when another process is more than
    30 s behind (still compiling, or writing a checkpoint's commit file). Every process must
    pass the same barriers in the same order.
    """
    if jax.process_count() > 1:
        key = f"jaxce:{name}:{next(_barriers)}"
        ocp_multihost.get_barrier_sync_fn()(key=key, timeout_ms=int(timeout_s * 1000))


_votes = itertools.count()
ABANDONED = "jaxce:abandoned"  # set by a process that stops alone (a second Ctrl-C)


def any_process(flag: bool, *, timeout_s: float = BARRIER_TIMEOUT_S) -> bool:
    """True on every process if ``flag`` is True on any; ``flag`` itself with one process.

    Through jax.distributed's coordination service, as `barrier` (a device collective gives up
    when a process is 30 s behind): each process posts its flag and reads every other's,
    polling, so that the main thread stays in Python and Ctrl-C or SIGTERM still reach it. A
    process that stopped alone (`abandon`) ends the wait as a flag set. Every process must ask
    the same questions in the same order.
    """
    if jax.process_count() == 1:
        return flag
    client = ocp_multihost.get_jax_distributed_client()
    vote = f"jaxce:any:{next(_votes)}"
    client.key_value_set(f"{vote}:{jax.process_index()}", "1" if flag else "0")
    waiting = set(range(jax.process_count()))
    deadline, flags = time.monotonic() + timeout_s, []
    while waiting:
        for i in sorted(waiting):
            posted = _try_get(client, f"{vote}:{i}")
            if posted is not None:
                flags.append(posted == "1")
                waiting.discard(i)
        if waiting:
            if _try_get(client, ABANDONED) is not None:
                return True
            if time.monotonic() > deadline:
                raise _errors.LaunchError(
                    "processes {waiting} did not reach the same point of the run within "
                    "{timeout:g} s; they may have ended: see their output",
                    waiting=sorted(waiting),
                    timeout=timeout_s,
                )
            time.sleep(0.005)
    return any(flags)


def _try_get(client, key: str) -> str | None:
    """The value posted under ``key``, or None if none is yet."""
    try:
        return client.key_value_try_get(key)
    except jax.errors.JaxRuntimeError:  # NOT_FOUND
        return None


def leave(*, timeout_s: float = 10.0) -> None:
    """Before this process exits on an interruption (several processes): the others, waiting in
    `any_process`, are told it is gone (one that stops alone, at a second signal, would leave
    them waiting), and process 0, whose exit takes the coordination service with it and makes
    JAX abort any process still using it (a C++ stack trace), waits until they have left (at
    most ``timeout_s``: one stuck in a collective is aborted all the same)."""
    if jax.process_count() == 1 or not jax.distributed.is_initialized():
        return
    client = ocp_multihost.get_jax_distributed_client()
    with contextlib.suppress(jax.errors.JaxRuntimeError):  # already set by another process
        client.key_value_set(ABANDONED, "1")
    with contextlib.suppress(jax.errors.JaxRuntimeError):
        client.key_value_set(f"jaxce:left:{jax.process_index()}", "1")
    if jax.process_index() != 0:
        return
    deadline = time.monotonic() + timeout_s
    others = set(range(1, jax.process_count()))
    while others and time.monotonic() < deadline:
        others = {i for i in others if _try_get(client, f"jaxce:left:{i}") is None}
        time.sleep(0.01)


def broadcast_int(value: int) -> int:
    """Process 0's ``value``, on every process (unchanged with one process)."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def broadcast_str(text: str, *, max_bytes: int = 4096) -> str:
    """Process 0's ``text`` (UTF-8, at most ``max_bytes``), on every process."""
    if jax.process_count() == 1:
        return text
    data = text.encode()
    if len(data) > max_bytes:
        raise ValueError(f"cannot broadcast {len(data)} bytes, the limit is {max_bytes}")
    buffer = np.zeros(max_bytes + 1, np.int32)  # [length, bytes...]
    buffer[0], buffer[1 : len(data) + 1] = len(data), np.frombuffer(data, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(received[1 : received[0] + 1].astype(np.uint8)).decode()


def on_primary(fn: Callable[[], Any]) -> Any:
    """Runs ``fn`` on process 0 alone; every process gets its result or raises its error.

    ``fn`` returns something JSON-able. A `TrainingError` it raises on process 0 is raised, with
    the same class and message, on every process, so all of them stop together.
    """
    if jax.process_count() == 1:
        return fn()
    error = None
    payload = ""
    if is_primary():
        try:
            payload = json.dumps({"result": fn()})
        except _errors.TrainingError as err:
            error = err
            values = {
                k: v if isinstance(v, (int, float, str)) else str(v) for k, v in err.values.items()
            }
            payload = json.dumps(
                {"error": type(err).__name__, "template": err.template, "values": values}
            )
    barrier("on_primary")  # the others wait here, not in the broadcast, for process 0's fn
    received = json.loads(broadcast_str(payload, max_bytes=65536))
    if error is not None:
        raise error
    if "error" in received:
        raise getattr(_errors, received["error"])(received["template"], **received["values"])
    return received["result"]


def check_same_everywhere(values: dict[str, Any], *, error: type = ConfigError) -> None:
    """Raises ``error`` on every process if any process's ``values`` differ from process 0's.

    Every process must run the same command: with another ``--seed`` or ``--lr`` a process
    trained its own model under process 0's name (metrics.json recorded process 0's settings),
    and with another ``--epochs`` the processes waited for each other in a collective until
    they were killed. ``values`` (JSON-able, keyed by setting, or ``"data"``) are compared
    with process 0's; the process that differs names the settings, the others point to it.
    """
    if jax.process_count() == 1:
        return
    primary = json.loads(broadcast_str(json.dumps(values, sort_keys=True)))
    differ = sorted(k for k in values if values[k] != primary.get(k))
    if not any_process(bool(differ)):
        return
    if not differ:
        raise error(
            "another process was started with other settings or data than this one (see its "
            "error); run the same command, on the same data, on every process"
        )
    shown = {f"got_{i}": values[k] for i, k in enumerate(differ)}
    shown.update({f"want_{i}": primary[k] for i, k in enumerate(differ)})
    parts = [
        ("the data" if k == "data" else f"{{@{k}}}") + f" is {{got_{i}}} here but {{want_{i}}} "
        "on process 0"
        for i, k in enumerate(differ)
    ]
    raise error(
        "process {index}: "
        + "; ".join(parts)
        + "; run the same command, on the same data, on every process",
        index=jax.process_index(),
        **shown,
    )
