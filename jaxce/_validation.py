"""Static argument checks shared by the public wrappers.

Everything here runs once, at trace time, on shapes, dtypes and Python options. Each error names
the argument, the value it got and the fix. Nothing here touches array values.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxce._kernels import Options

REDUCTIONS = ("none", "mean", "sum")


class Spec(NamedTuple):
    """The validated, static description of one cross-entropy call."""

    axis: int  # non-negative class axis of ``logits``
    num_classes: int
    soft_labels: bool  # True: ``labels`` are probabilities; False: class indices
    batch_shape: tuple[int, ...]  # logits' shape without the class axis


def as_array(value, name: str) -> jax.Array:
    """Converts array-likes to JAX arrays, rejecting objects that are not arrays."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic, numbers.Number)):
        return jnp.asarray(value)
    if isinstance(value, (list, tuple)):
        try:
            return jnp.asarray(value)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be an array; got a {type(value).__name__} that "
                f"jnp.asarray cannot convert ({err})."
            ) from err
    raise TypeError(
        f"{name} must be a jax.Array or numpy array; got {type(value).__name__}. "
        f"Convert it first, e.g. jnp.asarray({name})."
    )


def real_option(value, name: str, *, low: float, high: float | None = None) -> float:
    """Checks a Python scalar option lies in [low, high] and returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a Python float; got {value!r} of type {type(value).__name__}. "
            f"It is a static hyperparameter: pass a number, not an array."
        )
    value = float(value)
    if not np.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bounds}; got {value}.")
    return value


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}."
        )
    return reduction


def check_softcap(softcap) -> float | None:
    if softcap is None:
        return None
    value = real_option(softcap, "softcap", low=0.0)
    if value == 0.0:
        raise ValueError("softcap must be > 0 (the cap c in c*tanh(x/c)) or None; got 0.0.")
    return value


def check_ignore_index(ignore_index) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(
            f"ignore_index must be a Python int; got {ignore_index!r} of type "
            f"{type(ignore_index).__name__}."
        )
    return int(ignore_index)


def check_options(axis: int, reduction, label_smoothing, z_loss, softcap) -> tuple[Options, str]:
    """Checks the scalar options every public loss shares; the first bad one raises.

    The order is label_smoothing, z_loss, softcap, reduction: the public wrappers' order.

    Args:
      axis: the kernels' class axis, already checked (non-negative).
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.
      label_smoothing: a Python real in [0, 1].
      z_loss: a Python real >= 0.
      softcap: None or a Python real > 0.

    Returns:
      ``(Options(axis, label_smoothing, z_loss, softcap), reduction)``, the numbers as floats.

    Raises:
      TypeError: label_smoothing, z_loss or softcap not a Python real (a bool or an array).
      ValueError: one of them out of range, or an unknown reduction.
    """
    opts = Options(
        axis=axis,
        label_smoothing=real_option(label_smoothing, "label_smoothing", low=0.0, high=1.0),
        z_loss=real_option(z_loss, "z_loss", low=0.0),
        softcap=check_softcap(softcap),
    )
    return opts, check_reduction(reduction)


def check_logits_labels(logits: jax.Array, labels: jax.Array, axis) -> Spec:
    """Checks dtypes, the class axis and the labels' shape; says which label kind they are."""
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"logits must have a floating dtype; got {logits.dtype}. "
            f"Cast them, e.g. logits.astype(jnp.float32)."
        )
    if logits.ndim == 0:
        raise ValueError(
            "logits must have at least one dimension (the class axis); got a scalar. "
            "Pass an array of shape (num_classes,) or (..., num_classes)."
        )
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be a Python int; got {axis!r} of type {type(axis).__name__}.")
    if not -logits.ndim <= axis < logits.ndim:
        raise ValueError(
            f"axis={axis} is out of range for logits of shape {logits.shape} "
            f"(ndim {logits.ndim}); use an axis in [{-logits.ndim}, {logits.ndim})."
        )
    axis = int(axis) % logits.ndim
    num_classes = logits.shape[axis]
    if num_classes == 0:
        raise ValueError(
            f"logits has 0 classes along axis {axis} (shape {logits.shape}); "
            f"cross-entropy needs at least one class."
        )
    batch_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != batch_shape:
            raise ValueError(
                f"labels of integer dtype are class indices and must have the logits' shape "
                f"without the class axis, {batch_shape}; got {labels.shape} (logits "
                f"{logits.shape}, axis={axis}). For probabilities, pass a floating array of "
                f"shape {logits.shape}."
            )
        soft = False
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        if labels.shape != logits.shape:
            raise ValueError(
                f"labels of floating dtype are class probabilities and must have the logits' "
                f"shape {logits.shape}; got {labels.shape}. For class indices, pass an integer "
                f"array of shape {batch_shape}."
            )
        soft = True
    else:
        raise TypeError(
            f"labels must be integer class indices or floating probabilities; got dtype "
            f"{labels.dtype}. Cast them, e.g. labels.astype(jnp.int32)."
        )
    return Spec(axis, num_classes, soft, batch_shape)


def check_weight(weight, num_classes: int) -> jax.Array | None:
    if weight is None:
        return None
    weight = as_array(weight, "weight")
    if not jnp.issubdtype(weight.dtype, jnp.floating):
        raise TypeError(
            f"weight must have a floating dtype; got {weight.dtype}. "
            f"Cast it, e.g. weight.astype(jnp.float32)."
        )
    if weight.shape != (num_classes,):
        raise ValueError(
            f"weight must have shape (num_classes,) = ({num_classes},); got {weight.shape}. "
            f"Pass one weight per class."
        )
    return weight


def check_where(where, batch_shape: tuple[int, ...]) -> jax.Array | None:
    if where is None:
        return None
    where = as_array(where, "where")
    if where.dtype != jnp.bool_:
        raise TypeError(
            f"where must be a boolean mask of examples; got dtype {where.dtype}. "
            f"Pass e.g. where=mask.astype(bool)."
        )
    try:
        np.broadcast_shapes(where.shape, batch_shape)
        fits = np.broadcast_shapes(where.shape, batch_shape) == batch_shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"where must broadcast to the examples' shape {batch_shape} (the logits' shape "
            f"without the class axis); got {where.shape}."
        )
    return jnp.broadcast_to(where, batch_shape)
