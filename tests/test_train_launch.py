"""training._launch: which processes make up a run, and joining them within a deadline.

Launchers are read from sample environments (no launcher is needed); jax's own SLURM rule is
compared against ours. Joining is tested with a stand-in for ``jax.distributed.initialize`` in
this process, and for real in subprocesses against a closed local port and a busy one: each must
end within the deadline with one line naming the coordinator, never jax's C++ abort.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import train
from tests.conftest import SHARED_DATA
from training import ConfigError, LaunchError, _launch
from training._launch import Launch, detect_launcher, join, resolve_launch, tpu_vm_workers

ROOT = Path(__file__).resolve().parents[1]
SLURM = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_NODELIST": "node[1-2]",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "2",
    "SLURM_LOCALID": "0",
}
TORCH = {"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
TORCH_NAME = "torchrun-style RANK/WORLD_SIZE"


def no_tpu(environ):
    return None


@pytest.fixture(autouse=True)
def without_optional_modules(monkeypatch):
    """mpi4py and kubernetes count as not installed, whatever this machine has."""
    monkeypatch.setattr(_launch, "_has_module", lambda name: False)


def found(environ):
    result = detect_launcher(environ, tpu_workers=no_tpu)
    if result is None:
        return None
    fields = ("name", "process_id", "num_processes", "coordinator_address", "jax_completes")
    return tuple(getattr(result, f) for f in fields)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, None, id="laptop"),
        pytest.param({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None, id="plain-kubernetes-pod"),
        pytest.param(SLURM, ("SLURM", 2, 4, None, True), id="srun"),
        pytest.param(
            {k: v for k, v in SLURM.items() if k != "SLURM_LOCALID"}, None, id="no-localid"
        ),
        pytest.param({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None, id="sbatch-script"),
        pytest.param(
            {
                "OMPI_COMM_WORLD_RANK": "1",
                "OMPI_COMM_WORLD_SIZE": "2",
                "OMPI_MCA_orte_hnp_uri": "u",
            },
            ("Open MPI", 1, 2, None, True),
            id="mpirun-orte",
        ),
        pytest.param(
            {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"},
            ("Open MPI", 1, 2, None, False),
            id="mpirun-pmix",
        ),
        pytest.param(
            {"PMI_RANK": "3", "PMI_SIZE": "8"}, ("MPI (PMI)", 3, 8, None, False), id="mpich"
        ),
        pytest.param(
            {"MV2_COMM_WORLD_RANK": "0", "MV2_COMM_WORLD_SIZE": "2"},
            ("MVAPICH", 0, 2, None, False),
            id="mvapich",
        ),
        pytest.param({"PMIX_RANK": "5"}, ("MPI (PMIx)", 5, None, None, False), id="pmix"),
        pytest.param(TORCH, (TORCH_NAME, 1, 4, "10.0.0.1:29500", False), id="rank"),
        pytest.param(
            {**TORCH, "TORCHELASTIC_RUN_ID": "r"},
            (TORCH_NAME, 1, 4, None, False),
            id="torchrun-owns-master-port",
        ),
        pytest.param(
            {"JOB_COMPLETION_INDEX": "3"},
            ("Kubernetes Indexed Job", 3, None, None, False),
            id="indexed-job",
        ),
        pytest.param(
            {"JOB_COMPLETION_INDEX": "0", "JOBSET_NAME": "js"},
            ("Kubernetes JobSet", 0, None, None, False),
            id="jobset",
        ),
        pytest.param(
            {"TPU_WORKER_HOSTNAMES": "a,b,c,d"}, ("Cloud TPU", None, 4, None, True), id="gke-tpu"
        ),
        pytest.param(
            {"TPU_WORKER_HOSTNAMES": "a,b", "MEGASCALE_NUM_SLICES": "2"},
            ("Cloud TPU", None, None, None, True),
            id="multislice",
        ),
    ],
)
def test_launcher_environments(environ, expected):
    assert found(environ) == expected


def test_several_processes_per_host_get_one_device_each():
    environ = {**TORCH, "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert resolve_launch(environ=environ, tpu_workers=no_tpu).local_device_ids == (1,)
    assert resolve_launch(environ=TORCH, tpu_workers=no_tpu).local_device_ids is None


@pytest.mark.parametrize(
    ("flags", "environ", "expected"),
    [
        pytest.param((None, None, None), {}, Launch("one process"), id="laptop"),
        pytest.param(("h:1", 2, 1), {}, Launch("flags", 2, 1, "h:1", "deactivate"), id="flags"),
        pytest.param(
            (None, None, None),
            {**SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"},
            Launch("SLURM"),
            id="one-slurm-task",
        ),
        pytest.param((None, None, None), SLURM, Launch("SLURM", 4, 2, None), id="slurm"),
        pytest.param(
            ("n1:9999", None, None), SLURM, Launch("SLURM", 4, 2, "n1:9999"), id="slurm-with-port"
        ),
        pytest.param(
            (None, None, None),
            TORCH,
            Launch(TORCH_NAME, 4, 1, "10.0.0.1:29500", "deactivate"),
            id="torch-style",
        ),
        pytest.param(
            ("10.0.0.1:1234", None, None),
            {**TORCH, "TORCHELASTIC_RUN_ID": "r"},
            Launch(TORCH_NAME, 4, 1, "10.0.0.1:1234", "deactivate"),
            id="torchrun-with-address",
        ),
        pytest.param(
            ("h:1", 4, None),
            {"JOB_COMPLETION_INDEX": "3"},
            Launch("Kubernetes Indexed Job", 4, 3, "h:1", "deactivate"),
            id="indexed-job-with-flags",
        ),
        pytest.param(
            (None, 2, 0),
            {"JAX_COORDINATOR_ADDRESS": "h:5"},
            Launch("JAX_COORDINATOR_ADDRESS", 2, 0, "h:5", "deactivate"),
            id="jax-variable",
        ),
        pytest.param(
            (None, None, None),
            {"TPU_WORKER_HOSTNAMES": "only-me"},
            Launch("Cloud TPU"),
            id="single-host-gke-tpu",
        ),
    ],
)
def test_resolve_launch(flags, environ, expected):
    assert resolve_launch(*flags, environ=environ, tpu_workers=no_tpu) == expected


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        (None, Launch("one process")),
        (1, Launch("one process")),
        (4, Launch("Cloud TPU VM", 4, None)),
    ],
    ids=["no-metadata-server", "single-host-vm", "pod-vm"],
)
def test_cloud_tpu_vm_initializes_only_for_a_pod(workers, expected):
    assert resolve_launch(environ={}, tpu_workers=lambda env: workers) == expected


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param(("h:1", None, 0), "but not num_processes", id="missing-num-processes"),
        pytest.param((None, 2, None), "not coordinator_address, process_id", id="two-missing"),
        pytest.param(("h:1", 2, 2), r"process_id must be in \[0, 2\)", id="id-out-of-range"),
        pytest.param(("h:1", 0, 0), "num_processes must be at least 1", id="zero-processes"),
    ],
)
def test_bad_settings_raise_before_jax_starts(calls, args, match):
    with pytest.raises(ConfigError, match=match):
        resolve_launch(*args, environ={}, tpu_workers=no_tpu)
    assert calls == []


def test_refusals_name_what_is_missing():
    with pytest.raises(ConfigError) as error:
        resolve_launch(None, 2, None, environ={}, tpu_workers=no_tpu)
    assert "got num_processes 2 but not coordinator_address, process_id" in str(error.value)
    assert "got --num-processes 2 but not --coordinator-address, --process-id" in (
        error.value.render(train.flag)
    )


@pytest.mark.parametrize(
    "environ",
    [
        SLURM,
        {k: v for k, v in SLURM.items() if k != "SLURM_LOCALID"},
        {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"},
        {"SLURM_JOB_ID": "7"},
        {},
    ],
    ids=["srun", "no-localid", "no-nodelist", "job-only", "none"],
)
def test_slurm_rule_is_jaxs(environ, monkeypatch):
    clusters = pytest.importorskip("jax._src.clusters")
    for name in SLURM:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    ours = found(environ) is not None
    assert ours == clusters.SlurmCluster.is_env_present()


class _Metadata(http.server.BaseHTTPRequestHandler):
    workers = "10.0.0.1,10.0.0.2"

    def do_GET(self):
        path = "/computeMetadata/v1/instance/attributes/worker-network-endpoints"
        ok = self.path == path and self.headers.get("Metadata-Flavor") == "Google"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(self.workers.encode() if ok else b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_tpu_vm_asks_the_metadata_server(metadata_server, monkeypatch):
    monkeypatch.setattr(_launch, "_is_tpu_vm", lambda: True)
    assert tpu_vm_workers({"GCE_METADATA_IP": metadata_server}) == 2
    assert tpu_vm_workers({"GCE_METADATA_IP": metadata_server, "TPU_SKIP_MDS_QUERY": "1"}) is None


def test_tpu_vm_without_a_metadata_server_is_one_host(monkeypatch):
    monkeypatch.setattr(_launch, "_is_tpu_vm", lambda: True)
    start = time.perf_counter()
    assert tpu_vm_workers({"GCE_METADATA_IP": f"127.0.0.1:{_closed_port()}"}, timeout=2) is None
    assert time.perf_counter() - start < 10


def test_not_a_tpu_vm_asks_nobody(monkeypatch):
    monkeypatch.setattr(_launch, "_is_tpu_vm", lambda: False)
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("asked"))
    assert tpu_vm_workers({}) is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def calls(monkeypatch):
    recorded: list[dict] = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: recorded.append(kw))
    return recorded


def test_one_process_does_not_start_jax_distributed(calls):
    join(Launch("one process"), timeout_s=5, log=pytest.fail)
    assert calls == []


def test_join_passes_the_settings_and_a_later_jax_deadline(calls):
    lines = []
    join(resolve_launch("h:1", 2, 1, environ={}, tpu_workers=no_tpu), timeout_s=5, log=lines.append)
    assert calls == [
        {
            "coordinator_address": "h:1",
            "num_processes": 2,
            "process_id": 1,
            "local_device_ids": None,
            "cluster_detection_method": "deactivate",
            "initialization_timeout": 35,
        }
    ]
    assert lines == [
        "joining the run as process 1 of 2, coordinator h:1 (flags); waiting up to 5 s for all "
        "processes"
    ]


def test_a_launcher_jax_knows_lets_jax_find_the_coordinator(calls):
    join(resolve_launch(environ=SLURM, tpu_workers=no_tpu), timeout_s=5, log=lambda m: None)
    assert calls == [
        {
            "coordinator_address": None,
            "num_processes": 4,
            "process_id": 2,
            "local_device_ids": None,
            "cluster_detection_method": None,
            "initialization_timeout": 35,
        }
    ]


def test_busy_coordinator_port_is_named_before_jax_starts(calls):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LaunchError) as error:
            join(Launch("flags", 2, 0, f"127.0.0.1:{port}"), timeout_s=5, log=lambda m: None)
    assert calls == []
    assert error.value.render(train.flag) == (
        f"process 0 cannot listen on port {port} for the coordinator 127.0.0.1:{port} (Address "
        "already in use); choose a free port in --coordinator-address, or, if process 0 of this "
        "run is already running, give this process another --process-id"
    )


def test_join_reports_when_the_deadline_passes(monkeypatch):
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: time.sleep(1.5))
    reported: list[LaunchError] = []
    port = _closed_port()
    launch = Launch("flags", 2, 1, f"127.0.0.1:{port}")
    join(launch, timeout_s=0.3, log=lambda m: None, on_timeout=reported.append)
    assert [e.render(train.flag) for e in reported] == [
        f"process 1 of 2 could not join the run at coordinator 127.0.0.1:{port} within 0.3 s "
        f"(--coordinator-timeout): nothing listens at 127.0.0.1:{port}; is process 0 running, "
        "with the same --coordinator-address?"
    ]


def _train_py(*flags: str, timeout: int = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "train.py", *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.perf_counter() - start


def _join_as(process_id: int, out: str, port: int, *flags: str):
    """``_train_py`` as process ``process_id`` of 2, coordinator at 127.0.0.1:``port``."""
    return _train_py(
        "--out", out, "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
        "--process-id", str(process_id), *flags,
    )  # fmt: skip


@pytest.mark.slow
def test_unreachable_coordinator_fails_within_the_timeout_naming_it(tmp_path):
    port = _closed_port()
    out = os.path.relpath(tmp_path / "run", ROOT)  # as typed: relative to the repository
    proc, seconds = _join_as(1, out, port, "--coordinator-timeout", "1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"train.py: error: process 1 of 2 could not join the run at coordinator 127.0.0.1:{port} "
        f"within 1 s (--coordinator-timeout): nothing listens at 127.0.0.1:{port}; is process 0 "
        "running, with the same --coordinator-address?"
    )
    assert "Check failure" not in proc.stderr and "Terminating process" not in proc.stderr
    assert not (tmp_path / "run").exists()  # joining comes first: nothing was touched
    assert seconds < 60


@pytest.mark.slow
def test_process_0_alone_fails_within_the_timeout(tmp_path):
    port = _closed_port()
    proc, _ = _join_as(0, str(tmp_path / "run"), port, "--coordinator-timeout", "1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"train.py: error: process 0 of 2 could not join the run at coordinator 127.0.0.1:{port} "
        "within 1 s (--coordinator-timeout): the other processes did not all join; start each "
        "with the same --coordinator-address and --num-processes, and a distinct --process-id"
    )
    assert (
        f"joining the run as process 0 of 2, coordinator 127.0.0.1:{port} (flags); waiting up to "
        "1 s for all processes" in proc.stdout
    )


@pytest.mark.slow
def test_busy_coordinator_port_is_an_error_not_a_crash(tmp_path):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, _ = _join_as(0, str(tmp_path / "run"), port)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"train.py: error: process 0 cannot listen on port {port} for the coordinator")
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags_1", "named"),
    [(("--seed", "1"), "--seed is 1 here but 0"), (("--epochs", "2"), "--epochs is 2 here but 1")],
    ids=["seed", "epochs"],
)
def test_processes_started_with_other_settings_all_stop_before_any_work(tmp_path, flags_1, named):
    # another --seed trained a mix of two models recorded as process 0's; another --epochs
    # left both processes waiting in a collective until killed
    port = _closed_port()
    out = str(tmp_path / "run")
    common = ("--data-dir", str(SHARED_DATA / "mnist-mini"), "--epochs", "1")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(_join_as, 0, out, port, *common)
        second = pool.submit(_join_as, 1, out, port, *common, *flags_1)
        (proc_0, _), (proc_1, _) = first.result(), second.result()
    logs = proc_0.stderr[-2000:] + proc_1.stderr[-2000:]
    assert proc_0.returncode == proc_1.returncode == 2, logs
    assert proc_1.stderr.strip().splitlines()[-1] == (
        f"train.py: error: process 1: {named} on process 0; run the same command, on the same "
        "data, on every process"
    )
    assert proc_0.stderr.strip().splitlines()[-1] == (
        "train.py: error: another process was started with other settings or data than this one "
        "(see its error); run the same command, on the same data, on every process"
    )
    assert "epoch 1" not in proc_0.stdout + proc_1.stdout  # before any training


@pytest.mark.slow
def test_processes_given_other_data_all_stop_before_any_work(tmp_path):
    port = _closed_port()
    dirs = []
    for seed in (0, 1):  # the same layout and sizes, other pixels
        root = tmp_path / f"data-{seed}"
        root.mkdir()
        rng = np.random.default_rng(seed)
        for split, n in (("train", 10), ("t10k", 4)):
            _idx(root / f"{split}-images-idx3-ubyte", 2051, rng.integers(0, 256, (n, 28, 28)))
            _idx(root / f"{split}-labels-idx1-ubyte", 2049, rng.integers(0, 10, n))
        dirs.append(str(root))
    out = str(tmp_path / "run")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(_join_as, i, out, port, "--data-dir", dirs[i]) for i in (0, 1)]
        (proc_0, _), (proc_1, _) = (run.result() for run in runs)
    logs = proc_0.stderr[-2000:] + proc_1.stderr[-2000:]
    assert proc_0.returncode == proc_1.returncode == 1, logs
    last = proc_1.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: process 1: the data is ") and "on process 0" in last
    assert "another process was started with other settings or data" in proc_0.stderr


def _idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())
