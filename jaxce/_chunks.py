"""Loops over equal windows of rows or classes, and the slices and products they take.

The fused linear loss's sweeps walk the rows or the classes in chunks of one size (one traced
loop body); each chunk slices the kernel and multiplies with ``preferred_element_type`` set
to the compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxce._vma import vary_over


def for_chunks(total: int, chunk: int, step, carry, *, vary: frozenset):
    """Runs ``step(carry, offset, size, new)`` over windows of ``size = min(chunk, total)``
    entries covering [0, total).

    ``vary``: the mesh axes (inside ``jax.shard_map``) the step's inputs vary over, which its
    carry then varies over too, from the first window on (a scan's carry keeps one type).

    Every window has the same size, so one traced body serves them all (a scan; a ragged
    remainder would need a second copy of the body, and twice the compile time). When
    ``chunk`` does not divide ``total``, the last window ends at ``total`` and so starts inside
    its predecessor; ``new`` (bool, (size,)) then marks the entries of each window not covered
    before, which ``step`` must count once. ``new`` is None when no window overlaps.
    """
    if total == 0:
        return carry
    if vary:
        typed = lambda tree: jax.tree.map(lambda x: vary_over(x, vary), tree)
        carry, inner = typed(carry), step
        step = lambda c, *window: typed(inner(c, *window))
    size = min(chunk, total)
    count, rest = -(-total // size), total % size
    if count == 1:
        return step(carry, 0, size, None)
    starts = jnp.arange(count, dtype=jnp.int32) * size
    if not rest:
        body = lambda c, start: (step(c, start, size, None), None)
        carry, _ = lax.scan(body, carry, starts)
        return carry
    offsets = jnp.minimum(starts, total - size)
    window = jnp.arange(size, dtype=jnp.int32)

    def body(c, xs):
        offset, start = xs
        return step(c, offset, size, window >= start - offset), None

    carry, _ = lax.scan(body, carry, (offsets, starts))
    return carry


def is_16bit(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize == 2


def for_kernel_chunks(total: int, chunk: int, step, carry, kernel, *, vary: frozenset):
    """``for_chunks`` with ``step(carry, kernel, offset, size, new)``, for loops that slice
    the kernel.

    XLA:CPU computes a dynamic slice of a float16/bfloat16 array in float32: it converts the
    whole operand, and hoists that conversion out of the loop, a float32 copy of the whole
    kernel alive through the sweep. A 16-bit kernel therefore travels through the loop behind
    an optimization barrier, so that each step converts only the columns it slices.
    """
    if not is_16bit(kernel.dtype):
        return for_chunks(total, chunk, lambda c, *w: step(c, kernel, *w), carry, vary=vary)

    def body(c, offset, size, new):
        pinned = lax.optimization_barrier(c[1])
        return step(c[0], pinned, offset, size, new), pinned

    return for_chunks(total, chunk, body, (carry, kernel), vary=vary)[0]


def along(mask, axis: int, ndim: int):
    """A (size,) mask shaped to broadcast along ``axis`` of an ``ndim``-axis array."""
    shape = [1] * ndim
    shape[axis] = mask.shape[0]
    return mask.reshape(shape)


def dot(a, b, contract_a, contract_b, ct):
    dims = ((tuple(contract_a), tuple(contract_b)), ((), ()))
    return lax.dot_general(a, b, dims, preferred_element_type=ct)


def cols(array, offset, size, axis):
    return lax.dynamic_slice_in_dim(array, offset, size, axis=axis)
