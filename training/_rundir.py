"""The run directory (``--out``): resolved once, checked before any work, locked for the run.

`RunDir.open` turns the setting into an absolute path (the default is a new
``runs/<timestamp>``), makes sure it is a writable directory, takes its lock, and refuses to
clobber an earlier run. The lock is an ``fcntl`` lock on ``<out>/.lock``, held by the process
for the run's life: the kernel drops it when the process ends, however it ends, so the file a
killed run leaves behind blocks nothing. The file records who holds it (process id, host, start
time), for the message another run gets. With several processes only process 0 opens the
directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from training._checkpoint import CHECKPOINT_DIR, foreign_entries, has_committed
from training._errors import RunDirError

LOCK_FILE = ".lock"
RUN_FILES = ("metrics.json", "curves.png")  # what a finished run writes beside its checkpoints
DEFAULT_PARENT = "runs"


def default_out(now: float | None = None) -> Path:
    """A new ``runs/<timestamp>`` directory (``-2``, ``-3``, ... when that name is taken)."""
    base = Path(DEFAULT_PARENT) / time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    for attempt in range(1, 1000):
        path = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as err:  # not writable, or runs/ is a file
            raise RunDirError(
                "{@out} was not given and its default, a new {path} in {cwd}, cannot be created "
                "({reason}); pass {@out}",
                path=path,
                cwd=Path.cwd(),
                reason=err.strerror or err,
            ) from None
    raise RunDirError("cannot find a free name for a new run under {parent}", parent=base.parent)


class RunDir:
    """A run directory this process holds the lock of (see the module docstring).

    Attributes:
      path: the absolute directory.
    """

    def __init__(
        self,
        path: Path,
        lock_fd: int | None = None,
        *,
        created: Path | None = None,
        own_lock_file: bool = False,
    ):
        self.path = path
        self._lock_fd = lock_fd
        # The highest directory this process made for the run: ``path`` itself, one of its
        # parents (``runs/`` on a first run, or a new ``--out``'s new parents), or None.
        self._created = created
        self._own_lock_file = own_lock_file  # the lock file is this process's: no run had one
        self._earlier: list[str] = []  # an earlier run's entries --overwrite is to delete

    @classmethod
    def open(
        cls,
        out: str | os.PathLike | None,
        *,
        resume: bool,
        overwrite: bool,
        log: Callable[[str], None] = print,
    ) -> RunDir:
        """Resolves, checks, locks and guards the run directory ``out``.

        Args:
          out: the directory (relative to the working directory, ``~`` expanded), or None for
            a new ``runs/<timestamp>``.
          resume: an earlier run in ``out`` is to be continued: it is left as it is.
          overwrite: an earlier run's checkpoints and metrics are deleted.
          log: where to report what was removed.

        Raises:
          RunDirError: ``out`` is not a directory or not writable, another live run holds it,
            or it holds a run and neither ``resume`` nor ``overwrite`` is given.
        """
        if out is None:
            parent = _missing_top(_resolve(DEFAULT_PARENT))  # default_out makes it
            path = default_out().resolve()
            created = parent or path
        else:
            path = _resolve(out)
            created = _missing_top(path)
        _make_dir(path)
        own_lock_file = not (path / LOCK_FILE).exists()
        run_dir = cls(path, _lock(path), created=created, own_lock_file=own_lock_file)
        try:
            _record_owner(run_dir._lock_fd, path)
        except BaseException:
            run_dir.discard_if_unused()  # holding the lock: what this process made is removed
            raise
        try:
            run_dir._guard(resume=resume, overwrite=overwrite, log=log)
            _check_changeable(path / CHECKPOINT_DIR)
        except BaseException:
            run_dir.discard_if_unused()
            raise
        return run_dir

    def clear_earlier_run(self, log: Callable[[str], None]) -> None:
        """Deletes the earlier run ``overwrite`` found: called once the new run is sure to start
        (its data loaded, its settings checked, its steps compiled), so a run refused or cut
        short before that never costs the earlier one."""
        for name in self._earlier:
            _delete(self.path / name)
        if self._earlier:
            log(
                f"deleted the earlier run in {self.path} ({', '.join(self._earlier)}) to start over"
            )
        self._earlier = []

    def _guard(self, *, resume: bool, overwrite: bool, log: Callable[[str], None]) -> None:
        entries = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)
        committed = has_committed(self.path)
        if overwrite:
            self._earlier = [n for n in entries if n in (CHECKPOINT_DIR, *RUN_FILES)]
            return
        run = committed or bool(set(entries) & set(RUN_FILES))
        others = [n for n in entries if n not in (CHECKPOINT_DIR, *RUN_FILES)]
        if resume and not run and others:
            raise RunDirError(
                "{@out} {path} holds no run to resume, but other files ({entries}); choose "
                "another {@out} (a new or empty directory) for a new run.",
                path=self.path,
                entries=", ".join(others),
            )
        if resume or not entries:
            return
        checkpoints = self.path / CHECKPOINT_DIR
        if entries == [CHECKPOINT_DIR] and not committed and not foreign_entries(checkpoints):
            # Only unfinished checkpoint writes of a run killed before its first commit.
            _delete(checkpoints)
            log(
                f"removed {self.path / CHECKPOINT_DIR}: it held only unfinished checkpoint "
                "writes of an interrupted run"
            )
            return
        if not run:
            raise RunDirError(
                "{@out} {path} already holds other files ({entries}) and no run. Choose "
                "another {@out} (a new or empty directory), or pass {@overwrite} to write this "
                "run beside them.",
                path=self.path,
                entries=", ".join(entries),
            )
        raise RunDirError(
            "{@out} {path} already holds a run ({entries}). Pass {@resume} to continue it "
            "from its latest good checkpoint, {@overwrite} to delete its checkpoints and "
            "metrics and start over, or choose another {@out}.",
            path=self.path,
            entries=", ".join(entries),
        )

    def release(self) -> None:
        """Releases the lock (the lock file stays, unlocked)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def discard_if_unused(self) -> None:
        """Releases the lock and, if this process made the directory and nothing but the lock
        was written into it (a run that failed before its first output), removes it, and the
        parents this process made for it while they are empty. In a directory that existed,
        a lock file this process made is removed (the directory is left as it was)."""
        self.release()
        if self._created is None:
            if self._own_lock_file:
                with contextlib.suppress(OSError):
                    (self.path / LOCK_FILE).unlink()
            return
        if [p.name for p in self.path.iterdir()] != [LOCK_FILE]:
            return
        _delete(self.path / LOCK_FILE)
        with contextlib.suppress(OSError):  # not empty (another run's, a user's file): kept
            for directory in (self.path, *self.path.parents):
                directory.rmdir()
                if directory == self._created:
                    break

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _resolve(out: str | os.PathLike) -> Path:
    """``out`` as an absolute path, ``~`` expanded, symbolic links followed, checked to be a
    path the checkpoint library can write to and read back (see `_check_name`)."""
    try:
        path = Path(out).expanduser().resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop (RuntimeError before Python 3.13)
        raise RunDirError(
            "{@out} {path} cannot be resolved ({reason}); choose another {@out}",
            path=out,
            reason=getattr(err, "strerror", None) or err,
        ) from None
    _check_name(path)
    return path


def _check_name(path: Path) -> None:
    """Refuses a path Orbax (the checkpoint library) mishandles: it must be UTF-8 (a name with
    other bytes failed only at the first checkpoint, after an epoch), and Orbax reads it as a
    file pattern, so ``[...]`` (a character class) and ``\\`` (an escape) wrote checkpoints it
    could not find again (``--resume`` failed inside it). ``*``, ``?``, ``{}`` and a lone
    bracket are read back fine."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RunDirError(
            "{@out} {path} is not valid UTF-8, which the checkpoint library needs; choose "
            "another {@out}",
            path=os.fsencode(text).decode("ascii", "backslashreplace"),
        ) from None
    if "\\" in text or re.search(r"\[[^/]*\]", text):
        raise RunDirError(
            "{@out} {path} contains {chars}, which the checkpoint library reads as a file "
            "pattern (its checkpoints could not be found again); choose another {@out}",
            path=path,
            chars="a backslash" if "\\" in text else "a bracketed [...] part",
        )


def _missing_top(path: Path) -> Path | None:
    """The highest of ``path`` and its parents that does not exist (None if ``path`` does)."""
    top = None
    for directory in (path, *path.parents):
        try:
            exists = directory.exists()
        except OSError as err:  # a name too long, a parent that cannot be searched
            raise RunDirError(
                "{@out} {path} cannot be checked ({reason}); choose another {@out}",
                path=path,
                reason=err.strerror or err,
            ) from None
        if exists:
            break
        top = directory
    return top


def _make_dir(path: Path) -> Path:
    """Creates ``path`` if needed and checks that it is a writable directory."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirError(
            "{@out} {path} is a file, not a directory; choose another {@out}", path=path
        ) from None
    except OSError as err:
        raise RunDirError(
            "{@out} {path} cannot be created ({reason}); choose another {@out}",
            path=path,
            reason=err.strerror or err,
        ) from None
    probe = path / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise _not_writable(path, err) from None
    return path


def _check_changeable(root: Path) -> None:
    """Refuses a checkpoint directory in which the run could not write or delete: it writes
    each checkpoint there and deletes old ones, and found out only at its first checkpoint,
    after an epoch of training (`os.access` sees permissions and the immutable flag)."""
    if not root.is_dir():
        return
    for directory, _, _ in os.walk(root, onerror=_unreadable):
        if not os.access(directory, os.W_OK | os.X_OK):
            raise RunDirError(
                "{@out}: {directory} cannot be changed (no write permission, or immutable), "
                "and the run writes and deletes checkpoints there; fix its permissions or "
                "choose another {@out}",
                directory=directory,
            )


def _unreadable(err: OSError) -> None:
    raise RunDirError(
        "{@out}: {path} cannot be read ({reason}); fix its permissions or choose another {@out}",
        path=err.filename,
        reason=err.strerror or err,
    )


def _lock(path: Path) -> int | None:
    """Takes ``path/.lock`` for this process, or raises naming the run that holds it."""
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunDirError(
            "{@out} {path}: its lock file {lock} cannot be opened ({reason}); remove it or "
            "choose another {@out}",
            path=path,
            lock=lock,
            reason=err.strerror or err,
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(lock)
        os.close(fd)
        raise RunDirError(
            "{@out} {path} is in use by another run ({holder}); wait for it to finish, or "
            "choose another {@out}",
            path=path,
            holder=holder,
        ) from None
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            os.close(fd)
            raise
        os.close(fd)  # a filesystem without locks: run unlocked rather than not at all
        return None
    return fd


def _record_owner(fd: int | None, path: Path) -> None:
    """Writes who holds the lock into the lock file (a full disk shows here first: the write
    probe writes 0 bytes)."""
    if fd is None:
        return
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(owner).encode())
    except OSError as err:
        raise _not_writable(path, err) from None


def _not_writable(path: Path, err: OSError) -> RunDirError:
    return RunDirError(
        "{@out} {path} is not writable ({reason}); choose another {@out}",
        path=path,
        reason=err.strerror or err,
    )


def _holder(lock: Path) -> str:
    try:
        owner = json.loads(lock.read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner["started"])))
        return f"process {int(owner['pid'])} on {owner['host']}, started {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its owner is not recorded"


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
