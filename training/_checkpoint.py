"""Atomic, verified Orbax checkpoints of a training run, and the guard on its run directory.

Layout under ``<out>/checkpoints/``: ``step_<N>/`` is an Orbax checkpoint with two items,
``state`` (the model and optimizer pytree) and ``meta`` (JSON: epoch, step, data-order seed,
metrics so far); ``step_<N>.commit.json`` is written after it, atomically, and lists the size and
SHA-256 of every file in it. A checkpoint counts only when its commit file exists and every file
still matches: Orbax writes into ``step_<N>.orbax-checkpoint-tmp`` and renames it when complete,
so a write killed half-way leaves no ``step_<N>/``; a write killed between the rename and the
commit file, or a file truncated, deleted or altered afterwards, fails the check. Such a
checkpoint is reported and skipped, never loaded, and the previous good one is used.

Test hooks (for the kill-and-resume tests; not for users): the environment variable
``JAXCE_TEST_KILL=<point>:<step>`` makes the process SIGKILL itself at that step, where
``<point>`` is ``ckpt-write`` (all of the checkpoint's files written, before Orbax's rename),
``ckpt-commit`` (after the rename, before the commit file) or ``step`` (after the step has been
computed, before it is checkpointed; called by the training loop through `test_kill_point`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from training import _distributed

CHECKPOINT_DIR = "checkpoints"
TEST_KILL_ENV = "JAXCE_TEST_KILL"
_FORMAT = 1
_COMMIT = ".commit.json"
_STEP_RE = re.compile(r"^step_(\d+)(\.commit\.json|\.orbax-checkpoint-tmp.*)?$")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def test_kill_point(point: str, step: int, *, at_or_after: bool = False) -> None:
    """SIGKILLs this process when ``JAXCE_TEST_KILL`` is ``<point>:<N>`` and ``step`` is N.

    A test hook. With ``at_or_after``, any ``step >= N`` fires (training calls end only at some
    steps).
    """
    point_of, _, target = os.environ.get(TEST_KILL_ENV, "").partition(":")
    if point_of == point and (step == int(target) or (at_or_after and step >= int(target))):
        _stderr(
            f"[test hook] {TEST_KILL_ENV}={point}:{target}: killing process {os.getpid()} "
            f"at step {step}"
        )
        os.kill(os.getpid(), signal.SIGKILL)


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def _manifest(directory: Path) -> dict[str, list]:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files[path.relative_to(directory).as_posix()] = [path.stat().st_size, digest]
    return files


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify(directory: str | os.PathLike) -> str | None:
    """Checks a checkpoint directory against its commit file.

    Args:
      directory: a ``step_<N>`` directory.

    Returns:
      None when the checkpoint is complete and intact, else why it is not.
    """
    directory = Path(directory)
    commit = directory.with_name(directory.name + _COMMIT)
    if not commit.is_file():
        return "no commit file: the write did not finish (killed during the save?)"
    try:
        expected = json.loads(commit.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"commit file {commit.name} is unreadable ({err})"
    if not directory.is_dir():
        return "its directory is missing"
    for name, (size, digest) in expected.items():
        path = directory / name
        if not path.is_file():
            return f"file {name} is missing"
        if path.stat().st_size != size:
            return f"file {name} has {path.stat().st_size} bytes, expected {size}"
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return f"file {name} does not match its SHA-256"
    return None


def _steps(root: Path) -> dict[int, list[Path]]:
    """Every entry under ``root`` that belongs to a checkpoint, grouped by step."""
    entries: dict[int, list[Path]] = {}
    if root.is_dir():
        for path in root.iterdir():
            if match := _STEP_RE.match(path.name):
                entries.setdefault(int(match.group(1)), []).append(path)
    return entries


def latest_good(
    out_dir: str | os.PathLike, *, log: Callable[[str], None] = _stderr
) -> tuple[int, Path] | None:
    """The newest checkpoint of a run that passes `verify`; the others are reported via ``log``.

    Args:
      out_dir: the run directory (``--out``).
      log: where to report skipped checkpoints.

    Returns:
      ``(step, directory)``, or None when the run has no good checkpoint.
    """
    root = Path(out_dir) / CHECKPOINT_DIR
    for step in sorted(_steps(root), reverse=True):
        directory = _step_dir(root, step)
        problem = verify(directory)
        if problem is None:
            return step, directory
        log(f"skipping checkpoint {directory}: {problem}; trying the previous one")
    return None


def read_checkpoint(directory: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """A checkpoint's state as NumPy arrays and its metadata, on one process, without a template.

    For inspecting and comparing checkpoints; training restores through `RunCheckpoints`.

    Args:
      directory: a ``step_<N>`` directory.

    Returns:
      ``(state, meta)``: the saved pytree with `numpy.ndarray` leaves, and the JSON metadata.

    Raises:
      ValueError: the checkpoint fails `verify`.
    """
    directory = Path(directory)
    if (problem := verify(directory)) is not None:
        raise ValueError(f"checkpoint {directory} is not usable: {problem}")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(directory / "state").item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(
        directory / "state", args=ocp.args.PyTreeRestore(restore_args=restore_args)
    )
    return state, ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(directory / "meta")


def _remove(paths: list[Path]) -> None:
    # The commit file goes first: a removal cut short leaves an uncommitted, ignored checkpoint.
    for path in sorted(paths, key=lambda p: not p.name.endswith(_COMMIT)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class RunCheckpoints:
    """Saves and restores a run's checkpoints; keeps the newest ``keep`` committed ones.

    Every process must call `save` and `restore` (Orbax coordinates them); only process 0 writes
    files and reports.

    Args:
      out_dir: the run directory (``--out``); checkpoints go to ``<out_dir>/checkpoints``.
      keep: how many committed checkpoints to keep (older ones are deleted after each save).
      log: where process 0 reports skipped checkpoints.
    """

    def __init__(
        self, out_dir: str | os.PathLike, *, keep: int = 3, log: Callable[[str], None] = _stderr
    ):
        if keep < 1:
            raise ValueError(f"--keep-checkpoints must be at least 1, got {keep}")
        self.root = Path(out_dir) / CHECKPOINT_DIR
        self.keep = keep
        self._log = log if _distributed.is_primary() else lambda message: None
        self._checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())

    def directory(self, step: int) -> Path:
        """Where checkpoint ``step`` lives."""
        return _step_dir(self.root, step)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> Path:
        """Writes checkpoint ``step`` of ``state`` (a pytree of arrays) and ``meta`` (JSON-able).

        Returns:
          The checkpoint's directory.
        """
        directory = _step_dir(self.root, step)
        primary = _distributed.is_primary()
        if primary:
            self.root.mkdir(parents=True, exist_ok=True)
            _remove(_steps(self.root).get(step, []))  # leftovers of an abandoned attempt
        checkpointer = self._checkpointer
        if os.environ.get(TEST_KILL_ENV) == f"ckpt-write:{step}":
            handler = ocp.CompositeCheckpointHandler()
            handler.finalize = lambda _: test_kill_point("ckpt-write", step)
            checkpointer = ocp.Checkpointer(handler)
        checkpointer.save(
            directory,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        test_kill_point("ckpt-commit", step)
        if primary:
            record = {"format": _FORMAT, "step": step, "files": _manifest(directory)}
            _write_atomically(directory.with_name(directory.name + _COMMIT), json.dumps(record))
            self._prune(step)
        return directory

    def _prune(self, newest: int) -> None:
        entries = _steps(self.root)
        committed = sorted(
            s for s, paths in entries.items() if s <= newest and any(map(_is_commit, paths))
        )
        kept = set(committed[-self.keep :])
        for step, paths in entries.items():
            if step < newest and step not in kept:
                _remove(paths)

    def restore(
        self, like: Any, *, check: Callable[[dict[str, Any]], None] | None = None
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """Loads the newest good checkpoint, skipping (and reporting) bad ones.

        Args:
          like: a pytree with the structure, shapes, dtypes and shardings to restore into.
          check: called with the checkpoint's metadata before any array is read; raises to
            refuse a checkpoint that does not fit the run.

        Returns:
          ``(step, state, meta)``, or None when there is no good checkpoint.
        """
        found = latest_good(self.root.parent, log=self._log) if _distributed.is_primary() else None
        step = _distributed.broadcast_int(-1 if found is None else found[0])
        if step < 0:
            return None
        directory = _step_dir(self.root, step)
        meta_only = ocp.args.Composite(meta=ocp.args.JsonRestore())
        meta = self._checkpointer.restore(directory, args=meta_only)["meta"]
        if check is not None:
            check(meta)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        return step, self._checkpointer.restore(directory, args=args)["state"], meta


def _is_commit(path: Path) -> bool:
    return path.name.endswith(_COMMIT)
