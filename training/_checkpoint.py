"""A run's checkpoints: Orbax's CheckpointManager, plus a commit file that proves each one intact.

Layout under ``<out>/checkpoints/``: ``step_<N>/`` is an Orbax checkpoint with two items,
``state`` (the model and optimizer pytree) and ``meta`` (JSON: epoch, step, data-order seed,
settings, metrics so far); ``step_<N>.commit.json`` is written after it, atomically, and lists
the size and SHA-256 of every file in it.

Orbax's `CheckpointManager` names, writes, finds, restores and deletes the checkpoints: it
writes into ``step_<N>.orbax-checkpoint-tmp`` and renames that when complete, so a write killed
half-way leaves no ``step_<N>/``. The commit file adds what Orbax does not check: a checkpoint
counts only when its commit file exists and every file still matches, so a write killed between
the rename and the commit file, or a file truncated, deleted or altered afterwards, is reported
and skipped, never loaded, and the previous good one is used. Retention is Orbax's too, through a
preservation policy that keeps the newest ``keep`` checkpoints and never deletes the newest
committed one before the checkpoint being written is committed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from training import _distributed

CHECKPOINT_DIR = "checkpoints"
_FORMAT = 1
_COMMIT = ".commit.json"
_ITEMS = ("state", "meta")
_DIGITS = 8


def _reraised_write_errors(record: logging.LogRecord) -> bool:
    """Drops Orbax's log record of a writer thread's exception, with its traceback: the save
    raises the same error, which the run reports in one line (a full disk printed 100+ lines)."""
    return "_SignalingThread.run() raised an exception" not in record.getMessage()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:0{_DIGITS}d}"


def _commit_file(directory: Path) -> Path:
    return directory.with_name(directory.name + _COMMIT)


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
    commit = _commit_file(directory)
    if not commit.is_file():
        return "no commit file: the write did not finish (killed during the save?)"
    try:
        record = json.loads(commit.read_text())
        expected = {str(k): (int(v[0]), str(v[1])) for k, v in record["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        return f"commit file {commit.name} is unreadable or not a commit record ({err!r})"
    if not directory.is_dir():
        return "its directory is missing"
    if not expected:
        return f"commit file {commit.name} lists no file"
    on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    unlisted = sorted(on_disk - set(expected))
    if unlisted:
        return f"file {unlisted[0]} is not in its commit file ({len(unlisted)} such file(s))"
    for name, (size, digest) in expected.items():
        path = directory / name
        if not path.is_file():
            return f"file {name} is missing"
        if path.stat().st_size != size:
            return f"file {name} has {path.stat().st_size} bytes, expected {size}"
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return f"file {name} does not match its SHA-256"
    return None


@dataclasses.dataclass(frozen=True)
class Found:
    """A checkpoint found on disk.

    Attributes:
      step: its global step.
      directory: its ``step_<N>`` directory (which may be missing).
      problem: None when it is good, else why it cannot be used (see `verify`).
      committed: whether its commit file exists (it was complete once).
    """

    step: int
    directory: Path
    problem: str | None
    committed: bool


def _entries(root: Path) -> dict[int, list[Path]]:
    """Every entry under ``root`` that belongs to a checkpoint, grouped by step."""
    entries: dict[int, list[Path]] = {}
    if root.is_dir():
        for path in root.iterdir():
            name = path.name.removesuffix(_COMMIT)
            if not name.startswith("step_"):
                continue
            try:
                step = ocp.path.step.step_from_checkpoint_name(name)
            except ValueError:
                continue
            entries.setdefault(step, []).append(path)
    return entries


def foreign_entries(root: Path) -> list[str]:
    """The names under ``root`` that belong to no checkpoint (files this project did not write)."""
    if not root.is_dir():
        return []
    ours = {path.name for paths in _entries(root).values() for path in paths}
    return sorted(path.name for path in root.iterdir() if path.name not in ours)


def scan(out_dir: str | os.PathLike) -> list[Found]:
    """Every checkpoint of a run, newest first, each verified (`verify`)."""
    root = Path(out_dir) / CHECKPOINT_DIR
    found = []
    for step in sorted(_entries(root), reverse=True):
        directory = _step_dir(root, step)
        problem = verify(directory)
        found.append(Found(step, directory, problem, _commit_file(directory).is_file()))
    return found


def latest_good(
    out_dir: str | os.PathLike, *, log: Callable[[str], None] = _stderr
) -> tuple[int, Path] | None:
    """The newest checkpoint of a run that passes `verify`; the newer bad ones go to ``log``.

    Args:
      out_dir: the run directory (``--out``).
      log: where to report skipped checkpoints.

    Returns:
      ``(step, directory)``, or None when the run has no good checkpoint.
    """
    for found in scan(out_dir):
        if found.problem is None:
            return found.step, found.directory
        log(f"skipping checkpoint {found.directory}: {found.problem}; trying the previous one")
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
    directory = Path(directory).absolute()
    if (problem := verify(directory)) is not None:
        raise ValueError(f"checkpoint {directory} is not usable: {problem}")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(directory / "state").item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(
        directory / "state", args=ocp.args.PyTreeRestore(restore_args=restore_args)
    )
    return state, ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(directory / "meta")


@dataclasses.dataclass
class KeepNewest(ocp.checkpoint_managers.PreservationPolicy):
    """Orbax preservation policy: the newest ``keep`` checkpoints, counting the one being saved.

    Orbax applies it right after writing a checkpoint, before train.py commits it; so until that
    commit the newest committed checkpoint is kept as well (with ``keep=1``, two stay on disk).
    Checkpoints without a commit file, other than the one being saved, are leftovers of killed
    writes and are not kept. Orbax deletes what is not kept right after asking; ``on_drop`` is
    called first with each such step, so that its commit file goes before its files do.
    ``saving()`` names the checkpoint being saved: not always the highest step, since a run
    that starts over may find an earlier run's leftovers of higher steps (taking the highest
    deleted each new checkpoint as soon as it was written).
    """

    keep: int
    committed: Callable[[int], bool]
    on_drop: Callable[[int], None]
    saving: Callable[[], int | None]

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        steps = [info.step for info in checkpoints]
        newest = self.saving()
        if newest not in steps:
            newest = max(steps, default=None)
        good = sorted((s for s in steps if s != newest and self.committed(s)), reverse=True)
        kept = {newest, *good[: max(self.keep - 1, 1)]}
        for step in steps:
            if step not in kept:
                self.on_drop(step)
        return [step in kept for step in steps]


class RunCheckpoints:
    """Saves and restores a run's checkpoints; keeps the newest ``keep`` committed ones.

    Every process must call `save` and `restore` (Orbax coordinates them); only process 0 writes
    commit files and reports.

    Args:
      out_dir: the run directory; checkpoints go to ``<out_dir>/checkpoints`` (made absolute
        here, as Orbax requires).
      keep: how many checkpoints to keep.
      log: where process 0 reports skipped checkpoints.
    """

    def __init__(
        self, out_dir: str | os.PathLike, *, keep: int = 3, log: Callable[[str], None] = _stderr
    ):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an integer of at least 1, got {keep!r}")
        self.root = Path(out_dir).absolute() / CHECKPOINT_DIR
        self.keep = keep
        self._log = log if _distributed.is_primary() else lambda message: None
        self._manager: ocp.CheckpointManager | None = None
        self._saving: int | None = None  # the step `save` is writing

    @property
    def manager(self) -> ocp.CheckpointManager:
        """Orbax's manager of ``root``, made on first use."""
        if self._manager is None:
            logging.getLogger("absl").addFilter(_reraised_write_errors)
            options = ocp.CheckpointManagerOptions(
                step_prefix="step",
                step_format_fixed_length=_DIGITS,
                enable_async_checkpointing=False,
                preservation_policy=KeepNewest(
                    self.keep, self._committed, self._uncommit, lambda: self._saving
                ),
                cleanup_tmp_directories=False,  # `_discard` removes leftovers
                save_root_metadata=False,
            )
            self._manager = ocp.CheckpointManager(self.root, item_names=_ITEMS, options=options)
        return self._manager

    def directory(self, step: int) -> Path:
        """Where checkpoint ``step`` lives."""
        return _step_dir(self.root, step)

    def _committed(self, step: int) -> bool:
        return _commit_file(self.directory(step)).is_file()

    def _uncommit(self, step: int) -> None:
        if _distributed.is_primary():
            _commit_file(self.directory(step)).unlink(missing_ok=True)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> Path:
        """Writes checkpoint ``step`` of ``state`` (a pytree of arrays) and ``meta`` (JSON-able).

        Leftovers of an earlier attempt at the same step are replaced.

        Returns:
          The checkpoint's directory.
        """
        manager = self.manager
        self._discard([step])
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._saving = step
        try:
            manager.save(step, args=args, force=True)
        finally:
            self._saving = None
        directory = self.directory(step)
        if _distributed.is_primary():
            self.commit(step, directory)
        _distributed.barrier("jaxce_checkpoint_committed")
        return directory

    def _discard(self, steps: list[int]) -> None:
        """Deletes checkpoints ``steps`` with any leftovers (process 0), then lets Orbax re-read."""
        if _distributed.is_primary():
            for step, paths in _entries(self.root).items():
                if step in steps:
                    _remove(paths)
        _distributed.barrier("jaxce_checkpoints_discarded")
        self.manager.reload()

    def discard_all(self) -> None:
        """Deletes every checkpoint entry (a run starting over: an earlier run's leftovers of
        killed writes; every process calls it)."""
        self._discard(list(_entries(self.root)))

    def commit(self, step: int, directory: Path) -> None:
        """Writes the commit file of a checkpoint Orbax has finished (process 0)."""
        record = {"format": _FORMAT, "step": step, "files": _manifest(directory)}
        _write_atomically(_commit_file(directory), json.dumps(record))

    def restore(
        self,
        like: Any,
        *,
        check: Callable[[dict[str, Any]], None] | None = None,
        step: int | None = None,
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """Loads the newest good checkpoint (or ``step``), skipping and reporting bad ones.

        Checkpoints newer than the one loaded are all bad (reported); they are deleted once
        ``check`` has accepted the one loaded, since the resumed run writes those steps again.

        Args:
          like: a pytree with the structure, shapes, dtypes and shardings to restore into.
          check: called with the checkpoint's metadata before any array is read; raises to
            refuse a checkpoint that does not fit the run (nothing is deleted then).
          step: the step to load, when the caller has chosen it already (on every process).

        Returns:
          ``(step, state, meta)``, or None when there is no good checkpoint.
        """
        if step is None:
            found = (
                latest_good(self.root.parent, log=self._log) if _distributed.is_primary() else None
            )
            step = _distributed.broadcast_int(-1 if found is None else found[0])
        if step < 0:
            return None
        manager = self.manager
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if check is not None:
            check(meta)
        self._discard([s for s in _entries(self.root) if s > step])
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        return step, manager.restore(step, args=args)["state"], meta


def _remove(paths: list[Path]) -> None:
    # The commit file goes first: a removal cut short leaves an uncommitted, ignored checkpoint.
    for path in sorted(paths, key=lambda p: not p.name.endswith(_COMMIT)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def has_committed(out_dir: str | os.PathLike) -> bool:
    """Whether any checkpoint of a run was ever committed (complete once, good or not now)."""
    entries = _entries(Path(out_dir) / CHECKPOINT_DIR)
    return any(p.name.endswith(_COMMIT) for paths in entries.values() for p in paths)
