"""Multi-device and multi-host set-up: jax.distributed, the data mesh and global batches.

One process or many, one device or many, the training code sees the same thing: a 1-D
`jax.sharding.Mesh` named ``"data"`` over every device of every process, batches sharded along
it and everything else replicated. One device is the one-device case of the same code.
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID")
_TPU_HOST_LISTS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """Names the multi-process cluster this process runs in, or None on a single machine.

    It reads only environment variables, whether libtpu is installed and TPU device files, so it
    is cheap and safe on a laptop: no network, no backend initialisation.

    Args:
      environ: the environment to inspect; `os.environ` when None.

    Returns:
      ``"env"`` when ``JAX_COORDINATOR_ADDRESS`` is set, ``"slurm"`` inside an ``srun`` step of
      more than one task, ``"openmpi"`` under ``mpirun`` with more than one rank, ``"tpu"`` on a
      Cloud TPU VM (libtpu installed and TPU chips present; jax reads the pod's topology from
      the VM's metadata) or under GKE's TPU variables, else None.
    """
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "env"
    if all(var in env for var in _SLURM_VARS) and _int(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and _int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    if any(var in env for var in (*_TPU_HOST_LISTS, "MEGASCALE_COORDINATOR_ADDRESS")):
        return "tpu"
    if importlib.util.find_spec("libtpu") is not None and _has_tpu_chips():
        return "tpu"
    return None


def _has_tpu_chips() -> bool:
    """Whether this host exposes TPU chips (device files of a Cloud TPU VM)."""
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Starts JAX's distributed runtime when the run spans several processes.

    Must run before any other JAX call touches a device. With the three flags it calls
    `jax.distributed.initialize` with them; without flags, inside a cluster that `detect_cluster`
    recognises, it calls `jax.distributed.initialize()` and lets jax read the cluster's
    environment; otherwise (one process on one machine) it does nothing.

    Args:
      coordinator_address: ``host:port`` of process 0 (``--coordinator-address``).
      num_processes: total number of processes (``--num-processes``).
      process_id: this process's index in ``[0, num_processes)`` (``--process-id``).
      environ: the environment to inspect; `os.environ` when None.

    Returns:
      How the run was set up: ``"single"``, ``"flags"``, or `detect_cluster`'s name.

    Raises:
      ValueError: some but not all of the three flags are given outside a recognised cluster,
        or ``num_processes``/``process_id`` are out of range.
    """
    flags = {
        "--coordinator-address": coordinator_address,
        "--num-processes": num_processes,
        "--process-id": process_id,
    }
    cluster = detect_cluster(environ)
    if all(value is None for value in flags.values()):
        if cluster is None:
            return "single"
        jax.distributed.initialize()
        return cluster
    missing = [name for name, value in flags.items() if value is None]
    if missing and cluster is None:
        raise ValueError(
            f"multi-process training needs {', '.join(flags)} together; got "
            f"{', '.join(f'{k} {v}' for k, v in flags.items() if v is not None)} but not "
            f"{', '.join(missing)}. Pass all three on every process (process ids 0..N-1), or "
            "none of them on a single machine or inside SLURM/Open MPI/a Cloud TPU pod."
        )
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process-id must be in [0, {num_processes}) for --num-processes {num_processes}, "
            f"got {process_id}"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    return "flags"


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


class BatchSizeError(ValueError):
    """The global batch size does not split evenly over the devices."""


def check_batch_size(batch_size: int, *, num_devices: int, num_processes: int = 1) -> None:
    """Checks that a global batch splits evenly over the devices (and so over the processes).

    Args:
      batch_size: the global batch size (``--batch-size``).
      num_devices: devices in the mesh, all processes together.
      num_processes: processes feeding the mesh.

    Raises:
      BatchSizeError: ``batch_size`` is not a positive multiple of ``num_devices``; the message
        names the two nearest valid batch sizes.
    """
    if batch_size < 1 or batch_size % num_devices:
        lower = max(num_devices, batch_size // num_devices * num_devices)
        upper = (batch_size // num_devices + 1) * num_devices
        hosts = f" on {num_processes} processes" if num_processes > 1 else ""
        raise BatchSizeError(
            f"--batch-size {batch_size} does not split evenly over {num_devices} devices{hosts}: "
            f"the global batch is divided equally between devices. Use a multiple of "
            f"{num_devices}, e.g. --batch-size {lower} or --batch-size {upper}."
        )


def local_rows(sharding: NamedSharding, global_rows: int) -> slice:
    """The contiguous rows of dimension 0 that this process's devices hold under ``sharding``.

    Args:
      sharding: a sharding whose dimension 0 is split over (some) processes.
      global_rows: size of dimension 0 of the global array.

    Returns:
      ``slice(start, stop)``: what this process feeds to `global_batch`.

    Raises:
      ValueError: this process's rows are not contiguous (a mesh not ordered by process).
    """
    indices = sharding.addressable_devices_indices_map((global_rows,)).values()
    spans = sorted({idx[0].indices(global_rows)[:2] for idx in indices})
    for (_, stop), (start, _) in itertools.pairwise(spans):
        if stop != start:
            raise ValueError(f"rows of process {jax.process_index()} are not contiguous: {spans}")
    return slice(spans[0][0], spans[-1][1])


def global_batch(local: np.ndarray, sharding: NamedSharding, global_shape: tuple[int, ...]):
    """Assembles a global array from the part this process holds (`local_rows` of it).

    Each process passes only its own rows; no process ever holds the whole batch.

    Args:
      local: this process's rows, shaped ``global_shape`` with dimension 0 cut to `local_rows`.
      sharding: how the global array is laid out over the mesh.
      global_shape: shape of the assembled array.

    Returns:
      A `jax.Array` of ``global_shape`` spanning every process's devices.
    """
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def is_primary() -> bool:
    """True on process 0, the only one that writes logs, metrics and checkpoints."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name``; free with one process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


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
