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
"""

from __future__ import annotations

import contextlib
import gc
import signal
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)  # SIGTERM: docker stop, scancel, Kubernetes
_received: list[int] = []
_deferring: list[bool] = []  # inside `deferred` blocks


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
    waits = _deferring and len(_received) == 1  # a second signal does not wait
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


def check() -> None:
    """Raises KeyboardInterrupt if a signal arrived under `handling` (a no-op otherwise)."""
    if _received:
        raise KeyboardInterrupt
