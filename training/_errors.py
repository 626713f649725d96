"""The errors a training run raises, whose messages name settings the way the caller spells them.

A message is a template in which ``{@name}`` stands for the setting ``name`` (a `Config` field or
a function's parameter) and ``{key}`` for a value given as a keyword. ``str(error)`` writes
settings as their parameter names (``learning_rate must be positive ...``); a command line renders
the same error with its flags through `TrainingError.render` (``--lr must be positive ...``).
Values are inserted as they are, so a path holding braces is safe. The ``check_*`` functions
are the value checks every module shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any


class _Fields(dict):
    def __init__(self, values: dict[str, Any], name: Callable[[str], str]):
        super().__init__(values)
        self._name = name

    def __missing__(self, key: str) -> str:
        if key.startswith("@"):
            return self._name(key[1:])
        raise KeyError(f"message template has no value for {{{key}}}")


class TrainingError(Exception):
    """Base of the errors a training run reports to its user as one line.

    Args:
      template: the message; ``{@setting}`` names a setting, ``{key}`` inserts ``values[key]``.
      **values: the values the template inserts.
    """

    def __init__(self, template: str, /, **values: Any):
        self.template = template
        self.values = values
        super().__init__(self.render())

    def render(self, name: Callable[[str], str] = str) -> str:
        """The message, with each setting written as ``name(setting)``."""
        return self.template.format_map(_Fields(self.values, name))


class ConfigError(TrainingError, ValueError):
    """A setting's value is invalid, alone, with another setting, or for these devices or data."""


class DataError(TrainingError, ValueError):
    """A data file or download is missing, unreadable, corrupt or inconsistent."""


class RunDirError(TrainingError, OSError):
    """The run directory cannot be used: not a writable directory, in use, or holding a run."""


class ResumeError(TrainingError, ValueError):
    """The run cannot be resumed: no good checkpoint, other settings, or other data."""


class NonFiniteLossError(TrainingError, RuntimeError):
    """A training step's loss was NaN or infinite; the run stopped before saving it."""


class LaunchError(TrainingError, RuntimeError):
    """This process cannot join the other processes of the run."""


class WriteError(TrainingError, OSError):
    """A checkpoint or report could not be written (a full disk, a failing filesystem)."""


class Interrupted(TrainingError):
    """The run was interrupted (Ctrl-C, SIGINT); its last committed checkpoint is kept."""


_OS_WORDS = (
    "No space left on device",
    "Disk quota exceeded",
    "Read-only file system",
    "Permission denied",
    "Input/output error",
)


def write_failure(err: BaseException) -> str:
    """One line saying why a write failed: the OS's words where the error carries them (Orbax
    wraps them in long messages of its own), else the error's first line."""
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    for words in _OS_WORDS:
        if words in text:
            return words
    lines = text.strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def check_int(name: str, value: Any, *, low: int, high: int | None = None, why: str = "") -> None:
    """Raises ConfigError unless setting ``name`` is an integer in ``[low, high]``; ``why``
    (the reason for the bounds) is added to the message."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError("{@" + name + "} must be an integer, got {got!r}", got=value)
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"from {low} to {high}"
        raise ConfigError(
            "{@" + name + "} must be {bound}{why}, got {got}",
            bound=bound,
            why=f" ({why})" if why else "",
            got=value,
        )


def _check_number(name: str, value: Any, accept, what: str) -> None:
    """Raises ConfigError unless setting ``name`` is a finite real number ``accept`` takes."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and accept(value))
    ):
        raise ConfigError("{@" + name + "} must be " + what + ", got {got!r}", got=value)


_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32


def check_positive(name: str, value: Any, *, float32: bool = False) -> None:
    """Raises ConfigError unless setting ``name`` is a positive, finite number (with
    ``float32``, one float32 holds as a positive normal number: a learning rate)."""
    _check_number(name, value, lambda v: v > 0, "a positive, finite number")
    if float32 and not _FLOAT32_TINY <= value <= _FLOAT32_MAX:
        raise ConfigError(
            "{@" + name + "} must fit float32, the parameters' dtype (from {low:.3g} to "
            "{high:.3g}), got {got!r}",
            low=_FLOAT32_TINY,
            high=_FLOAT32_MAX,
            got=value,
        )


def check_fraction(name: str, value: Any) -> None:
    """Raises ConfigError unless setting ``name`` is a number from 0 to 1."""
    _check_number(name, value, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """Raises ConfigError unless setting ``name`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(
            "{@" + name + "} must be one of {choices}, got {got!r}",
            choices=", ".join(choices),
            got=value,
        )


def check_hidden(hidden: tuple[int, ...]) -> None:
    """Raises ConfigError unless ``hidden`` is a non-empty tuple of positive integer widths."""
    if (
        not isinstance(hidden, tuple)
        or not hidden
        or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden)
    ):
        got = " ".join(map(str, hidden)) if isinstance(hidden, tuple) else repr(hidden)
        raise ConfigError("{@hidden} needs positive integer widths, got {got}", got=got or "none")
