"""training._checkpoint: round trip, keep-last-K, corrupt and half-written checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from tests.faults import TEST_KILL_ENV
from training._checkpoint import RunCheckpoints, latest_good, scan, verify

ROOT = Path(__file__).resolve().parents[1]


def _state(seed: int):
    rng = np.random.default_rng(seed)
    return {
        "params": {"w": jnp.asarray(rng.standard_normal((7, 3)), jnp.float32)},
        "opt": {"mu": jnp.asarray(rng.standard_normal(3), jnp.float32), "count": jnp.int32(seed)},
    }


def _meta(step: int):
    return {"epoch": step // 10, "step": step, "losses": [0.1 * step, 1 / 3]}


def _save_steps(out: Path, steps, *, keep: int = 5) -> RunCheckpoints:
    store = RunCheckpoints(out, keep=keep, log=lambda message: None)
    for step in steps:
        store.save(step, _state(step), _meta(step))
    return store


def _assert_state_equal(actual, expected):
    np.testing.assert_array_equal(actual["params"]["w"], expected["params"]["w"])
    np.testing.assert_array_equal(actual["opt"]["mu"], expected["opt"]["mu"])
    assert int(actual["opt"]["count"]) == int(expected["opt"]["count"])


def test_round_trip_is_bit_exact(tmp_path):
    store = _save_steps(tmp_path, [3, 7])
    step, state, meta = store.restore(_state(0))
    assert step == 7
    assert meta == _meta(7)
    _assert_state_equal(state, _state(7))
    assert state["params"]["w"].dtype == jnp.float32


def test_keeps_newest_k(tmp_path):
    _save_steps(tmp_path, [1, 2, 3, 4, 5], keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [
        "step_00000004",
        "step_00000004.commit.json",
        "step_00000005",
        "step_00000005.commit.json",
    ]


def _newest_data_file(out: Path) -> Path:
    files = [p for p in (out / "checkpoints/step_00000020/state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _truncate(out: Path):
    path = _newest_data_file(out)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "bytes, expected"


def _delete_file(out: Path):
    _newest_data_file(out).unlink()
    return "is missing"


def _flip_byte(out: Path):
    path = _newest_data_file(out)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return "does not match its SHA-256"


def _drop_commit(out: Path):
    (out / "checkpoints/step_00000020.commit.json").unlink()
    return "no commit file"


def _bad_commit(name: str, text: str, reason: str):
    """A damage that writes ``text`` as the newest step's commit file; ``reason`` is its message."""

    def damage(out: Path):
        (out / "checkpoints/step_00000020.commit.json").write_text(text)
        return reason

    damage.__name__ = name
    return damage


_NOT_A_RECORD = "unreadable or not a commit record"
_BAD_COMMITS = [
    _bad_commit("garble_commit", '{"files": ', "unreadable"),
    _bad_commit("commit_not_a_record", '{"files": [1, 2]}', _NOT_A_RECORD),
    _bad_commit("commit_a_list", "[]", _NOT_A_RECORD),
    _bad_commit("commit_without_files", '{"format": 1}', _NOT_A_RECORD),
    _bad_commit("commit_entry_a_string", '{"files": {"a": "bb"}}', _NOT_A_RECORD),
    _bad_commit("commit_entry_too_short", '{"files": {"state/x": [1]}}', _NOT_A_RECORD),
]


def _commit_listing_nothing(out: Path):
    # A hand-edited commit record whose file list is empty: nothing on disk is vouched for.
    (out / "checkpoints/step_00000020.commit.json").write_text(
        '{"format": 1, "step": 20, "files": {}}'
    )
    return "lists no file"


def _unlisted_file(out: Path):
    # A file the commit record does not list: written after the commit, or planted.
    (out / "checkpoints/step_00000020/state/extra").write_bytes(b"x")
    return "file state/extra is not in its commit file"


def _killed_in_orbax_write(out: Path):
    # What Orbax leaves when the write dies before its rename: only a temporary directory.
    ckpt = out / "checkpoints"
    (ckpt / "step_00000020.commit.json").unlink()
    (ckpt / "step_00000020").rename(ckpt / "step_00000020.orbax-checkpoint-tmp")
    return "no commit file"


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        _delete_file,
        _flip_byte,
        _drop_commit,
        *_BAD_COMMITS,
        _commit_listing_nothing,
        _unlisted_file,
        _killed_in_orbax_write,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_damaged_newest_is_skipped_with_message(tmp_path, damage):
    _save_steps(tmp_path, [10, 20])
    reason = damage(tmp_path)
    messages: list[str] = []
    assert latest_good(tmp_path, log=messages.append)[0] == 10
    assert len(messages) == 1
    assert "step_00000020" in messages[0] and reason in messages[0], messages
    store = RunCheckpoints(tmp_path, log=messages.append)
    step, state, meta = store.restore(_state(0))
    assert (step, meta) == (10, _meta(10))
    _assert_state_equal(state, _state(10))


def test_no_good_checkpoint_restores_nothing(tmp_path):
    _save_steps(tmp_path, [20])
    _truncate(tmp_path)
    assert RunCheckpoints(tmp_path, log=lambda m: None).restore(_state(0)) is None
    assert RunCheckpoints(tmp_path / "empty").restore(_state(0)) is None


def test_check_sees_the_metadata_before_any_array_is_read(tmp_path):
    _save_steps(tmp_path, [10])
    seen = []

    def refuse(meta):
        seen.append(meta)
        raise RuntimeError("refused")

    wrong_shapes = {"params": {"w": jnp.zeros((2, 2))}, "opt": {}}
    with pytest.raises(RuntimeError, match="refused"):
        RunCheckpoints(tmp_path).restore(wrong_shapes, check=refuse)
    assert seen == [_meta(10)]


def test_save_replaces_leftovers_of_the_same_step(tmp_path):
    store = _save_steps(tmp_path, [10, 20])
    _killed_in_orbax_write(tmp_path)
    store.save(20, _state(21), _meta(21))
    assert verify(tmp_path / "checkpoints/step_00000020") is None
    step, state, _ = store.restore(_state(0))
    assert step == 20
    _assert_state_equal(state, _state(21))
    assert not list((tmp_path / "checkpoints").glob("*orbax-checkpoint-tmp*"))


def test_commit_file_lists_every_file(tmp_path):
    _save_steps(tmp_path, [4])
    record = json.loads((tmp_path / "checkpoints/step_00000004.commit.json").read_text())
    on_disk = {
        p.relative_to(tmp_path / "checkpoints/step_00000004").as_posix()
        for p in (tmp_path / "checkpoints/step_00000004").rglob("*")
        if p.is_file()
    }
    assert record["step"] == 4 and set(record["files"]) == on_disk
    assert any(name.startswith("state/") for name in on_disk)


def test_relative_run_directory(tmp_path, monkeypatch):
    # Orbax needs absolute paths; the store makes them so (a relative --out crashed at the
    # first checkpoint, leaving a half-written one behind).
    monkeypatch.chdir(tmp_path)
    store = RunCheckpoints("run", keep=2, log=lambda message: None)
    store.save(1, _state(1), _meta(1))
    assert store.root == tmp_path / "run" / "checkpoints"
    step, state, _ = RunCheckpoints("run").restore(_state(0))
    assert step == 1
    _assert_state_equal(state, _state(1))


def test_keep_one_keeps_the_previous_until_the_next_is_committed(tmp_path, monkeypatch):
    store = _save_steps(tmp_path, [1, 2, 3], keep=1)
    assert [f.step for f in scan(tmp_path)] == [3, 2]

    def crash(self, step, directory):
        raise RuntimeError("killed before the commit file")

    monkeypatch.setattr(RunCheckpoints, "commit", crash)
    with pytest.raises(RuntimeError):
        store.save(4, _state(4), _meta(4))
    found = scan(tmp_path)
    assert [(f.step, f.problem is None) for f in found] == [(4, False), (3, True)]
    assert latest_good(tmp_path, log=lambda m: None)[0] == 3


def test_rotation_leaves_no_commit_file_behind(tmp_path):
    _save_steps(tmp_path, range(1, 8), keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [
        "step_00000006",
        "step_00000006.commit.json",
        "step_00000007",
        "step_00000007.commit.json",
    ]


def test_scan_reports_every_checkpoint_newest_first(tmp_path):
    _save_steps(tmp_path, [10, 20])
    _truncate(tmp_path)
    found = scan(tmp_path)
    assert [(f.step, f.committed) for f in found] == [(20, True), (10, True)]
    assert "bytes, expected" in found[0].problem and found[1].problem is None


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep must be an integer of at least 1, got 0"):
        RunCheckpoints(tmp_path, keep=0)


_KILLED_SAVE = textwrap.dedent(
    """
    import os, sys
    import jax.numpy as jnp
    from tests.faults import TEST_KILL_ENV, install
    from training._checkpoint import RunCheckpoints
    install(os.environ[TEST_KILL_ENV])
    store = RunCheckpoints(sys.argv[1])
    for step in (1, 2):
        store.save(step, {"w": jnp.full((4, 4), step, jnp.float32)}, {"step": step})
    """
)


@pytest.mark.parametrize(
    ("point", "leftover"),
    [
        pytest.param("ckpt-write", "step_00000002.orbax-checkpoint-tmp", id="inside-orbax-write"),
        pytest.param("ckpt-commit", "step_00000002", id="before-commit-file"),
    ],
)
def test_sigkill_during_save_leaves_previous_checkpoint(tmp_path, point, leftover):
    env = {**os.environ, TEST_KILL_ENV: f"{point}:2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_SAVE, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / leftover).is_dir()
    if point == "ckpt-write":  # Orbax renames only a complete write into place
        assert not (ckpt / "step_00000002").exists()
    assert not (ckpt / "step_00000002.commit.json").exists()
    messages: list[str] = []
    assert latest_good(tmp_path, log=messages.append)[0] == 1
    assert "step_00000002" in messages[0] and "no commit file" in messages[0]
    step, state, meta = RunCheckpoints(tmp_path, log=messages.append).restore(
        {"w": jnp.zeros((4, 4), jnp.float32)}
    )
    assert (step, meta) == (1, {"step": 1})
    np.testing.assert_array_equal(state["w"], np.ones((4, 4), np.float32))
