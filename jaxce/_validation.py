"""Static argument checks shared by the public wrappers.

Everything here runs once, at trace time, in the public wrapper, on Python options, shapes and
dtypes (and, for concrete class weights, their values), before any compiled work. Each error
names the argument, the value it got and the fix. Label values are checked in
``jaxce._labels``, the real options (``label_smoothing``, ``z_loss``, ``softcap``) in
``jaxce._options``.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxce._options import static_fix

REDUCTIONS = ("none", "mean", "sum")
Reduction = Literal["none", "mean", "sum"]
_NUMERIC_KINDS = "biufc"  # numpy dtype kinds: bool, signed, unsigned, floating, complex


class Spec(NamedTuple):
    """The validated, static description of one cross-entropy call."""

    axis: int  # non-negative class axis of ``logits``
    num_classes: int  # the logits' size along ``axis`` (padding included)
    soft_labels: bool  # True: ``labels`` are probabilities; False: class indices
    batch_shape: tuple[int, ...]  # logits' shape without the class axis


def as_unconverted(value, name: str) -> jax.Array | np.ndarray:
    """A JAX array as it is, anything array-like as a numpy array (its values not converted)."""
    if isinstance(value, jax.Array):
        return value
    if not isinstance(value, (np.ndarray, np.generic, numbers.Number, list, tuple)):
        raise TypeError(
            f"{name} must be a jax.Array or numpy array; got {type(value).__name__}. "
            f"Convert it first, e.g. jnp.asarray({name})."
        )
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise TypeError(
            f"{name} must be an array; got a {type(value).__name__} that numpy cannot "
            f"convert to one ({err}). Pass a rectangular array of numbers."
        ) from None
    if not array.dtype.isnative:  # big-endian data (a file's byte order): JAX takes native
        array = array.astype(array.dtype.newbyteorder("="))
    numeric = array.dtype.kind in _NUMERIC_KINDS or jnp.issubdtype(array.dtype, jnp.number)
    if not numeric:  # (ml_dtypes' bfloat16, int4, ... are numbers of numpy kind "V")
        why = " (an element that is not a number, or an int beyond 64 bits)"
        raise TypeError(
            f"{name} must be an array of numbers; got a {type(value).__name__} of dtype "
            f"{array.dtype}{why if array.dtype.kind == 'O' else ''}. Pass a numeric array."
        )
    return array


def as_array(value, name: str) -> jax.Array:
    """Converts array-likes to JAX arrays, rejecting objects that are not arrays of numbers."""
    array = as_unconverted(value, name)
    try:
        return jnp.asarray(array)
    except TypeError:
        raise TypeError(
            f"{name} has dtype {array.dtype}, which JAX does not support. Cast it first, e.g. "
            f"{name}.astype(np.float32) or .astype(np.int32)."
        ) from None


def check_reduction(reduction) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}."
        )
    return str(reduction)


def check_ignore_index(ignore_index, labels=None, labels_name: str = "labels") -> int:
    """Any Python (or numpy) int; one the labels' dtype cannot hold matches no label.

    Given ``labels`` that are probabilities (floating), only the default -100 is accepted.
    """
    index = check_int(ignore_index, "ignore_index", "It is static: pass a number, e.g. int(x).")
    if labels is not None and jnp.issubdtype(labels.dtype, jnp.floating) and index != -100:
        raise ValueError(
            f"ignore_index={index} applies to class indices only, but {labels_name} are "
            f"probabilities (dtype {labels.dtype}). Drop examples with where= instead."
        )
    return index


def check_flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{name} must be True or False; got {value!r} of type {type(value).__name__}. "
            + static_fix(value, "Pass a Python bool.")
        )
    return bool(value)


def check_int(value, name: str, fix: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a Python int; got {value!r} of type {type(value).__name__}. "
            + static_fix(value, fix)
        )
    return int(value)


def check_num_classes(num_classes, available: int, where: str) -> int:
    """The true class count of a padded class axis (``available`` entries), or all of them."""
    if num_classes is None:
        return available
    count = check_int(num_classes, "num_classes", "Pass the true class count, or None.")
    if not 0 <= count <= available:
        raise ValueError(
            f"num_classes must be in [0, {available}] (the size of the {where}); got {count}. "
            f"Pass the number of real classes (those before the padding), or None for all."
        )
    return count


def check_logits_labels(
    logits: jax.Array, labels, axis, names=("logits", "labels"), *, axis_option: bool = True
) -> Spec:
    """Checks dtypes, the class axis and the labels' shape; says which label kind they are.

    ``names`` are the two arrays' names in the caller's signature (torch's module: input and
    target), for the messages; ``axis_option``: whether the caller has an ``axis`` option
    (else the messages say the classes are last).
    """
    x, y = names
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"{x} must have a floating dtype; got {logits.dtype}. "
            f"Cast it, e.g. {x}.astype(jnp.float32)."
        )
    check_float_width(logits, x)
    if logits.ndim == 0:
        raise ValueError(
            f"{x} must have at least one dimension (the class axis); got a scalar. "
            "Pass an array of shape (num_classes,) or (..., num_classes)."
        )
    axis = check_int(axis, "axis", "Pass the index of the class axis.")
    if not -logits.ndim <= axis < logits.ndim:
        raise ValueError(
            f"axis={axis} is out of range for {x} of shape {logits.shape} "
            f"(ndim {logits.ndim}); use an axis in [{-logits.ndim}, {logits.ndim})."
        )
    axis = axis % logits.ndim
    if not isinstance(logits.shape[axis], int):  # a jax.export symbolic dimension
        raise ValueError(
            f"the class axis of {x} must have a static size; got the symbolic dimension "
            f"{logits.shape[axis]} in {logits.shape}. Export with a concrete number of classes "
            "(the other dimensions may be symbolic)."
        )
    batch_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
    soft = label_kind(
        labels, y, indices=batch_shape, probs=logits.shape,
        indices_as=f"the shape of {x} without the class axis, {batch_shape}",
        probs_as=f"the shape of {x}, {logits.shape}",
        note=f" ({x} {logits.shape}, " + (f"axis={axis})" if axis_option else "classes last)"),
    )  # fmt: skip
    return Spec(axis, logits.shape[axis], soft, batch_shape)


def label_kind(labels, name: str, *, indices, probs, indices_as: str, probs_as: str,
               note: str = "") -> bool:  # fmt: skip
    """Whether ``labels`` are probabilities (floating, shape ``probs``), not class indices.

    Class indices are integer, of shape ``indices``; the errors state the expected shapes as
    ``indices_as`` and ``probs_as`` put them.
    """
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != indices:
            raise ValueError(
                f"{name} of integer dtype are class indices and must have {indices_as}; got "
                f"{labels.shape}{note}. For probabilities, pass a floating array of shape {probs}."
            )
        return False
    if jnp.issubdtype(labels.dtype, jnp.floating):
        check_float_width(labels, name)
        if labels.shape != probs:
            raise ValueError(
                f"{name} of floating dtype are class probabilities and must have {probs_as}; got "
                f"{labels.shape}. For class indices, pass an integer array of shape {indices}."
            )
        return True
    raise TypeError(
        f"{name} must be integer class indices or floating probabilities; got dtype "
        f"{labels.dtype}. Cast them, e.g. {name}.astype(jnp.int32)."
    )


def check_floating(array, name: str) -> None:
    """Raises TypeError unless ``array`` (named ``name``) has a floating dtype of 16+ bits."""
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating dtype; got {array.dtype}. "
            f"Cast it, e.g. {name}.astype(jnp.float32)."
        )
    check_float_width(array, name)


def check_float_width(array, name: str) -> None:
    """Raises TypeError for the 8- and 4-bit floats (float8_*, float4_*), which no loss takes."""
    if jnp.dtype(array.dtype).itemsize < 2:
        raise TypeError(
            f"{name} has dtype {array.dtype}; 8-bit and 4-bit floats are not supported. Cast "
            f"it to bfloat16, float16 or float32 first, e.g. {name}.astype(jnp.bfloat16)."
        )


def check_class_vector(
    value, name: str, num_classes: int, hint: str, *, finite: bool = True, compute=None
) -> jax.Array | None:
    """A floating (C,) vector (class weights, a bias), or None.

    With ``finite`` (class weights), concrete values must be finite, and fit ``compute`` (the
    loss's compute dtype, if given: float64 weights of a float32 loss); traced ones cannot be
    checked, and a NaN or inf there propagates to the loss.
    """
    if value is None:
        return None
    vector = as_unconverted(value, name)  # checked as given: 1e300 in float64 is not inf
    check_floating(vector, name)
    if vector.shape != (num_classes,):
        raise ValueError(
            f"{name} must have shape (num_classes,) = ({num_classes},); got {vector.shape}. {hint}"
        )
    if finite and not isinstance(vector, jax.core.Tracer):
        values = np.asarray(vector, np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{name} must be finite; got {values[i]} at position {i} ({int(bad.sum())} "
                f"non-finite value(s) in all). Pass finite numbers (a weight of 0 drops a class)."
            )
        held = jax.dtypes.canonicalize_dtype(vector.dtype)  # float32 for float64 without x64
        dtype = held if compute is None else compute
        for limit, what in ((held, "as JAX holds it"), (dtype, "the dtype the loss computes in")):
            big = np.abs(values) > float(jnp.finfo(jnp.promote_types(limit, jnp.float32)).max)
            if big.any():
                i = int(np.argmax(big))
                raise ValueError(
                    f"{name} must fit {jnp.dtype(limit).name}, {what}; got {values[i]} at "
                    f"position {i}. Scale the weights down (a mean does not change)."
                )
        check_normal(values, name, dtype)
    return as_array(vector, name)


def check_normal(values: np.ndarray, name: str, dtype, *, zero: bool = True) -> None:
    """A ValueError for a nonzero weight too small for the dtype it is computed in (float32 for
    half types): XLA flushes such subnormal numbers to 0, which would turn a divisor into 0."""
    tiny = float(jnp.finfo(jnp.promote_types(dtype, jnp.float32)).tiny)
    bad = (values != 0) & (np.abs(values) < tiny)
    if bad.any():
        i = tuple(int(j[0]) for j in np.nonzero(np.atleast_1d(bad)))
        at = "" if values.ndim == 0 else f" at position {i[0] if len(i) == 1 else i}"
        raise ValueError(
            f"{name} must be {'0 or ' if zero else ''}at least {tiny:.3g} in magnitude; got "
            f"{np.atleast_1d(values)[i]}{at}, which XLA flushes to 0. Scale the weights up (a "
            f"mean does not change)."
        )


def check_where(where, batch_shape: tuple[int, ...]) -> jax.Array | None:
    if where is None:
        return None
    where = as_array(where, "where")
    if where.dtype != jnp.bool_:
        raise TypeError(
            f"where must be a boolean mask of examples; got dtype {where.dtype}. "
            f"Pass e.g. where=mask.astype(bool)."
        )
    check_broadcasts(where, "where", batch_shape, "the logits' shape without the class axis")
    return jnp.broadcast_to(where, batch_shape)


def check_broadcasts(array, name: str, shape: tuple[int, ...], what: str) -> None:
    """A ValueError unless ``array`` broadcasts to the examples' ``shape`` (``what`` they are)."""
    try:
        fits = np.broadcast_shapes(array.shape, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} must broadcast to the examples' shape {shape} ({what}); got {array.shape}."
        )


@contextlib.contextmanager
def reverse_mode_only(name: str, fix: str):
    """Turns JAX's error for forward-mode autodiff through a custom VJP into one naming ``fix``.

    Reverse mode (``jax.grad``, ``jax.vjp``, ``jax.jacrev``, and ``jax.hessian``, which is
    forward over reverse) is unaffected.
    """
    try:
        yield
    except TypeError as err:
        if "forward-mode autodiff" not in str(err) or "custom_vjp" not in str(err):
            raise
        raise TypeError(
            f"{name} has a custom VJP: it supports reverse-mode autodiff (jax.grad, jax.vjp, "
            f"jax.jacrev, and jax.hessian, forward over reverse) but not forward-mode autodiff "
            f"of the loss itself (jax.jvp, jax.jacfwd). {fix}"
        ) from None
