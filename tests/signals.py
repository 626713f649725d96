"""A test-only fault: a signal that lands inside a garbage-collection callback.

JAX registers a gc callback; a KeyboardInterrupt raised there by Python's default SIGINT
handler is printed ("Exception ignored in ...") and dropped, and a command went on to finish
as if it had not been interrupted. The CLIs record such a signal and stop at their next check.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Callable


def signal_in_a_gc_callback(sig: int) -> Callable[[], None]:
    """A function that collects garbage with a callback raising ``sig`` inside it; it returns
    normally when the signal's handler would raise there (the exception is dropped)."""

    def interrupt():
        def callback(phase, info):
            if phase == "start" and not fired:
                fired.append(sig)
                signal.raise_signal(sig)  # its Python handler runs at the next bytecodes, here
                sum(range(100))

        fired = []

        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)

    return interrupt
