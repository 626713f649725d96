"""Checks of class-index values: eager (concrete arrays) and opt-in under jit (checkify)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def _is_concrete(array: jax.Array) -> bool:
    return not isinstance(array, jax.core.Tracer)


def check_label_values(labels: jax.Array, num_classes: int, ignore_index: int, *, jit_check: bool):
    """Raises on class indices outside [0, num_classes) that are not ``ignore_index``.

    Concrete labels (an eager call) are checked here, in Python. Traced labels are checked only
    when ``jit_check`` is set, through ``checkify.check``: the caller must then be wrapped in
    ``jax.experimental.checkify.checkify`` (``errors=checkify.user_checks``).
    """
    if _is_concrete(labels):
        values = np.asarray(labels)
        bad = (values != ignore_index) & ((values < 0) | (values >= num_classes))
        if bad.any():
            where = tuple(int(i[0]) for i in np.nonzero(bad))
            raise ValueError(
                f"labels must be class indices in [0, {num_classes}) or ignore_index="
                f"{ignore_index}; got {values[where]} at position {where} "
                f"({int(bad.sum())} such label(s) in all). Fix the labels, or set ignore_index "
                f"to the value that marks examples to skip."
            )
    elif jit_check:
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
        first = jnp.argmax(bad.ravel())
        checkify.check(
            ~jnp.any(bad),
            f"labels must be class indices in [0, {num_classes}) or ignore_index={ignore_index};"
            " got {} at flat position {}",
            labels.ravel()[first],
            first,
        )
