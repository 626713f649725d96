"""Kill-and-resume, corrupt checkpoints, the run-directory guard and the NaN stop, end to end.

Each run is a real ``train.py`` subprocess on ../shared/data/mnist-mini (8000 examples, batch
64: 125 steps per epoch) with a tiny model, 2 epochs, a checkpoint every 40 steps and 25
training calls per epoch, started from the repository root with relative ``--data-dir`` and
``--out``, as a user types them. Kills are real SIGKILLs, placed deterministically by the
test-only launcher `tests.faults` (``JAXCE_TEST_KILL``). A resumed run must end with
bit-identical parameters, optimizer state and metrics to an uninterrupted one (CPU).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

import train
from tests.conftest import CACHE_VARIABLES, SHARED_DATA
from tests.faults import TEST_KILL_ENV
from training import Config, NonFiniteLossError, ResumeError
from training._checkpoint import read_checkpoint
from training._resume import SHUFFLE, RunCheckpointing
from training._run import chunk_bounds

ROOT = Path(__file__).resolve().parents[1]
MNIST_MINI = SHARED_DATA / "mnist-mini"
needs_data = pytest.mark.skipif(
    not MNIST_MINI.is_dir(), reason="needs ../shared/data/mnist-mini (the 8k/2k MNIST subset)"
)
FLAGS = ["--epochs", "2", "--hidden", "16", "--checkpoint-every", "40", "--chunks", "25"]
FINAL = "step_00000250"
COMPARED = ("train_loss", "test_loss", "test_accuracy", "final_test_accuracy")


def relative(path: Path) -> str:
    """``path`` relative to the repository root, where the runs start (as a user types it)."""
    return os.path.relpath(path, ROOT)


def train_command(out, *flags, faults: bool = False) -> list[str]:
    """train.py's command line (or the fault-injecting launcher's) with relative paths."""
    program = ["-m", "tests.faults"] if faults else ["train.py"]
    data = ["--data-dir", relative(MNIST_MINI)]
    return [sys.executable, *program, *data, "--out", relative(Path(out)), *flags]


def cpu_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """This environment without JAX/XLA settings, on ``devices`` CPU devices, plus ``extra``.

    The run's compilation cache (``tests/conftest.py``) stays: a run reads back what an earlier
    one with the same settings compiled (the same executables, so results stay bit-identical).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JAX_", "XLA_")) or k in CACHE_VARIABLES
    }
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), **extra)
    return env


def shared_dir(tmp_path_factory) -> Path:
    """A directory of this test session that every xdist worker shares."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def train_py(out, *flags, env=None, devices: int = 1, timeout: int = 300):
    """Runs train.py on mnist-mini in a fresh process from the repository root."""
    return subprocess.run(
        train_command(out, *flags, faults=bool(env and TEST_KILL_ENV in env)),
        cwd=ROOT,
        env=cpu_env(devices, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output(proc) -> str:
    return proc.stdout + proc.stderr


def ok(proc) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def assert_same_run(out: Path, reference: Path) -> None:
    """Bit-identical metrics and final checkpoint (parameters, Adam state, step losses)."""
    for key in COMPARED:
        assert metrics(out)[key] == metrics(reference)[key], key
    state, meta = read_checkpoint(out / "checkpoints" / FINAL)
    ref_state, ref_meta = read_checkpoint(reference / "checkpoints" / FINAL)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    jax.tree.map(np.testing.assert_array_equal, state, ref_state)
    for key in ("train_loss", "test_loss", "test_accuracy"):  # not the timings
        assert meta["history"][key] == ref_meta["history"][key], key


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run on one device, made once per test session and shared by the test
    processes (the resume tests compare against it)."""
    out = shared_dir(tmp_path_factory) / "train-reference" / "run"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other workers wait for the first one's run
        if not (out / "metrics.json").is_file():
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(out)
            ok(train_py(out, *FLAGS))
    return out


# Each run is killed at a point, then resumed; the last resume runs to the end. Checkpoints are
# due at global steps 40, 80, 120, 125 (end of epoch 1), 160, 200, 240 and 250.
KILLS = [
    # (JAXCE_TEST_KILL, the next run resumes from, and skips as incomplete)
    ("step:100", "step_00000080", None),  # mid-epoch: steps 81-100 are lost and redone
    ("ckpt-write:160", "step_00000125", "step_00000160"),  # inside Orbax's write, before rename
    ("ckpt-commit:200", "step_00000160", "step_00000200"),  # after the rename, no commit file
]


@pytest.mark.slow
@needs_data
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    proc = train_py(out, *FLAGS, env={TEST_KILL_ENV: KILLS[0][0]})  # relative --out
    for i, (kill, resumed_from, skipped) in enumerate(KILLS):
        assert proc.returncode == -9, proc.stderr[-4000:]
        assert f"[test hook] {TEST_KILL_ENV}={kill}" in proc.stderr
        env = {TEST_KILL_ENV: KILLS[i + 1][0]} if i + 1 < len(KILLS) else {}
        proc = train_py(out, *FLAGS, "--resume", env=env)
        assert f"resuming from {out / 'checkpoints' / resumed_from}:" in output(proc)
        if skipped:
            assert f"skipping checkpoint {out / 'checkpoints' / skipped}: no commit" in output(proc)
    ok(proc)
    assert_same_run(out, reference)


@pytest.mark.slow
@needs_data
def test_corrupt_newest_checkpoint_is_skipped_and_resume_is_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    data = max((out / "checkpoints" / FINAL).rglob("d/*"), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:100])
    proc = ok(train_py(out, *FLAGS, "--resume"))
    assert f"skipping checkpoint {out / 'checkpoints' / FINAL}: file " in output(proc)
    assert "expected" in output(proc)
    assert f"resuming from {out / 'checkpoints' / 'step_00000240'}:" in output(proc)
    assert_same_run(out, reference)


@pytest.mark.slow
@needs_data
def test_existing_run_is_not_clobbered(tmp_path, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    proc = train_py(out, *FLAGS)
    assert proc.returncode == 1
    assert f"train.py: error: --out {out} already holds a run" in proc.stderr
    assert "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    assert metrics(out) == metrics(reference)


@pytest.mark.slow
@needs_data
def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    # Adam's first step moves every weight by ~lr = 1e30, so step 2's logits overflow: NaN.
    out = tmp_path / "run"
    proc = train_py(
        out, "--epochs", "1", "--hidden", "16", "--lr", "1e30", "--checkpoint-every", "1"
    )
    assert proc.returncode == 1
    last_good = out / "checkpoints" / "step_00000001"
    assert (
        "train.py: error: training loss is nan at epoch 1, step 2/125 (global step 2); stopped "
        f"without saving it, the last good checkpoint is {last_good}." in proc.stderr
    )
    assert sorted(p.name for p in last_good.parent.iterdir()) == [
        "step_00000001",
        "step_00000001.commit.json",
    ]
    state, meta = read_checkpoint(last_good)
    assert meta["global_step"] == 1 and np.isfinite(state["step_losses"][0])
    assert not (out / "metrics.json").exists()


# Unit tests of the pieces train.py puts together (no subprocess).


DATA = {
    "name": "mnist",
    "source": "somewhere",
    "num_train": 8000,
    "num_test": 2000,
    "sha256": "a" * 64,
}


def _checkpointing(tmp_path, *, data=DATA, steps_per_epoch=125, **config) -> RunCheckpointing:
    return RunCheckpointing(
        Config(out=str(tmp_path), **config),
        out=tmp_path,
        steps_per_epoch=steps_per_epoch,
        data=data,
        log=print,
    )


@pytest.mark.parametrize(
    ("losses", "epoch", "done", "message"),
    [
        pytest.param(
            {36: np.nan},
            1,
            40,
            r"loss is nan at epoch 2, step 37/125 \(global step 162\)",
            id="nan",
        ),
        pytest.param(
            {3: np.inf, 9: np.nan}, 0, 10, r"loss is inf at epoch 1, step 4/125 ", id="first-of-two"
        ),
        pytest.param({0: -np.inf}, 0, 1, r"loss is -inf at epoch 1, step 1/125", id="neg-inf"),
    ],
)
def test_non_finite_loss_is_reported_with_its_step(tmp_path, losses, epoch, done, message):
    step_losses = np.ones(125, np.float32)
    for index, value in losses.items():
        step_losses[index] = value
    checkpointing = _checkpointing(tmp_path)
    checkpointing.last_saved = "somewhere/step_00000120"
    with pytest.raises(NonFiniteLossError, match=message + ".*somewhere/step_00000120"):
        checkpointing.after_chunk(SimpleNamespace(step_losses=step_losses), done, epoch=epoch)


def test_losses_past_the_steps_run_are_not_checked(tmp_path):
    step_losses = np.full(125, np.nan, np.float32)
    step_losses[:10] = 1.0  # stale entries after step 10 are from the previous epoch or zero
    _checkpointing(tmp_path).after_chunk(SimpleNamespace(step_losses=step_losses), 10, epoch=0)


@pytest.mark.parametrize(
    ("every", "epoch", "expected"),
    [(0, 0, []), (40, 0, [40, 80, 120]), (40, 1, [35, 75, 115]), (125, 0, []), (50, 1, [25, 75])],
    ids=["off", "epoch-1", "epoch-2", "epoch-length", "offset"],
)
def test_checkpoint_cuts_follow_the_global_step(tmp_path, every, epoch, expected):
    assert _checkpointing(tmp_path, checkpoint_every=every).cuts(epoch) == expected


def test_chunk_bounds_include_the_cuts():
    assert chunk_bounds(0, 10, 2, cuts=[3]) == [(0, 3), (3, 2), (5, 5)]
    assert chunk_bounds(4, 10, 2, cuts=[3, 7]) == [(4, 1), (5, 2), (7, 3)]
    assert chunk_bounds(0, 10, 1, cuts=[0, 10, 12]) == [(0, 10)]


def _refusal(checkpointing, meta) -> ResumeError:
    with pytest.raises(ResumeError) as error:
        checkpointing._check_compatible(meta)
    return error.value


def test_resume_with_other_settings_is_refused(tmp_path):
    saved = {"config": {**Config().as_dict(), "learning_rate": 0.01}, "data": DATA, "epoch": 1}
    error = _refusal(_checkpointing(tmp_path), saved)
    assert "written with learning_rate 0.01, this run has 0.001" in str(error)
    assert "written with --lr 0.01, this run has 0.001" in error.render(train.flag)
    wider = {**saved, "config": {**Config().as_dict(), "hidden": [256, 128]}}
    error = _refusal(_checkpointing(tmp_path), wider)
    assert "written with --hidden 256 128, this run has 128" in error.render(train.flag)


def test_resume_on_other_data_of_the_same_size_is_refused(tmp_path):
    saved = {"config": Config().as_dict(), "data": DATA, "epoch": 1}
    other = {**DATA, "sha256": "b" * 64, "source": "elsewhere"}
    error = _refusal(_checkpointing(tmp_path, data=other), saved)
    message = error.render(train.flag)
    assert "trained on other data (SHA-256 aaaaaaaaaaaa..., 8000 training examples from " in message
    assert "this run's data is bbbbbbbbbbbb... (8000 from elsewhere)" in message
    assert "--resume" in message and "--overwrite" in message


def test_checkpoint_without_a_data_fingerprint_compares_the_size(tmp_path, capsys):
    # Checkpoints of an older train.py recorded only the number of training examples.
    saved = {"config": Config().as_dict(), "num_train": 8000, "epoch": 1}
    _checkpointing(tmp_path)._check_compatible(saved)
    assert "records no data fingerprint" in capsys.readouterr().out
    bigger = {**DATA, "num_train": 60000}
    error = _refusal(_checkpointing(tmp_path, data=bigger, steps_per_epoch=938), saved)
    assert re.search(r"trained on 8000 examples, this run's .* has 60000", str(error))


def test_checkpoint_past_the_epochs_asks_for_more(tmp_path):
    saved = {"config": Config().as_dict(), "data": DATA, "epoch": 5}
    error = _refusal(_checkpointing(tmp_path, epochs=3), saved)
    assert "at epoch 5, past --epochs 3; pass --epochs 5 or more" in error.render(train.flag)


@pytest.mark.parametrize(
    "order",
    [
        pytest.param({}, id="older-train-py"),
        pytest.param({"seed": 0, "epoch": 1, "shuffle": "another"}, id="other-shuffle"),
    ],
)
def test_mid_epoch_checkpoint_of_another_shuffle_warns(tmp_path, capsys, order):
    # The rest of the epoch follows this version's order: said, not silent.
    saved = {"config": Config().as_dict(), "data": DATA, "epoch": 1, "step_in_epoch": 40}
    _checkpointing(tmp_path)._check_compatible({**saved, "data_order": order})
    out = capsys.readouterr().out
    assert "taken inside epoch 2 by a train.py that shuffled otherwise" in out
    assert "later epochs are unaffected" in out


@pytest.mark.parametrize(
    ("order", "step_in_epoch"),
    [
        pytest.param({}, 0, id="older-at-epoch-end"),
        pytest.param({"seed": 0, "epoch": 1, "shuffle": SHUFFLE}, 40, id="this-shuffle"),
    ],
)
def test_checkpoint_of_the_same_order_resumes_quietly(tmp_path, capsys, order, step_in_epoch):
    saved = {"config": Config().as_dict(), "data": DATA, "epoch": 1}
    saved.update(step_in_epoch=step_in_epoch, data_order=order)
    _checkpointing(tmp_path)._check_compatible(saved)
    assert "shuffled otherwise" not in capsys.readouterr().out
