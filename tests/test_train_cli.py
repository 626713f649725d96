"""train.py as its users meet it: a corpus of bad input and faults, each with what the user sees.

Every case calls ``train.main`` (or ``parse_args``) in this process with a command line and checks
the exit status and the one ``train.py: error:`` line: 2 for a bad setting (before any work), 1
for a run that cannot go on (data, run directory, resume). Runs that get as far as training use
a tiny IDX dataset written to a temporary directory (256 training and 64 test images). The
launcher cases, which need subprocesses, are in tests/test_train_launch.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

import train
from tests.conftest import main_in_fresh_process
from tests.test_data_idx import STEMS, idx_bytes, make_arrays, refuse_to_read, write_dir
from tests.test_resume import cpu_env
from training import RunDirError, _rundir
from training._checkpoint import KeepNewest, RunCheckpoints, latest_good
from training._rundir import RunDir, default_out

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--hidden", "8", "--batch-size", "32"]  # 8 steps per epoch
LAUNCHER_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS",
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_MCA_orte_hnp_uri",
    "PMI_RANK",
    "PMI_SIZE",
    "PMIX_RANK",
    "MV2_COMM_WORLD_RANK",
    "MV2_COMM_WORLD_SIZE",
    "RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
    "JOB_COMPLETION_INDEX",
    "JOBSET_NAME",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    """No launcher variables, and jax.distributed must not start in these in-process runs."""
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")

    def refuse(**kwargs):
        raise AssertionError(f"jax.distributed.initialize called with {kwargs}")

    monkeypatch.setattr(jax.distributed, "initialize", refuse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny MNIST-format dataset: 256 training and 64 test images, gzipped IDX files."""
    folder = tmp_path_factory.mktemp("tiny-mnist")
    write_dir(folder, make_arrays(256, 64))
    return folder


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``train.main(argv)``: its exit status, stdout and stderr."""
    try:
        train.main([str(a) for a in argv])
        status = 0
    except SystemExit as exit_info:
        status = exit_info.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error_line(err: str) -> str:
    """The one ``train.py: error:`` line (argparse prints its usage before it)."""
    lines = [x for x in err.splitlines() if x.startswith("train.py: error: ")]
    assert len(lines) == 1, err
    return lines[0].removeprefix("train.py: error: ")


# -- bad settings: usage errors (exit 2) before any work ------------------------------------

USAGE = [
    (["--lr", "-1"], "--lr must be a positive, finite number, got -1.0"),
    (["--lr", "nan"], "--lr must be a positive, finite number, got nan"),
    (["--lr", "inf"], "--lr must be a positive, finite number, got inf"),
    (["--lr", "0"], "--lr must be a positive, finite number, got 0.0"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--lr", "1e308"], "--lr must fit float32, the parameters' dtype (from 1.18e-38 to 3.4e+38)"),
    (["--lr", "1e-300"], "--lr must fit float32"),
    (["--hidden", "-5"], "--hidden needs positive integer widths, got -5"),
    (["--hidden", "0"], "--hidden needs positive integer widths, got 0"),
    (["--hidden", "128", "0"], "--hidden needs positive integer widths, got 128 0"),
    (["--hidden"], "argument --hidden: expected at least one argument"),
    (["--seed", str(2**64)], "--seed must be from 0 to 4294967295 (jax keeps 32 bits of a seed"),
    (["--seed", str(2**32)], "2**32 would repeat seed 0), got 4294967296"),
    (["--seed", "-1"], "--seed must be from 0 to 4294967295"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--epochs", "-3"], "--epochs must be at least 1, got -3"),
    (["--epochs", "2.5"], "argument --epochs: invalid int value: '2.5'"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be at least 1, got 0"),
    (["--checkpoint-every", "-1"], "--checkpoint-every must be at least 0, got -1"),
    (["--chunks", "0"], "--chunks must be at least 1, got 0"),
    (["--label-smoothing", "1.5"], "--label-smoothing must be a number from 0 to 1, got 1.5"),
    (["--label-smoothing", "-0.1"], "--label-smoothing must be a number from 0 to 1, got -0.1"),
    (["--label-smoothing", "nan"], "--label-smoothing must be a number from 0 to 1, got nan"),
    (["--resume", "--overwrite"], "--resume continues the run in --out and --overwrite deletes"),
    (["--dataset", "cifar10"], "argument --dataset: invalid choice: 'cifar10'"),
    (["--loss", "mse"], "argument --loss: invalid choice: 'mse'"),
    (["--out", ""], "--out must name a directory, got ''"),
    (["--out", "  "], "--out must name a directory, got '  '"),
    (["--coordinator-address", "localhost"], "--coordinator-address must be HOST:PORT"),
    (["--coordinator-address", "host:0"], "a port from 1 to 65535"),
    (["--coordinator-address", "host:65536"], "got 'host:65536'"),
    (["--coordinator-address", ":1234"], "got ':1234'"),
    (["--coordinator-address", "::1:1234"], "an IPv6 host in brackets, [::1]:1234"),
    (["--coordinator-address", "host:12a"], "got 'host:12a'"),
    (["--num-processes", "0"], "--num-processes must be at least 1, got 0"),
    (["--process-id", "-1"], "--process-id must be at least 0, got -1"),
    (["--num-processes", "2", "--process-id", "2"], "--process-id must be from 0 to 1, got 2"),
    (["--coordinator-timeout", "0"], "--coordinator-timeout must be a positive, finite number"),
    (["--coordinator-timeout", "nan"], "--coordinator-timeout must be a positive, finite"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]


@pytest.mark.parametrize(("argv", "message"), USAGE, ids=[" ".join(a) or "empty" for a, _ in USAGE])
def test_bad_setting_is_a_usage_error(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("the run started"))
    status, out, err = run(argv, capsys)
    assert status == 2
    assert message in error_line(err)
    assert err.startswith("usage: train.py")
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--no-such-flag"], ["--epochs", "0"], ["--hidden", "0"]],
    ids=["help", "unknown-flag", "bad-epochs", "bad-hidden"],
)
def test_the_command_line_answers_before_importing_the_frameworks(argv):
    """--help and a bad flag answer at once: jax, Flax, optax, Orbax and matplotlib load only
    for a run."""
    heavy = ("jax", "flax", "optax", "orbax", "matplotlib")
    imported, status, stderr = main_in_fresh_process("train", argv, heavy)
    assert (imported, status) == ([], 0 if argv == ["--help"] else 2), stderr


def test_bracketed_ipv6_coordinator_is_accepted():
    config = train.parse_args(
        ["--coordinator-address", "[::1]:1234", "--num-processes", "2", "--process-id", "1"]
    )
    assert config.coordinator_address == "[::1]:1234"


LAUNCH_USAGE = [
    pytest.param(
        ["--num-processes", "2"],
        {},
        "several processes need --coordinator-address, --num-processes and --process-id "
        "together; got --num-processes 2 but not --coordinator-address, --process-id.",
        id="num-processes-alone",
    ),
    pytest.param(
        ["--process-id", "1"],
        {},
        "got --process-id 1 but not --coordinator-address, --num-processes",
        id="process-id-alone",
    ),
    pytest.param(
        ["--coordinator-address", "h:1"],
        {},
        "got --coordinator-address h:1 but not --num-processes, --process-id",
        id="coordinator-alone",
    ),
    pytest.param(
        [],
        {"JAX_COORDINATOR_ADDRESS": "h:1"},
        "got --coordinator-address h:1 but not --num-processes, --process-id",
        id="jax-coordinator-variable-alone",
    ),
    pytest.param(
        [],
        {"JOB_COMPLETION_INDEX": "1", "KUBERNETES_SERVICE_HOST": "10.0.0.1"},
        "this process runs under Kubernetes Indexed Job, which gives --process-id 1 but not "
        "--coordinator-address, --num-processes: pip install kubernetes",
        id="kubernetes-indexed-job",
    ),
    pytest.param(
        [],
        {"JOB_COMPLETION_INDEX": "0", "JOBSET_NAME": "train"},
        "this process runs under Kubernetes JobSet, which gives --process-id 0",
        id="kubernetes-jobset",
    ),
    pytest.param(
        [],
        {"RANK": "1", "WORLD_SIZE": "4"},
        "torchrun-style RANK/WORLD_SIZE, which gives --num-processes 4, --process-id 1 but not "
        "--coordinator-address",
        id="rank-without-master",
    ),
    pytest.param(
        [],
        {
            "RANK": "1",
            "WORLD_SIZE": "4",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "29500",
            "TORCHELASTIC_RUN_ID": "r",
        },
        "torchrun's own store listens on MASTER_PORT: pass --coordinator-address",
        id="under-torchrun",
    ),
    pytest.param(
        [],
        {"RANK": "4", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
        "--process-id must be in [0, 4) for --num-processes 4, got 4 (from torchrun-style",
        id="rank-out-of-range",
    ),
    pytest.param(
        [],
        {
            "SLURM_JOB_ID": "7",
            "SLURM_STEP_NODELIST": "n1",
            "SLURM_NTASKS": "two",
            "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0",
        },
        "the launcher's SLURM_NTASKS must be an integer, got 'two'",
        id="slurm-garbage",
    ),
    pytest.param(
        ["--num-processes", "3"],
        {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"},
        "this process runs under Open MPI, which gives --num-processes 3, --process-id 1 but "
        "not --coordinator-address",  # the flag wins over OMPI_COMM_WORLD_SIZE
        id="flag-overrides-launcher",
    ),
]


@pytest.mark.parametrize(("argv", "environ", "message"), LAUNCH_USAGE)
def test_incomplete_multi_process_settings_are_refused(argv, environ, message, capsys, monkeypatch):
    # Neither mpi4py nor kubernetes installed, whatever this machine has.
    monkeypatch.setattr("training._launch._has_module", lambda name: False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    status, _out, err = run(argv, capsys)
    assert status == 2
    assert message in error_line(err)
    assert "Traceback" not in err


def test_mpi_without_mpi4py_says_how_to_find_the_coordinator(capsys, monkeypatch):
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setattr("training._launch._has_module", lambda name: False)
    status, _, err = run([], capsys)
    assert status == 2
    assert error_line(err) == (
        "this process runs under MPI (PMI), which gives --num-processes 4, --process-id 1 but "
        "not --coordinator-address: pip install mpi4py (jax then asks MPI for rank 0's "
        "address), or pass --coordinator-address on every process (a worker that cannot tell "
        "its place would run as a copy of process 0)."
    )


def test_one_task_of_a_launcher_is_a_single_process_run(tmp_path, capsys, monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "JOB_COMPLETION_INDEX": "0"}.items():
        monkeypatch.setenv(name, value)
    # It goes on to the data (missing here) without joining anyone (initialize would fail).
    status, out, err = run(["--data-dir", tmp_path / "nowhere", "--out", tmp_path / "run"], capsys)
    assert status == 1 and "--data-dir" in error_line(err)
    assert "joining" not in out


# -- settings that do not fit the data: usage errors after loading it, before compiling ------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(
            ["--batch-size", "1000"],
            "--batch-size 1000 is larger than the training split (256 examples): every step "
            "would be mostly padding. Use at most --batch-size 256.",
            id="batch-over-data",
        ),
        pytest.param(
            ["--hidden", "1000000000"],
            "--hidden 1000000000 with --batch-size 64 needs about ",
            id="model-beyond-memory",
        ),
        pytest.param(
            ["--batch-size", "32", "--chunks", "100"],
            "--chunks 100 is more than the 8 steps of an epoch (at most one compiled call per "
            "step); use --chunks 8 or less",
            id="chunks-over-steps",
        ),
    ],
)
def test_settings_against_the_data(tiny, tmp_path, flags, message, capsys, monkeypatch):
    monkeypatch.setattr("training._loop.Trainer.compile", lambda *a: pytest.fail("compiled"))
    out = tmp_path / "run"
    status, stdout, err = run(["--data-dir", tiny, "--out", out, "--epochs", "1", *flags], capsys)
    assert status == 2
    assert error_line(err).startswith(message)
    assert not out.exists()  # made by the run, which wrote nothing: removed again
    assert "run directory" not in stdout + err  # so never announced


def test_a_failed_start_leaves_no_new_directory_and_keeps_the_users(
    tiny, tmp_path, capsys, monkeypatch
):
    """A run that fails before its first output removes the directories it made (the default
    ``runs/<timestamp>`` and ``runs/`` itself, or a new ``--out`` and its new parents), and
    leaves one that existed as it found it."""
    monkeypatch.chdir(tmp_path)
    assert run(["--data-dir", tiny, "--batch-size", "1000"], capsys)[0] == 2
    assert not (tmp_path / "runs").exists()
    assert run(["--data-dir", "missing", "--out", "new/deeper/run"], capsys)[0] == 1
    assert not (tmp_path / "new").exists()
    (tmp_path / "runs" / "earlier").mkdir(parents=True)
    assert run(["--data-dir", tiny, "--batch-size", "1000"], capsys)[0] == 2
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["earlier"]
    mine = tmp_path / "mine"
    mine.mkdir()
    assert run(["--data-dir", tiny, "--out", "mine", "--batch-size", "1000"], capsys)[0] == 2
    assert sorted(p.name for p in mine.iterdir()) == []  # as it was: not even the lock file


def test_a_failed_start_leaves_an_out_the_next_run_accepts(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["--data-dir", tiny, "--out", out, "--batch-size", "1000"], capsys)[0] == 2
    status, _stdout, _ = run(["--data-dir", tiny, "--out", out, *TINY], capsys)
    assert status == 0 and (out / "metrics.json").is_file()


def test_a_batch_of_the_whole_split_works(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--epochs", "1", "--hidden", "8", "--batch-size", "256"]
    status, _stdout, _ = run(["--data-dir", tiny, "--out", out, *flags], capsys)
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps_per_epoch"] == 1 and len(metrics["train_loss"]) == 1


# -- data: runtime errors (exit 1) naming the file -------------------------------------------


def _damage(folder: Path, field: str, data: bytes) -> None:
    (folder / f"{STEMS[field]}.gz").unlink()
    (folder / STEMS[field]).write_bytes(data)


DATA_ERRORS = [
    pytest.param(
        lambda d: shutil.rmtree(d), "{d} is not a directory (it does not exist)", id="gone"
    ),
    pytest.param(
        lambda d: (shutil.rmtree(d), d.write_text("x")),
        "{d} is not a directory (it is a file)",
        id="a-file",
    ),
    pytest.param(
        lambda d: (d / "t10k-labels-idx1-ubyte.gz").unlink(),
        "t10k-labels-idx1-ubyte[.gz] not found in {d}",
        id="missing-file",
    ),
    pytest.param(  # it said "not found", as if no file of that name were there
        lambda d: (
            (d / "t10k-labels-idx1-ubyte.gz").unlink(),
            (d / "t10k-labels-idx1-ubyte.gz").symlink_to(d / "gone.gz"),
        ),
        "{d}/t10k-labels-idx1-ubyte.gz is a symbolic link to {d}/gone.gz, which cannot be "
        "reached; point it at the file or replace it with the file",
        id="dangling-link",
    ),
    pytest.param(
        lambda d: (
            (d / "t10k-labels-idx1-ubyte.gz").unlink(),
            (d / "t10k-labels-idx1-ubyte.gz").symlink_to("t10k-labels-idx1-ubyte.gz"),
        ),
        "{d}/t10k-labels-idx1-ubyte.gz is a symbolic link to t10k-labels-idx1-ubyte.gz, which "
        "cannot be reached",
        id="self-link",
    ),
    pytest.param(
        lambda d: _damage(d, "train_images", idx_bytes(make_arrays(0, 4)["train_images"])),
        "{d}/train-images-idx3-ubyte holds 0 images but",
        id="empty-train-images",
    ),
    pytest.param(
        lambda d: (
            _damage(d, "test_images", idx_bytes(make_arrays(4, 0)["test_images"])),
            _damage(d, "test_labels", idx_bytes(make_arrays(4, 0)["test_labels"])),
        ),
        "{d}/t10k-images-idx3-ubyte holds no images; the test split must not be empty",
        id="empty-test-split",
    ),
    pytest.param(
        lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + bytes(30)),
        "{d}/train-images-idx3-ubyte.gz: not a readable gzip file",
        id="corrupt-gzip",
    ),
    pytest.param(
        lambda d: _damage(d, "test_labels", idx_bytes(make_arrays(256, 64)["test_images"])),
        "{d}/t10k-labels-idx1-ubyte: magic number 0x00000803 (an images file?)",
        id="swapped-files",
    ),
]


@pytest.mark.parametrize(("damage", "message"), DATA_ERRORS)
def test_bad_data_is_named(tiny, tmp_path, damage, message, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    damage(data)
    status, stdout, err = run(["--data-dir", data, "--out", tmp_path / "run", *TINY], capsys)
    assert status == 1
    assert message.format(d=data) in error_line(err)
    assert "Traceback" not in err
    # the run directory it made is removed, so it is never announced
    assert not (tmp_path / "run").exists() and "run directory" not in stdout + err


def test_unreadable_data_file_is_named(tiny, tmp_path, capsys, monkeypatch):
    unreadable = tiny / "train-images-idx3-ubyte.gz"
    refuse_to_read(monkeypatch, unreadable)
    status, _, err = run(["--data-dir", tiny, "--out", tmp_path / "run", *TINY], capsys)
    assert status == 1
    assert error_line(err) == (
        f"{unreadable}: cannot be read (Permission denied); check that the file is readable"
    )


def test_strict_checksums_names_its_flag(tiny, tmp_path, capsys):
    flags = ["--data-dir", tiny, "--out", tmp_path / "run", "--strict-checksums", *TINY]
    status, _, err = run(flags, capsys)
    assert status == 1
    assert error_line(err).endswith("Rejected because of --strict-checksums.")


# -- the run directory: checked and locked before the data loads -----------------------------


@pytest.fixture
def no_data_loading(monkeypatch):
    monkeypatch.setattr("training._run.load_data", lambda *a, **k: pytest.fail("data loaded"))


def test_out_that_is_a_file(tmp_path, capsys, no_data_loading):
    (tmp_path / "file").write_text("mine")
    status, _, err = run(["--data-dir", tmp_path / "nowhere", "--out", tmp_path / "file"], capsys)
    assert status == 1  # about --out: it is checked before --data-dir is read
    assert error_line(err) == (
        f"--out {tmp_path / 'file'} is a file, not a directory; choose another --out"
    )
    assert (tmp_path / "file").read_text() == "mine"


def test_out_under_a_file(tmp_path, capsys, no_data_loading):
    (tmp_path / "file").write_text("mine")
    status, _, err = run(["--out", tmp_path / "file" / "run"], capsys)
    assert status == 1
    assert error_line(err) == (
        f"--out {tmp_path / 'file' / 'run'} cannot be created (Not a directory); choose "
        "another --out"
    )


def test_out_that_is_not_writable(tmp_path, capsys, monkeypatch, no_data_loading):
    # Simulated: root (as in CI containers) may write anywhere whatever the mode bits say.
    write_bytes = Path.write_bytes

    def refuse(path, data):
        if path.name.startswith(".write-test"):
            raise PermissionError(13, "Permission denied", str(path))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", refuse)
    status, _, err = run(["--out", tmp_path / "run"], capsys)
    assert status == 1
    assert error_line(err) == (
        f"--out {tmp_path / 'run'} is not writable (Permission denied); choose another --out"
    )


def test_out_in_use_by_a_live_run_in_this_process(tmp_path, capsys, no_data_loading):
    with RunDir.open(tmp_path / "run", resume=False, overwrite=False):
        status, _, err = run(["--out", tmp_path / "run", "--resume"], capsys)
    assert status == 1
    message = error_line(err)
    assert message.startswith(f"--out {tmp_path / 'run'} is in use by another run (process ")
    assert f"process {os.getpid()} on " in message
    assert message.endswith("); wait for it to finish, or choose another --out")


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b'{"pid": %d, "host": "elsewhere", "started": 0}' % os.getpid())
print("locked", flush=True)
time.sleep(60)
"""


def test_out_in_use_by_another_process_then_free_when_it_dies(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        status, _, err = run(["--data-dir", tiny, "--out", out, *TINY], capsys)
        assert status == 1
        assert f"is in use by another run (process {holder.pid} on elsewhere" in error_line(err)
    finally:
        holder.kill()
        holder.communicate()
    # The dead process's lock file stays, but the kernel dropped its lock: no stale lock.
    status, _out_text, err = run(["--data-dir", tiny, "--out", out, *TINY], capsys)
    assert status == 0, err
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("resume", [[], ["--resume"]], ids=["new-run", "resume"])
def test_out_holding_other_files_is_not_used(tmp_path, capsys, no_data_loading, resume):
    (tmp_path / "notes.txt").write_text("keep me")
    status, _, err = run(["--out", tmp_path, *resume], capsys)
    assert status == 1
    if resume:
        assert error_line(err).startswith(
            f"--out {tmp_path} holds no run to resume, but other files (notes.txt); choose "
            "another --out"
        )
    else:
        assert error_line(err).startswith(
            f"--out {tmp_path} already holds other files (notes.txt) and no run. Choose "
            "another --out (a new or empty directory), or pass --overwrite"
        )
    # refused: the directory is as it was, without the lock file this run made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_leftovers_of_a_run_killed_in_its_first_checkpoint_are_cleared(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "step_00000008.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
    status, stdout, err = run(["--data-dir", tiny, "--out", out, *TINY], capsys)
    assert status == 0, err
    assert f"removed {out / 'checkpoints'}: it held only unfinished checkpoint writes" in stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000008",
        "step_00000008.commit.json",
    ]


def test_default_out_names_are_new_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    now = time.mktime((2030, 1, 2, 3, 4, 5, 0, 0, -1))
    first, second = default_out(now), default_out(now)
    assert first == Path("runs/20300102-030405") and second == Path("runs/20300102-030405-2")
    assert first.is_dir() and second.is_dir()


def test_refuses_to_clobber_without_flag(tmp_path):
    store = RunCheckpoints(tmp_path, log=lambda message: None)
    store.save(1, {"w": jnp.ones(3)}, {"step": 1})
    with pytest.raises(RunDirError, match=r"resume.*overwrite") as error:
        RunDir.open(tmp_path, resume=False, overwrite=False).release()
    assert "Pass --resume" in error.value.render(train.flag)
    RunDir.open(tmp_path, resume=True, overwrite=False).release()
    assert latest_good(tmp_path)[0] == 1
    run_dir = RunDir.open(tmp_path, resume=False, overwrite=True, log=lambda message: None)
    assert latest_good(tmp_path)[0] == 1  # kept until the new run is sure to start
    run_dir.clear_earlier_run(log=lambda message: None)
    run_dir.release()
    assert latest_good(tmp_path) is None


def test_new_or_empty_run_dir_is_accepted(tmp_path):
    RunDir.open(tmp_path / "new", resume=False, overwrite=False).release()
    RunDir.open(tmp_path / "empty", resume=False, overwrite=False).release()
    (tmp_path / "empty").mkdir(exist_ok=True)
    RunDir.open(tmp_path / "empty", resume=False, overwrite=False).release()


def test_lock_file_is_released_and_reused(tmp_path):
    with RunDir.open(tmp_path / "run", resume=False, overwrite=False) as run_dir:
        assert run_dir.path == (tmp_path / "run").resolve()
        owner = json.loads((run_dir.path / _rundir.LOCK_FILE).read_text())
        assert owner["pid"] == os.getpid()
    with RunDir.open(tmp_path / "run", resume=True, overwrite=False):
        pass


# -- resume: never a silent start-over, never other data -------------------------------------


RESUME = ["--epochs", "2", "--hidden", "8", "--batch-size", "32", "--checkpoint-every", "4"]


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory) -> Path:
    """A finished 2-epoch run on the tiny data, checkpointed every 4 steps (keep 3)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as patch:
        for name in LAUNCHER_VARIABLES:
            patch.delenv(name, raising=False)
        train.main(["--data-dir", str(tiny), "--out", str(out), *RESUME])
    return out


def _snapshot(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_resume_on_other_data_of_the_same_size_is_refused(finished, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    other = tmp_path / "other"
    arrays = make_arrays(256, 64)
    arrays["train_labels"][0] = (arrays["train_labels"][0] + 1) % 10  # one label differs
    write_dir(other, arrays)
    before = _snapshot(out)
    status, _, err = run(["--data-dir", other, "--out", out, "--resume", *RESUME], capsys)
    assert status == 1
    message = error_line(err)
    assert message.startswith("--resume: the checkpoint was trained on other data (SHA-256 ")
    assert f"256 training examples from {tiny})" in message
    assert f"(256 from {other})" in message
    assert _snapshot(out) == before


def _corrupt_every_checkpoint(out: Path) -> None:
    for directory in (out / "checkpoints").glob("step_????????"):
        meta = next(p for p in (directory / "meta").rglob("*") if p.is_file())
        meta.write_bytes(meta.read_bytes() + b" ")


def test_resume_with_every_checkpoint_damaged_refuses_and_keeps_the_run(
    finished, tiny, tmp_path, capsys
):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    _corrupt_every_checkpoint(out)
    before = _snapshot(out)
    status, _, err = run(["--data-dir", tiny, "--out", out, "--resume", *RESUME], capsys)
    assert status == 1
    message = error_line(err)
    assert message.startswith(
        f"--resume: {out} holds a run (metrics.json, curves.png, checkpoints) but no usable "
        "checkpoint (step_00000016: file meta/"
    )
    assert "bytes, expected" in message and "step_00000012: file meta/" in message
    assert message.endswith(
        "Nothing was changed. Restore the checkpoints from a copy, or start over with "
        "--overwrite (deletes the run) or another --out."
    )
    assert _snapshot(out) == before  # metrics.json and curves.png untouched


def test_resume_of_a_finished_run_without_checkpoints_refuses(finished, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "checkpoints")
    status, _, err = run(["--data-dir", tiny, "--out", out, "--resume", *RESUME], capsys)
    assert status == 1
    assert f"{out} holds a run (metrics.json, curves.png) but no usable checkpoint (none)" in (
        error_line(err)
    )


def test_commit_file_of_valid_json_but_wrong_shape_is_a_bad_checkpoint(
    finished, tiny, tmp_path, capsys
):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    newest = out / "checkpoints" / "step_00000016.commit.json"
    newest.write_text('{"files": [1, 2]}')  # more shapes: tests/test_checkpoint.py
    status, stdout, err = run(["--data-dir", tiny, "--out", out, "--resume", *RESUME], capsys)
    # The other checkpoints are good: the run resumes from the one before, after saying why.
    assert status == 0, err
    assert (
        f"skipping checkpoint {out / 'checkpoints' / 'step_00000016'}: commit file "
        "step_00000016.commit.json is unreadable or not a commit record"
    ) in stdout
    assert f"resuming from {out / 'checkpoints' / 'step_00000012'}:" in stdout


def test_resume_with_nothing_to_resume_starts_a_new_run(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, err = run(["--data-dir", tiny, "--out", out, "--resume", *TINY], capsys)
    assert status == 0, err
    assert f"nothing to resume in {out} (no checkpoint); starting from scratch" in stdout


def test_resume_after_a_kill_in_the_first_checkpoint_starts_over(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "step_00000008.orbax-checkpoint-tmp").mkdir(parents=True)
    status, stdout, err = run(["--data-dir", tiny, "--out", out, "--resume", *TINY], capsys)
    assert status == 0, err
    assert "skipping checkpoint" in stdout and "no commit file" in stdout
    assert "(unfinished checkpoint writes only); starting from scratch" in stdout


@pytest.mark.parametrize(
    "flag, written, given", [("--lr", "0.001", "0.01"), ("--label-smoothing", "0.0", "0.1")]
)
def test_resume_with_other_settings_names_the_flag(
    finished, tiny, tmp_path, capsys, flag, written, given
):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    flags = [*RESUME, flag, given]
    status, _, err = run(["--data-dir", tiny, "--out", out, "--resume", *flags], capsys)
    assert status == 1
    assert f"was written with {flag} {written}, this run has {given}" in error_line(err)


def test_overwrite_deletes_the_run_but_not_other_files(finished, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "notes.txt").write_text("mine")
    status, stdout, err = run(["--data-dir", tiny, "--out", out, "--overwrite", *TINY], capsys)
    assert status == 0, err
    assert f"deleted the earlier run in {out} (checkpoints, curves.png, metrics.json)" in stdout
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "metrics.json").read_text())["config"]["epochs"] == 1


def test_keep_checkpoints_keeps_the_newest(finished):
    names = sorted(p.name for p in (finished / "checkpoints").iterdir())
    assert names == [
        "step_00000008",
        "step_00000008.commit.json",
        "step_00000012",
        "step_00000012.commit.json",
        "step_00000016",
        "step_00000016.commit.json",
    ]


# -- what a run shows: paths as typed, quiet output, the backend ------------------------------


def test_relative_out_from_the_repository_root(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    relative = os.path.relpath(tmp_path / "run", ROOT)
    assert not os.path.isabs(relative)
    status, stdout, err = run(["--data-dir", tiny, "--out", relative, *TINY], capsys)
    assert status == 0, err
    out = (tmp_path / "run").resolve()
    assert json.loads((out / "metrics.json").read_text())["config"]["out"] == str(out)
    assert f"run directory {out}; backend " in stdout


def test_relative_out_and_data_dir_in_another_directory(tiny, tmp_path, capsys, monkeypatch):
    shutil.copytree(tiny, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    status, stdout, err = run(["--data-dir", "data", "--out", "run", *TINY, "--resume"], capsys)
    assert status == 0, err
    assert f"nothing to resume in {tmp_path / 'run'} (no checkpoint)" in stdout
    assert (tmp_path / "run" / "checkpoints" / "step_00000008.commit.json").is_file()


def test_output_is_quiet_and_readable(tiny, tmp_path, capsys, recwarn):
    status, stdout, err = run(["--data-dir", tiny, "--out", tmp_path / "run", *TINY], capsys)
    assert status == 0
    warnings = [x for x in stdout.splitlines() if x.startswith("warning:")]
    assert warnings == [
        f"warning: the 4 files in {tiny} are not the SHA-256 tensorflow-datasets registers for "
        "mnist (a subset or a repack?); their format checks passed (--strict-checksums refuses "
        "them)"
    ]
    assert not [w for w in recwarn if "SHA-256" in str(w.message)]  # no Python warning printer
    assert f"backend cpu: {jax.device_count()} x cpu (jax {jax.__version__})" in stdout
    assert "step/s" not in err and "\r" not in err  # no progress bar when not on a terminal
    assert "epoch   1/1  train loss " in stdout


@pytest.mark.slow
def test_two_runs_started_together_into_one_out(tiny, tmp_path):
    # What two users (or two workers of a misconfigured job) typing the same command get: one
    # run, and one line for the other, never a crash inside Orbax or clobbered metrics.
    out = os.path.relpath(tmp_path / "run", ROOT)
    command = [sys.executable, "train.py", "--data-dir", str(tiny), "--out", out, *TINY]
    procs = [
        subprocess.Popen(
            command, cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    results = [(p.returncode, err.decode()) for p, (_, err) in zip(procs, outputs, strict=True)]
    assert sorted(status for status, _ in results) == [0, 1], results
    refused = next(err for status, err in results if status == 1)
    last = refused.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: --out {tmp_path / 'run'} ")
    assert "is in use by another run (process " in last or "already holds a run" in last
    assert "Traceback" not in refused
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["epochs"] == 1


# --out names the checkpoint library cannot use, directories it must not delete or cannot
# change, and a run that starts over beside an earlier run's leftovers.

NAMES = [
    ("exp[lr=1e-3]", "contains a bracketed [...] part, which the checkpoint library reads as a"),
    ("a\\b", "contains a backslash, which the checkpoint library reads as a file pattern"),
]


@pytest.mark.parametrize("name, message", NAMES, ids=["brackets", "backslash"])
def test_out_the_checkpoint_library_reads_as_a_pattern_is_refused(
    tmp_path, capsys, no_data_loading, name, message
):
    status, _, err = run(["--out", tmp_path / name], capsys)
    assert status == 1
    assert error_line(err) == (
        f"--out {tmp_path / name} {message} file pattern (its checkpoints could not be found "
        "again); choose another --out"
        if "bracketed" in message
        else f"--out {tmp_path / name} {message} (its checkpoints could not be found again); "
        "choose another --out"
    )
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name", ["a*b", "a?b", "a{b}", "a[b", "réglages"])
def test_names_the_checkpoint_library_reads_back_are_accepted(tiny, tmp_path, capsys, name):
    status, _, err = run(["--data-dir", tiny, "--out", tmp_path / name, *TINY], capsys)
    assert status == 0, err
    status, stdout, err = run(
        ["--data-dir", tiny, "--out", tmp_path / name, "--resume", *TINY, "--epochs", "2"], capsys
    )
    assert status == 0, err
    assert f"resuming from {tmp_path / name / 'checkpoints' / 'step_00000008'}" in stdout


def test_out_that_is_not_utf8_is_refused(tmp_path, capsys, no_data_loading):
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xffname")
    status, _, err = run(["--out", out], capsys)
    assert status == 1
    assert error_line(err) == (
        f"--out {tmp_path}/bad\\xffname is not valid UTF-8, which the checkpoint library needs; "
        "choose another --out"
    )


def test_out_with_a_name_too_long_is_one_line(tmp_path, capsys, no_data_loading):
    out = tmp_path / ("a" * 300) / "run"
    status, _, err = run(["--out", out], capsys)
    assert status == 1
    assert error_line(err) == (
        f"--out {out} cannot be checked (File name too long); choose another --out"
    )


def test_default_out_that_cannot_be_made_is_one_line(
    tmp_path, capsys, no_data_loading, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where the default parent would be")
    status, _, err = run([], capsys)
    assert status == 1
    message = error_line(err)
    assert message.startswith("--out was not given and its default, a new runs/")
    assert message.endswith(f" in {tmp_path}, cannot be created (Not a directory); pass --out")


def test_a_checkpoints_directory_of_other_files_is_kept(tmp_path, capsys, no_data_loading):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "model_best.pt").write_text("weights")
    status, _, err = run(["--out", tmp_path], capsys)
    assert status == 1
    assert error_line(err).startswith(
        f"--out {tmp_path} already holds other files (checkpoints) and no run."
    )
    assert (tmp_path / "checkpoints" / "model_best.pt").read_text() == "weights"


def test_a_checkpoint_directory_that_cannot_be_changed_is_refused_first(
    tmp_path, capsys, no_data_loading, monkeypatch
):
    # Simulated (root may change anything whose mode bits say otherwise): an immutable or
    # foreign-owned checkpoint, found by os.access, before the data is even loaded.
    locked = tmp_path / "checkpoints" / "step_00000008"
    locked.mkdir(parents=True)
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and access(p, mode))
    status, _, err = run(["--out", tmp_path, "--resume"], capsys)
    assert status == 1
    assert error_line(err) == (
        f"--out: {locked} cannot be changed (no write permission, or immutable), and the run "
        "writes and deletes checkpoints there; fix its permissions or choose another --out"
    )


def test_a_run_starting_over_beside_higher_leftovers_keeps_its_checkpoints(tiny, tmp_path, capsys):
    # A killed earlier run left step 99 renamed into place but never committed. The new run
    # starts over (nothing usable); its step-8 checkpoint was deleted as soon as it was written
    # when the preservation policy took the highest step on disk for the one being saved.
    out = tmp_path / "run"
    (out / "checkpoints" / "step_00000099" / "state").mkdir(parents=True)
    status, stdout, err = run(["--data-dir", tiny, "--out", out, "--resume", *TINY], capsys)
    assert status == 0, err
    assert "starting from scratch" in stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000008",
        "step_00000008.commit.json",
    ]
    status, stdout, err = run(
        ["--data-dir", tiny, "--out", out, "--resume", *TINY, "--epochs", "2"], capsys
    )
    assert status == 0, err
    assert f"resuming from {out / 'checkpoints' / 'step_00000008'}" in stdout


def test_the_preservation_policy_keeps_the_checkpoint_being_saved():
    dropped = []
    policy = KeepNewest(
        1, committed=lambda step: step == 3, on_drop=dropped.append, saving=lambda: 5
    )
    steps = [SimpleNamespace(step=s) for s in (3, 5, 9)]  # 9: an uncommitted leftover
    assert policy.should_preserve(steps, context=None) == [True, True, False]
    assert dropped == [9]
