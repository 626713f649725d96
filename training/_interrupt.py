"""Ctrl-C and SIGTERM end a run where it stands, even when they land in a finaliser.

Python runs a signal's handler between two bytecodes of the main thread, wherever it is. The
default handler raises KeyboardInterrupt there; raised inside a garbage-collection callback
(JAX registers one) or a ``__del__`` method, Python prints it ("Exception ignored in ...") and
drops it, and the run went on to finish with exit status 0. `handling` installs a handler for
SIGINT and SIGTERM that records the signal and raises KeyboardInterrupt unless it would be
dropped there; `check`, called between the run's phases and after every training call, raises
it for a signal that was recorded but not raised. Inside `deferred` (a checkpoint write) the
first signal waits for the block's end: an interrupted write left Orbax's own errors (or a
partial checkpoint) in place of the one line.

With several processes (`coordinate`), a process that stops alone leaves the others waiting in
a collective until JAX aborts them (a C++ stack trace, exit status 134). There the first signal
only records, and every `check`, which all processes reach at the same points of the run,
asks them all: if any was signalled, all stop there together, each with its one line. A
second signal raises at once.
"""

from __future__ import annotations

import contextlib
import gc
import signal
from collections.abc import Callable, Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)  # SIGTERM: docker stop, scancel, Kubernetes
_received: list[int] = []
_deferring: list[bool] = []  # inside `deferred` blocks
_any_process: list[Callable[[bool], bool]] = []  # set by `coordinate`: several processes


def _dropped_in(frame: FrameType | None) -> bool:
    """Whether an exception raised in ``frame`` would be printed and dropped: ``frame`` runs
    inside a garbage-collection callback or a ``__del__`` method."""
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    waits = (_deferring or _any_process) and len(_received) == 1  # a second one does not wait
    if not waits and not _dropped_in(frame):
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal in the block takes effect at its end (a checkpoint write finishes whole, and
    the run stops with it committed); a second signal raises at once."""
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
    check()


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the block (from the main thread only);
    the earlier handlers come back after it."""
    _received.clear()
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()  # `check` outside the block (a later run in this process) is a no-op
        _any_process.clear()


def coordinate(any_process: Callable[[bool], bool]) -> None:
    """From here on (to the end of `handling`'s block) signals stop every process together:
    ``any_process(flag)`` is True on every process if ``flag`` is on any (a collective)."""
    _any_process[:] = [any_process]


def ignore() -> None:
    """SIGINT and SIGTERM are ignored from here on (a process about to exit)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def check() -> None:
    """Raises KeyboardInterrupt if a signal arrived under `handling` (a no-op otherwise); with
    several processes, on all of them if one arrived on any."""
    stop = bool(_received)
    if _any_process:
        stop = _any_process[0](stop)
    if stop:
        raise KeyboardInterrupt
