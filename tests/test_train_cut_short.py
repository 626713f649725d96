"""train.py when a run is cut short: a refused --overwrite, Ctrl-C, a full disk, a bad --out.

Each case runs ``train.main`` in this process, as tests/test_train_cli.py does (its helpers and
fixtures), and checks the exit status, the one ``train.py: error:`` line and what the run
directory holds afterwards. A fault is injected by replacing one function of the run with one
that raises what the fault raises: ``KeyboardInterrupt`` (Ctrl-C), ``OSError`` ENOSPC, or the
error Orbax wraps around it.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import signal
import time
from pathlib import Path

import jax
import pytest

import train as train_py
import training._run
from tests import test_train_cli as cli
from tests.signals import signal_in_a_gc_callback
from tests.test_train_cli import RESUME, TINY, _snapshot, error_line, run
from training import _distributed, _idx, _interrupt, _rundir
from training._checkpoint import RunCheckpoints
from training._errors import LaunchError

# test_train_cli's fixtures: the tiny dataset, a finished run, no launcher, no data loading
tiny, finished, no_launcher, no_data_loading = (
    cli.tiny,
    cli.finished,
    cli.no_launcher,
    cli.no_data_loading,
)

ORBAX_FULL_DISK = (
    'RESOURCE_EXHAUSTED: Error writing "opt_state.0.count/0" in OCDBT database at local file '
    '"/x/checkpoints/step_00000008.orbax-checkpoint-tmp/state/": [OS error 28: No space left on '
    "device]"
)


# -- --overwrite deletes the earlier run only once the new one is sure to start ---------------


@pytest.mark.parametrize(
    "flags, status",
    [
        (["--data-dir", "/nonexistent/jaxce-data", *TINY], 1),
        (["--batch-size", "100000", "--epochs", "1"], 2),  # refused once the data has loaded
    ],
    ids=["missing-data", "batch-larger-than-the-data"],
)
def test_a_refused_overwrite_keeps_the_earlier_run(finished, tiny, tmp_path, capsys, flags, status):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = _snapshot(out)
    flags = flags if "--data-dir" in flags else ["--data-dir", tiny, *flags]
    code, stdout, err = run(["--out", out, "--overwrite", *flags], capsys)
    assert code == status, err
    assert "deleted the earlier run" not in stdout + err and "Traceback" not in err
    assert _snapshot(out) == before


def test_an_overwrite_cut_short_while_compiling_keeps_the_earlier_run(
    finished, tiny, tmp_path, capsys, monkeypatch
):
    # A run that fails after its checks (here Ctrl-C while compiling) deleted the earlier run.
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = _snapshot(out)
    monkeypatch.setattr(train_py, "_exit_now", _raise_exit)
    monkeypatch.setattr("training._loop.Trainer.compile", lambda *a: _ctrl_c())
    code, stdout, err = run(["--data-dir", tiny, "--out", out, "--overwrite", *TINY], capsys)
    assert code == 130 and "Traceback" not in err
    assert "deleted the earlier run" not in stdout + err
    assert _snapshot(out) == before


# -- Ctrl-C: one line, and --resume continues ------------------------------------------------


def _raise_exit(status, **kw):  # train.py's os._exit would end this test process
    raise SystemExit(status)


def _ctrl_c():
    raise KeyboardInterrupt


def _interrupt_at_epoch(monkeypatch, epoch: int, interrupt=_ctrl_c) -> None:
    """``interrupt()`` as epoch ``epoch`` starts; train.py's exit made a SystemExit."""
    real = training._run.train_and_evaluate
    monkeypatch.setattr(train_py, "_exit_now", _raise_exit)

    def interrupted(trainer, state, data, config, checkpointing, history, at, *rest):
        if at == epoch:
            interrupt()
        return real(trainer, state, data, config, checkpointing, history, at, *rest)

    monkeypatch.setattr(training._run, "train_and_evaluate", interrupted)


def test_ctrl_c_after_a_checkpoint_says_resume_and_resume_finishes(
    tiny, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 1)
        status, _, err = run(["--data-dir", tiny, "--out", out, *RESUME], capsys)
    assert status == 130 and "Traceback" not in err
    assert error_line(err) == (
        f"interrupted; run directory {out}: its committed checkpoints are kept: rerun with "
        "--resume to continue"
    )
    status, stdout, err = run(["--data-dir", tiny, "--out", out, "--resume", *RESUME], capsys)
    assert status == 0, err
    assert "resuming from" in stdout
    assert len(json.loads((out / "metrics.json").read_text())["test_accuracy"]) == 2


def test_ctrl_c_before_any_checkpoint_says_start_again(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _interrupt_at_epoch(monkeypatch, 0)
    status, _, err = run(["--data-dir", tiny, "--out", out, *TINY], capsys)
    assert status == 130 and "Traceback" not in err
    # not naming the directory, which the run made and removes on the way out
    assert error_line(err) == (
        "interrupted before any checkpoint was committed: rerun the command to start again"
    )
    assert not out.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_a_gc_callback_is_kept_for_the_next_check(sig, monkeypatch):
    dropped = []
    monkeypatch.setattr("sys.unraisablehook", dropped.append)
    with _interrupt.handling():
        signal_in_a_gc_callback(sig)()  # returns: raising there would be dropped
        with pytest.raises(KeyboardInterrupt):
            _interrupt.check()
    assert dropped == []
    _interrupt.check()  # after the block: forgotten, a later run in this process is not cut


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_a_gc_callback_still_ends_the_run(tiny, tmp_path, capsys, monkeypatch, sig):
    # It was printed as "Exception ignored" and the run finished with exit status 0.
    out = tmp_path / "run"
    _interrupt_at_epoch(monkeypatch, 1, signal_in_a_gc_callback(sig))
    status, _, err = run(["--data-dir", tiny, "--out", out, *RESUME], capsys)
    assert status == 130 and "Traceback" not in err and "Exception ignored" not in err
    assert error_line(err).startswith(f"interrupted; run directory {out}: its committed")
    assert signal.getsignal(sig) is not _interrupt._handler  # restored when train.py returns


# -- a full disk: one line naming what failed and what is kept --------------------------------


@pytest.mark.parametrize(
    "error",
    [ValueError(ORBAX_FULL_DISK), OSError(errno.ENOSPC, "No space left on device")],
    ids=["orbax", "os"],
)
def test_a_full_disk_at_a_checkpoint_is_one_line(tiny, tmp_path, capsys, monkeypatch, error):
    def full(self, step, state, meta):
        raise error

    monkeypatch.setattr(RunCheckpoints, "save", full)
    monkeypatch.setattr(train_py, "_exit_now", _raise_exit)
    out = tmp_path / "run"
    status, _, err = run(["--data-dir", tiny, "--out", out, *TINY], capsys)
    assert status == 1 and "Traceback" not in err
    assert error_line(err) == (
        f"writing the checkpoint of global step 8 to {out / 'checkpoints'} failed (No space "
        "left on device); no checkpoint was written before it. Free space or fix the "
        "filesystem, then rerun with --resume."
    )


def test_a_full_disk_at_the_report_is_one_line_and_resume_writes_it(
    tiny, tmp_path, capsys, monkeypatch
):
    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(training._run, "plot_curves", full)
        patch.setattr(train_py, "_exit_now", _raise_exit)
        status, _, err = run(["--data-dir", tiny, "--out", out, *TINY], capsys)
    assert status == 1 and "Traceback" not in err
    assert error_line(err) == (
        f"writing {out / 'curves.png'} failed (No space left on device); the run's checkpoints "
        "are complete: free space or fix the filesystem, then rerun with --resume to write it."
    )
    status, stdout, err = run(["--data-dir", tiny, "--out", out, "--resume", *TINY], capsys)
    assert status == 0, err
    assert f"the run in {out} is finished (epoch 1 of 1, checkpoint step_00000008); " in stdout
    assert "resuming from" not in stdout
    assert (out / "curves.png").is_file()


# -- --out and --data-dir that cannot be used -------------------------------------------------


def test_out_in_a_symlink_loop(tmp_path, capsys, no_data_loading):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    status, _, err = run(["--out", tmp_path / "a"], capsys)
    assert status == 1 and "Traceback" not in err
    assert error_line(err).startswith(f"--out {tmp_path / 'a'} cannot be resolved (")


def test_out_whose_lock_file_is_a_directory(tmp_path, capsys, no_data_loading):
    (tmp_path / ".lock").mkdir()
    status, _, err = run(["--out", tmp_path], capsys)
    assert status == 1 and "Traceback" not in err
    assert error_line(err).startswith(
        f"--out {tmp_path}: its lock file {tmp_path / '.lock'} cannot be opened (Is a directory)"
    )


def test_data_dir_that_cannot_be_searched(tiny, tmp_path, capsys, monkeypatch):
    real = Path.is_file

    def is_file(path):
        if path.parent == tiny:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(_idx.Path, "is_file", is_file)
    status, _, err = run(["--data-dir", tiny, "--out", tmp_path / "run", *TINY], capsys)
    assert status == 1 and "Traceback" not in err
    assert error_line(err) == (
        f"--data-dir: {tiny} cannot be searched for train-images-idx3-ubyte[.gz] (Permission "
        "denied); check that the directory is readable"
    )
    assert not (tmp_path / "run").exists()


# JAX refuses "" too; 2**31 made JAX fail with a traceback, 10,000 took it a minute
@pytest.mark.parametrize("value", ["abc", "0", "-2", "", " ", "1025", "2147483648"])
def test_a_bad_jax_num_cpu_devices_is_a_usage_error(value, capsys, monkeypatch):
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", value)
    monkeypatch.setattr(train_py, "train", lambda *a, **k: pytest.fail("the run started"))
    status, _, err = run([], capsys)
    assert status == 2
    assert error_line(err) == (
        f"JAX_NUM_CPU_DEVICES must be an integer from 1 to 1024 (the number of CPU devices) "
        f"or -1, got {value!r}; set it to one, or unset it (or set -1) for one device"
    )


def test_sigterm_ends_the_run_as_ctrl_c_does(tiny, tmp_path, capsys, monkeypatch):
    # what docker stop, scancel and Kubernetes send
    _interrupt_at_epoch(monkeypatch, 1, lambda: os.kill(os.getpid(), signal.SIGTERM))
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    status, _, err = run(["--data-dir", tiny, "--out", out, *RESUME], capsys)
    assert status == 130 and "Traceback" not in err
    assert error_line(err).startswith(f"interrupted; run directory {out}: its committed")
    assert signal.getsignal(signal.SIGTERM) is before  # restored when train.py returns


def test_a_full_disk_at_the_lock_file_is_one_line_and_leaves_nothing(
    tmp_path, capsys, no_data_loading, monkeypatch
):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_rundir.os, "write", full)
    out = tmp_path / "new" / "run"
    status, _, err = run(["--out", out], capsys)
    assert status == 1 and "Traceback" not in err
    assert error_line(err) == (
        f"--out {out} is not writable (No space left on device); choose another --out"
    )
    assert not (tmp_path / "new").exists()


def test_a_signal_during_a_checkpoint_write_waits_for_it():
    with _interrupt.handling():
        with pytest.raises(KeyboardInterrupt), _interrupt.deferred():
            signal.raise_signal(signal.SIGTERM)
            sum(range(100))  # the handler has run: the block goes on
            finished = True
        assert finished
        _interrupt._received.clear()
        # a second signal does not wait
        with pytest.raises(KeyboardInterrupt), _interrupt.deferred():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            sum(range(100))
            pytest.fail("the second signal was deferred too")


def test_sigterm_during_a_checkpoint_write_ends_after_it_is_committed(
    tiny, tmp_path, capsys, monkeypatch
):
    # An interrupted write printed Orbax's errors (or a write failure) instead of the line.
    real = RunCheckpoints.save
    monkeypatch.setattr(train_py, "_exit_now", _raise_exit)

    def save(self, step, state, meta):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, step, state, meta)

    monkeypatch.setattr(RunCheckpoints, "save", save)
    out = tmp_path / "run"
    status, _, err = run(["--data-dir", tiny, "--out", out, *RESUME], capsys)
    assert status == 130 and "Traceback" not in err
    assert error_line(err).startswith(f"interrupted; run directory {out}: its committed")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000004",
        "step_00000004.commit.json",
    ]


def test_an_epochs_seconds_leave_out_its_step_checkpoint_writes(
    tiny, tmp_path, capsys, monkeypatch
):
    # They counted the mid-epoch writes (0.95 s an epoch against 0.05 without), not the last.
    real, slow = RunCheckpoints.save, 0.5
    writes = []

    def save(self, step, state, meta):
        writes.append(step)
        time.sleep(slow)
        return real(self, step, state, meta)

    monkeypatch.setattr(RunCheckpoints, "save", save)
    out = tmp_path / "run"
    status, _, err = run(["--data-dir", tiny, "--out", out, *RESUME], capsys)
    assert status == 0, err
    assert writes == [4, 8, 12, 16]  # two mid-epoch writes, two at an epoch's end
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(seconds < slow for seconds in metrics["epoch_seconds"]), metrics["epoch_seconds"]


def test_with_several_processes_a_signal_stops_them_all_at_a_check():
    # One process stopping alone left the others in a collective until JAX aborted them.
    asked = []

    def any_process(flag):  # a peer was signalled: every process stops at this check
        asked.append(flag)
        return True

    with _interrupt.handling():
        _interrupt.coordinate(lambda flag: asked.append(flag) or flag)
        signal.raise_signal(signal.SIGTERM)
        sum(range(100))  # the handler recorded it and returned: no process stops alone
        with pytest.raises(KeyboardInterrupt):
            _interrupt.check()
        assert asked == [True]
        _interrupt._received.clear()
        _interrupt.coordinate(any_process)
        with pytest.raises(KeyboardInterrupt):
            _interrupt.check()  # not signalled here, but a peer was
        assert asked == [True, False]
    _interrupt.check()  # after the block: one process again, nothing recorded


class _FakeClient:
    """jax.distributed's key-value store, as `training._distributed` uses it."""

    def __init__(self, **values):
        self.values = dict(values)

    def key_value_set(self, key, value):
        if key in self.values:
            raise jax.errors.JaxRuntimeError(f"ALREADY_EXISTS: {key}")
        self.values[key] = value

    def key_value_try_get(self, key):
        if key not in self.values:
            raise jax.errors.JaxRuntimeError(f"NOT_FOUND: {key}")
        return self.values[key]


def _two_processes(monkeypatch, client, index=0):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(_distributed.ocp_multihost, "get_jax_distributed_client", lambda: client)
    monkeypatch.setattr(_distributed, "_votes", itertools.count(7))


def test_any_process_asks_every_process_and_ends_when_one_left(monkeypatch):
    client = _FakeClient(**{"jaxce:any:7:1": "1", "jaxce:any:8:1": "0"})
    _two_processes(monkeypatch, client)
    assert _distributed.any_process(False)  # the other process was signalled
    assert not _distributed.any_process(False)
    assert client.values["jaxce:any:8:0"] == "0"
    client.values[_distributed.ABANDONED] = "1"  # the other stopped alone: no vote will come
    assert _distributed.any_process(False)
    client.values.pop(_distributed.ABANDONED)
    with pytest.raises(LaunchError) as error:  # one line in train.py, exit status 1
        _distributed.any_process(False, timeout_s=0.05)
    assert error.value.render(train_py.flag) == (
        "processes [1] did not reach the same point of the run within 0.05 s; they may have "
        "ended: see their output"
    )


def test_leaving_process_0_waits_for_the_others(monkeypatch):
    client = _FakeClient()
    _two_processes(monkeypatch, client, index=1)
    _distributed.leave()  # process 1 says it is gone and leaves at once
    assert client.values == {_distributed.ABANDONED: "1", "jaxce:left:1": "1"}
    _two_processes(monkeypatch, client, index=0)
    start = time.monotonic()
    _distributed.leave(timeout_s=5.0)  # process 1 has left: no wait
    assert time.monotonic() - start < 1.0 and client.values["jaxce:left:0"] == "1"
    del client.values["jaxce:left:1"]
    start = time.monotonic()
    _distributed.leave(timeout_s=0.2)  # one still there: waits, at most the timeout
    assert 0.2 <= time.monotonic() - start < 1.0


def test_ctrl_c_right_after_the_directory_is_made_leaves_none(tiny, tmp_path, capsys, monkeypatch):
    # The window between making the run directory and the block that removes an unused one
    real = training._run.on_primary
    monkeypatch.setattr(train_py, "_exit_now", _raise_exit)

    def then_ctrl_c(fn):
        real(fn)
        raise KeyboardInterrupt

    monkeypatch.setattr(training._run, "on_primary", then_ctrl_c)
    out = tmp_path / "new" / "run"
    status, _, err = run(["--data-dir", tiny, "--out", out, *TINY], capsys)
    assert status == 130 and "Traceback" not in err
    assert not (tmp_path / "new").exists()
