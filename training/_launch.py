"""Which processes make up a run, read from flags and launchers, and joining them within a deadline.

`resolve_launch` decides, before any device is touched, whether this process runs alone or as
one of several, and with which coordinator address, process count and process id. The flags win;
what they leave out comes from the launcher's environment:

- SLURM ``srun`` (jax's own rule, ``SLURM_LOCALID`` included): id ``SLURM_PROCID``, count
  ``SLURM_NTASKS``; jax finds the coordinator.
- Open MPI ``mpirun``: ``OMPI_COMM_WORLD_RANK``/``_SIZE``; jax finds the coordinator from the
  ORTE URI, or through mpi4py.
- MPICH, Intel MPI, MVAPICH, PMIx: ``PMI_RANK``/``PMI_SIZE`` (``MV2_COMM_WORLD_*``,
  ``PMIX_RANK``); the coordinator through mpi4py when it is installed.
- torchrun-style variables (Kubeflow's PyTorchJob, ...): ``RANK``, ``WORLD_SIZE`` and
  ``MASTER_ADDR:MASTER_PORT``.
- Kubernetes Indexed Job or JobSet: id ``JOB_COMPLETION_INDEX``; the count and coordinator from
  the flags (or from the API server by jax, when the ``kubernetes`` package is installed).
- Cloud TPU pod: GKE's ``TPU_WORKER_HOSTNAMES``, or the VM's worker list; jax does the rest.

``JAX_COORDINATOR_ADDRESS`` supplies the coordinator wherever it is set. Under torchrun itself
(``TORCHELASTIC_RUN_ID``) ``MASTER_PORT`` belongs to torchrun's own store, so the coordinator must
be given. When the process count or id cannot be found, `resolve_launch` refuses with a message
that says which setting to pass: a worker never runs as a silent copy of process 0. A Cloud TPU
VM is asked for its worker list (metadata server, 2 s timeout); a single host, or a container
without the metadata server, runs as one process without calling ``jax.distributed``.

`join` starts ``jax.distributed`` within a deadline. jax's own time-outs end in a C++ abort that
never names the address (and a coordinator port already in use crashes the process), so `join`
checks the port first, waits for jax in a thread of its own, and reports and ends the process
when the deadline passes, naming the coordinator and what a connection attempt found.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping

import jax

from training._config import check_host_port
from training._errors import ConfigError, LaunchError

METADATA_TIMEOUT_S = 2.0
_JAX_GRACE_S = 30  # jax's own deadline comes after join's


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process takes part in the run.

    Attributes:
      source: where the settings came from (``"one process"``, ``"flags"``, ``"SLURM"``, ...).
      num_processes: processes in the run (None: jax reads it from the launcher).
      process_id: this process's index (None: jax reads it from the launcher).
      coordinator_address: process 0's ``host:port`` (None: jax finds it).
      cluster_detection_method: passed to `jax.distributed.initialize` (e.g. ``"mpi4py"``).
      local_device_ids: the devices of this process when several share a host.
    """

    source: str
    num_processes: int | None = 1
    process_id: int | None = 0
    coordinator_address: str | None = None
    cluster_detection_method: str | None = None
    local_device_ids: tuple[int, ...] | None = None

    @property
    def single(self) -> bool:
        return self.num_processes == 1

    def describe(self) -> str:
        if self.single:
            return "one process"
        count = "?" if self.num_processes is None else self.num_processes
        me = "?" if self.process_id is None else self.process_id
        where = self.coordinator_address or "found by jax"
        return f"process {me} of {count}, coordinator {where} ({self.source})"


@dataclasses.dataclass(frozen=True)
class _Found:
    """What a launcher's environment says (None: it does not say)."""

    name: str
    process_id: int | None = None
    num_processes: int | None = None
    coordinator_address: str | None = None
    jax_completes: bool = False  # jax.distributed finds what is missing
    cluster_detection_method: str | None = None
    local_device_ids: tuple[int, ...] | None = None
    hint: str = ""


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    if name not in env:
        return None
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(
            "the launcher's {var} must be an integer, got {got!r}", var=name, got=env[name]
        ) from None


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _slurm(env: Mapping[str, str]) -> _Found | None:
    # jax's SlurmCluster rule: an srun step, not an sbatch script (which runs once).
    names = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID")
    if not all(n in env for n in (*names, "SLURM_LOCALID")):
        return None
    return _Found(
        "SLURM",
        process_id=_env_int(env, "SLURM_PROCID"),
        num_processes=_env_int(env, "SLURM_NTASKS"),
        jax_completes=True,
    )


def _mpi(env: Mapping[str, str]) -> _Found | None:
    for name, rank, size in (
        ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("MPI (PMI)", "PMI_RANK", "PMI_SIZE"),
        ("MVAPICH", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),
        ("MPI (PMIx)", "PMIX_RANK", None),
    ):
        if rank in env:
            orte = "OMPI_MCA_orte_hnp_uri" in env  # jax's OmpiCluster reads its address
            mpi4py = _has_module("mpi4py")
            return _Found(
                name,
                process_id=_env_int(env, rank),
                num_processes=None if size is None else _env_int(env, size),
                jax_completes=orte or mpi4py,
                cluster_detection_method=None if orte else "mpi4py" if mpi4py else None,
                hint="pip install mpi4py (jax then asks MPI for rank 0's address), or pass ",
            )
    return None


def _torchrun(env: Mapping[str, str]) -> _Found | None:
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    address = None
    hint = "pass "
    if "TORCHELASTIC_RUN_ID" in env:
        hint = "torchrun's own store listens on MASTER_PORT: pass "
    elif env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
        address = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    local = _env_int(env, "LOCAL_RANK")
    several = (_env_int(env, "LOCAL_WORLD_SIZE") or 1) > 1
    return _Found(
        "torchrun-style RANK/WORLD_SIZE",
        process_id=_env_int(env, "RANK"),
        num_processes=_env_int(env, "WORLD_SIZE"),
        coordinator_address=address,
        local_device_ids=(local,) if several and local is not None else None,
        hint=hint,
    )


def _kubernetes(env: Mapping[str, str]) -> _Found | None:
    if "JOB_COMPLETION_INDEX" not in env:
        return None
    with_api = "KUBERNETES_SERVICE_HOST" in env and _has_module("kubernetes")
    return _Found(
        "Kubernetes JobSet" if "JOBSET_NAME" in env else "Kubernetes Indexed Job",
        process_id=_env_int(env, "JOB_COMPLETION_INDEX"),
        jax_completes=with_api,
        hint="pip install kubernetes (jax then reads them from the API server), or pass ",
    )


def _tpu_pod(env: Mapping[str, str]) -> _Found | None:
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES")
    if hosts is None and "MEGASCALE_COORDINATOR_ADDRESS" not in env:
        return None
    count = len([h for h in (hosts or "").split(",") if h.strip()])
    multislice = (_env_int(env, "MEGASCALE_NUM_SLICES") or 1) > 1
    return _Found(
        "Cloud TPU",
        num_processes=None if multislice or not count else count,
        jax_completes=True,
    )


_LAUNCHERS = (_slurm, _mpi, _torchrun, _kubernetes, _tpu_pod)


def tpu_vm_workers(
    environ: Mapping[str, str] | None = None, *, timeout: float = METADATA_TIMEOUT_S
) -> int | None:
    """How many hosts this Cloud TPU VM's slice has, from the metadata server.

    Returns:
      The number of workers, or None when this is not a TPU VM (no libtpu or no TPU chips),
      ``TPU_SKIP_MDS_QUERY`` is set, or the metadata server does not answer within ``timeout``
      (a container without it).
    """
    env = os.environ if environ is None else environ
    if "TPU_SKIP_MDS_QUERY" in env or not _is_tpu_vm():
        return None
    host = env.get("GCE_METADATA_IP", "metadata.google.internal")
    url = f"http://{host}/computeMetadata/v1/instance/attributes/worker-network-endpoints"
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    return max(1, len([w for w in text.split(",") if w.strip()]))


def _is_tpu_vm() -> bool:
    """libtpu is installed and the host exposes TPU chips (device files of a Cloud TPU VM)."""
    chips = glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")
    return bool(chips) and _has_module("libtpu")


def detect_launcher(
    environ: Mapping[str, str] | None = None,
    *,
    tpu_workers: Callable[[Mapping[str, str]], int | None] = tpu_vm_workers,
) -> _Found | None:
    """What the launcher's environment says about this process, or None when nothing does."""
    env = os.environ if environ is None else environ
    for launcher in _LAUNCHERS:
        if (found := launcher(env)) is not None:
            return found
    workers = tpu_workers(env)
    if workers is not None and workers > 1:
        return _Found("Cloud TPU VM", num_processes=workers, jax_completes=True)
    return None


def resolve_launch(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    tpu_workers: Callable[[Mapping[str, str]], int | None] = tpu_vm_workers,
) -> Launch:
    """Decides how this process takes part in the run, from the flags and the environment.

    Args:
      coordinator_address: process 0's ``host:port``, or None.
      num_processes: the number of processes, or None.
      process_id: this process's index, or None.
      environ: the environment to read; `os.environ` when None.
      tpu_workers: how many hosts a Cloud TPU VM's slice has (`tpu_vm_workers`).

    Returns:
      The `Launch`; ``single`` when the run is this process alone.

    Raises:
      ConfigError: the settings are incomplete (a process count but no coordinator, a worker
        whose id cannot be found, ...) or out of range; the message says what to pass.
    """
    env = os.environ if environ is None else environ
    flags = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    found = detect_launcher(env, tpu_workers=tpu_workers)
    env_coordinator = env.get("JAX_COORDINATOR_ADDRESS") or None
    if found is None and env_coordinator is None and all(v is None for v in flags.values()):
        return Launch("one process")
    from_env = dataclasses.asdict(found) if found else {}
    if env_coordinator is not None:
        from_env["coordinator_address"] = env_coordinator
    values = {k: v if v is not None else from_env.get(k) for k, v in flags.items()}
    source = (
        found.name if found else "flags" if env_coordinator is None else "JAX_COORDINATOR_ADDRESS"
    )
    if values["coordinator_address"] is not None:
        check_host_port(values["coordinator_address"])
    count, me = values["num_processes"], values["process_id"]
    if count is not None and count < 1:
        raise ConfigError("{@num_processes} must be at least 1, got {got}", got=count)
    if count is not None and me is not None and not 0 <= me < count:
        raise ConfigError(
            "{@process_id} must be in [0, {n}) for {@num_processes} {n}, got {got} (from {src})",
            n=count,
            got=me,
            src=source,
        )
    if count == 1:
        return Launch(source)
    missing = [k for k, v in values.items() if v is None]
    if missing and not (found is not None and found.jax_completes):
        raise _incomplete(values, missing, found)
    # jax's own detection runs only for launchers it knows (it also picks each process's
    # devices there); otherwise it must not second-guess the settings, nor warn about a
    # Kubernetes pod without the kubernetes package.
    jax_knows = found is not None and found.jax_completes
    method = found.cluster_detection_method if jax_knows else "deactivate"
    return Launch(
        source,
        num_processes=count,
        process_id=me,
        coordinator_address=values["coordinator_address"],
        cluster_detection_method=method,
        local_device_ids=found.local_device_ids if found else None,
    )


def _incomplete(values: dict, missing: list[str], found: _Found | None) -> ConfigError:
    known = [k for k, v in values.items() if v is not None]
    got = ", ".join(f"{{@{k}}} {{{k}}}" for k in known) or "none of them"
    wanted = ", ".join(f"{{@{k}}}" for k in missing)
    shown = {k: values[k] for k in known}
    if found is None:
        return ConfigError(
            "several processes need {@coordinator_address}, {@num_processes} and {@process_id} "
            "together; got " + got + " but not " + wanted + ". Pass all three on every process "
            "(process ids 0..N-1), or none of them on a single machine or under a launcher "
            "that sets them (SLURM srun, mpirun, torchrun-style RANK/WORLD_SIZE, a Cloud TPU "
            "pod).",
            **shown,
        )
    return ConfigError(
        "this process runs under {launcher}, which gives "
        + got
        + " but not "
        + wanted
        + ": {hint}"
        + wanted
        + " on every process (a worker that cannot tell its place would "
        "run as a copy of process 0).",
        launcher=found.name,
        hint=found.hint or "pass ",
        **shown,
    )


def join(
    launch: Launch,
    *,
    timeout_s: float,
    log: Callable[[str], None] = print,
    on_timeout: Callable[[LaunchError], None] | None = None,
) -> None:
    """Starts ``jax.distributed`` for ``launch`` (nothing for one process), within a deadline.

    Must run before any other JAX call touches a device.

    Args:
      launch: from `resolve_launch`.
      timeout_s: seconds for every process to join.
      log: where to say what this process is waiting for.
      on_timeout: called with the error when the deadline passes; it must end the process,
        since the runtime's C++ wait (in a thread of its own) cannot be interrupted. Default:
        print the error to stderr and exit with status 1.

    Raises:
      LaunchError: process 0 cannot listen on the coordinator's port.
    """
    if launch.single:
        return
    if launch.process_id == 0 and launch.coordinator_address is not None:
        _check_port_free(launch.coordinator_address)
    log(f"joining the run as {launch.describe()}; waiting up to {timeout_s:g} s for all processes")
    done = threading.Event()
    failed: list[BaseException] = []

    def initialize() -> None:
        try:
            # JAX's preemption service would take SIGTERM from train.py's handler (training.
            # _interrupt): the run then went on to its end with exit status 0.
            jax.config.update("jax_enable_preemption_service", False)
            jax.distributed.initialize(
                coordinator_address=launch.coordinator_address,
                num_processes=launch.num_processes,
                process_id=launch.process_id,
                local_device_ids=list(launch.local_device_ids) if launch.local_device_ids else None,
                cluster_detection_method=launch.cluster_detection_method,
                initialization_timeout=int(timeout_s) + _JAX_GRACE_S,
            )
        except BaseException as err:  # raised again in the main thread
            failed.append(err)
        finally:
            done.set()

    # In a thread of its own: JAX waits for the other processes in C++, where neither Python's
    # signal handlers (Ctrl-C and SIGTERM did nothing) nor a deadline can reach it; the main
    # thread keeps both.
    threading.Thread(target=initialize, name="jaxce-join", daemon=True).start()
    deadline, reported = time.monotonic() + timeout_s, False
    while not done.wait(0.1):
        if not reported and time.monotonic() > deadline:
            reported = True
            (on_timeout or _exit_on_timeout)(_timeout_error(launch, timeout_s))
    if failed:
        raise failed[0]


def _exit_on_timeout(error: LaunchError) -> None:
    print(f"error: {error}", file=sys.stderr, flush=True)
    os._exit(1)


def _check_port_free(address: str) -> None:
    _, port = check_host_port(address)
    bind = os.environ.get("JAX_COORDINATOR_BIND_ADDRESS")
    family, host = (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")
    if bind:
        host, port = check_host_port(bind)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        raise LaunchError(
            "process 0 cannot listen on port {port} for the coordinator {address} ({reason}); "
            "choose a free port in {@coordinator_address}, or, if process 0 of this run is "
            "already running, give this process another {@process_id}",
            port=port,
            address=address,
            reason=err.strerror or err,
        ) from None


def _timeout_error(launch: Launch, timeout_s: float) -> LaunchError:
    if launch.process_id == 0:
        reason = (
            "the other processes did not all join; start each with the same "
            "{@coordinator_address} and {@num_processes}, and a distinct {@process_id}",
            {},
        )
    else:
        reason = _probe(launch.coordinator_address)
    return LaunchError(
        "process {me} of {count} could not join the run at coordinator {address} within "
        "{timeout:g} s ({@coordinator_timeout}): " + reason[0],
        me="?" if launch.process_id is None else launch.process_id,
        count=launch.num_processes or "all",
        address=launch.coordinator_address or "(found by jax)",
        timeout=timeout_s,
        **reason[1],
    )


def _probe(address: str | None) -> tuple[str, dict[str, object]]:
    """What a TCP connection to the coordinator finds: advice as a template and its values."""
    if address is None:
        return "check the launcher's settings", {}
    host, port = check_host_port(address)
    where = {"host": host, "port": port}
    try:
        socket.create_connection((host, port), timeout=2.0).close()
    except socket.gaierror as err:
        return (
            "the host {host} cannot be resolved ({why}); check {@coordinator_address}",
            {**where, "why": err.strerror or err},
        )
    except ConnectionRefusedError:
        return (
            "nothing listens at {host}:{port}; is process 0 running, with the same "
            "{@coordinator_address}?",
            where,
        )
    except OSError as err:
        return (
            "{host}:{port} does not answer ({why}); a firewall, or the wrong host?",
            {**where, "why": err.strerror or err},
        )
    return (
        "process 0 is listening at {host}:{port}, but not every process joined; start all of "
        "them with the same {@num_processes}",
        where,
    )
