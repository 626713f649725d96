"""The real options every loss shares (``label_smoothing``, ``z_loss``, ``softcap``): one rule.

A real option is a static hyperparameter: a Python (or numpy) real number, not a bool or an
array, finite and inside its interval; the message states the interval, what its ends mean,
the value got and the fix. Given the loss's compute dtype, ``z_loss`` and ``softcap`` must also
fit it.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def _interval(low: float, high: float | None, low_open: bool) -> str:
    return f"{'(' if low_open else '['}{low}, {'inf)' if high is None else f'{high}]'}"


def static_fix(value, fix: str) -> str:
    """``fix`` for a static option given the wrong type; for a traced value (an argument of a
    jitted function) the fix that works there: ``float(x)`` of a tracer fails."""
    if isinstance(value, jax.core.Tracer):
        return (
            "It is static, but traced here (an argument of a function under jax.jit or another "
            "transformation): pass it as a static argument (jax.jit(f, static_argnames=...)) "
            "or close over a Python value."
        )
    return fix


def real_option(value, name: str, *, low: float, high=None, low_open=False, meaning="") -> float:
    """A static real option in its interval (finite, always), as a float.

    Every real option has one rule: a Python (or numpy) real number, not a bool or an array,
    finite and inside ``[low, high]`` (``(low, ...`` when ``low_open``); the message states the
    interval, what its ends mean, the value got and the fix.
    """
    interval = _interval(low, high, low_open)
    meaning = f" ({meaning})" if meaning else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        fix = (
            f"It is a static hyperparameter: pass a number{meaning}, e.g. float(x), not an "
            "array or a bool."
        )
        raise TypeError(
            f"{name} must be a Python float in {interval}; got {value!r} of type "
            f"{type(value).__name__}. {static_fix(value, fix)}"
        )
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf if value > 0 else -math.inf
    inside = (number > low if low_open else number >= low) and (high is None or number <= high)
    if not (np.isfinite(number) and inside):
        raise ValueError(
            f"{name} must be in {interval}; got {number}. Pass a finite number in that "
            f"interval{meaning}."
        )
    return number


def check_options(
    label_smoothing, z_loss, softcap, dtype=None
) -> tuple[float, float, float | None]:
    """The real options every loss shares, checked in this order; the first bad one raises.

    Given ``dtype``, the loss's compute dtype, ``z_loss`` and ``softcap`` must also fit it: a
    value it rounds to inf (or a cap it rounds below its normal range) would turn every loss
    or gradient into NaN.
    """
    eps = real_option(
        label_smoothing, "label_smoothing", low=0.0, high=1.0,
        meaning="0 for no smoothing, 1 for the uniform target",
    )  # fmt: skip
    z = real_option(z_loss, "z_loss", low=0.0, meaning="0 turns the z-loss off")
    if softcap is not None:
        softcap = real_option(
            softcap, "softcap", low=0.0, low_open=True,
            meaning="the cap c in c * tanh(x / c); None turns the cap off",
        )  # fmt: skip
    if dtype is not None:
        info = jnp.finfo(dtype)
        high, tiny = float(info.max), float(info.tiny)
        fits = [("z_loss", z, 0.0)] + ([] if softcap is None else [("softcap", softcap, tiny)])
        for name, value, low in fits:
            if not low <= value <= high:
                raise ValueError(
                    f"{name}={value} does not fit {info.dtype}, the dtype the loss computes in "
                    f"(float32 unless an input is float64); pass a value in [{low:.3g}, "
                    f"{high:.3g}]."
                )
    return eps, z, softcap
