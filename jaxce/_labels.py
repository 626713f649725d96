"""Class-index labels, exactly, for every integer dtype and with x64 on or off.

``normalize`` (traced) turns labels of any integer dtype into the kernels' form: an int32 class
index, -1 where the label is not a class in [0, C), and a mask of the labels equal to
``ignore_index``. Every comparison is exact: an ``ignore_index`` the labels' dtype cannot hold
(-100 for uint8 labels, 2**40 for int32 ones) matches no label, and a label outside int32 is
out of range, never wrapped to a class.

``prepare`` (in the public wrapper) checks concrete labels' values on the array as given,
before any conversion (a numpy int64 2**32 + 1 is out of range even with x64 off, where JAX
would truncate it to 1), converts them without changing a value, and, for traced labels with
``check_labels``, adds the opt-in ``checkify`` check (reported only under
``checkify.checkify``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def _holds(dtype, value: int) -> bool:
    info = jnp.iinfo(dtype)
    return int(info.min) <= value <= int(info.max)


# Without a class count (``mean_divisor`` without ``weight``) a label is a class index if int32,
# the kernels' index dtype, holds it.
_NO_COUNT = int(np.iinfo(np.int32).max) + 1


def normalize(labels: jax.Array, num_classes: int | None, ignore_index: int):
    """(index, ignored): int32 class indices (-1: not in [0, num_classes)), bool mask.

    ``num_classes=None``: the class count is not known, and any label int32 holds is a class.
    """
    dtype = labels.dtype
    num_classes = _NO_COUNT if num_classes is None else num_classes
    if _holds(dtype, ignore_index):
        ignored = labels == jnp.asarray(ignore_index, dtype)
    else:
        ignored = jnp.zeros(labels.shape, bool)
    if num_classes == 0:
        in_range = jnp.zeros(labels.shape, bool)
    else:
        in_range = (labels >= 0) & (labels <= min(num_classes - 1, int(jnp.iinfo(dtype).max)))
    index = jnp.where(in_range, labels.astype(jnp.int32), -1)
    return index, ignored


def _message(
    num_classes: int | None, ignore_index: int, dtype, name: str = "labels"
) -> tuple[str, str]:
    """The message's rule and its notes (0 classes, an ignore_index the dtype cannot hold)."""
    classes = "int32 class indices (>= 0)" if num_classes is None else (
        f"class indices in [0, {num_classes})"
    )  # fmt: skip
    text = f"{name} must be {classes} or ignore_index={ignore_index}"
    notes = []
    if num_classes == 0:
        notes.append("there are 0 classes, so every label must be ignore_index")
    if not _holds(dtype, ignore_index):
        notes.append(f"{dtype} labels cannot hold ignore_index={ignore_index}: none is ignored")
    return text, "" if not notes else f" ({'; '.join(notes)})"


def prepare(
    labels, num_classes: int | None, ignore_index: int, *, check_traced: bool, name="labels"
):
    """Checks and converts class-index labels; returns ``(jax labels, ignore_index)``.

    ``labels`` is a JAX array or an unconverted numpy array of an integer dtype. Concrete
    values outside [0, num_classes) that are not ``ignore_index`` raise ``ValueError`` naming
    the first one and its position (``num_classes=None``: outside int32's non-negative range).
    The returned ``ignore_index`` differs from the given one only when 64-bit labels had to be
    narrowed (x64 off): then -1 marks the ignored labels.
    """
    dtype = np.dtype(labels.dtype)
    if isinstance(labels, jax.core.Tracer):
        if check_traced:
            _checkify(labels, num_classes, ignore_index, name)
        return labels, ignore_index
    wide = np.uint64 if jnp.issubdtype(dtype, jnp.unsignedinteger) else np.int64
    values = np.asarray(labels).astype(wide)  # lossless, also for int4 / int2
    ignored = values == ignore_index  # numpy compares Python ints exactly
    limit = _NO_COUNT if num_classes is None else num_classes
    bad = ~ignored & ((values < 0) | (values >= limit))
    if bad.any():
        where = tuple(int(i[0]) for i in np.nonzero(np.atleast_1d(bad)))
        values = np.atleast_1d(values)
        text, notes = _message(num_classes, ignore_index, dtype, name)
        raise ValueError(
            f"{text}; got {int(values[where])} at position {where} ({int(bad.sum())} such "
            f"label(s) in all){notes}. Fix the labels, or set ignore_index to the value that "
            f"marks examples to skip."
        )
    if isinstance(labels, jax.Array):
        return labels, ignore_index
    if jax.dtypes.canonicalize_dtype(dtype) == dtype:
        return jnp.asarray(labels), ignore_index
    # 64-bit labels with x64 off: every value is a class (< C, so it fits int32) or ignored.
    if not _holds(np.int32, ignore_index):
        values, ignore_index = np.where(ignored, -1, values), -1
    return jnp.asarray(values.astype(np.int32)), ignore_index


def _checkify(labels: jax.Array, num_classes: int, ignore_index: int, name: str) -> None:
    """The opt-in check of traced labels, reported by ``jax.experimental.checkify``.

    A debug check: under ``checkify.checkify`` it is functionalized and reports the first bad
    label; without it (a plain ``jit``, where no check can stop the program) it is dropped, and
    a bad label's loss and gradient are NaN, as with ``check_labels=False``.
    """
    index, ignored = normalize(labels, num_classes, ignore_index)
    bad = ~ignored & (index < 0)
    first = jnp.argmax(bad.ravel())
    text, notes = _message(num_classes, ignore_index, labels.dtype, name)
    checkify.check(
        ~jnp.any(bad),
        text + "; got {} at flat position {}" + notes,
        labels.ravel()[first],
        first,
        debug=True,
    )
