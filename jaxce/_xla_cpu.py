"""XLA:CPU's fast forms of the row reductions (chosen only by ``jaxce._reductions``).

Everything in this module exists because of how XLA:CPU compiles row reductions, measured on
the 2-core benchmark machine (``python -m benchmarks._profile --reductions`` and ``--shape
NxC``). It computes exactly what the textbook forms in ``jaxce._reductions`` compute; delete
it, and the switch there, when XLA:CPU no longer needs it.

- ``sum(exp(x - m))`` over rows of up to 32768 classes runs at about 0.25 ns per element, over
  rows of 65536 or more at about 2.5 ns (10x slower): the fused exponential leaves the
  vectorised path. So the classes are split into ``k`` equal parts of at most
  ``CPU_ROW_LIMIT`` and the row terms combined from per-part maxima ``m_j`` and sums
  ``se_j = sum(exp(x - m_j))``: ``lse0 = log(sum_j se_j * exp(m_j - m))``.
- Up to ``CPU_ROW_LIMIT`` classes, where the gradient follows (``shared_row_stats``), the
  forward writes ``exp(xs - m)`` once (kept out of the sum's fusion by a barrier) and the
  backward's ``softmax`` multiplies that same array by ``exp(-lse0)``: one exponential pass
  per step instead of two, for one more write and read of the logits. On these 2-core hosts
  that is the faster step (4096x32768: 92-100 ms against 148-250 recomputing ``exp``; a row
  reduction with elementwise work fused before it takes 25-29 ms there, a bare sum 9-10, a
  copy 18; jax 0.10.2, where XLA:CPU runs row reductions as YNN fusions). The earlier form for
  2048 to 32768 classes (the reshape below, keeping ``xs - m`` unshared: two exponential passes) was
  1.2x optax's step at 4096x32768 on an AMD EPYC with 512 KiB L2 and 32 MiB L3 and on an
  Intel Xeon with 300 MiB L3, while it had been 0.83x on the AMD host it was tuned on; with the
  shared exponential the step takes 119 ms there against optax's 137 and autodiff's 122
  (``python -m benchmarks.loss``, the first AMD host); with label smoothing 181 -> 137 ms,
  with probability targets 217 -> 143 ms. A loss value alone (``row_stats``, no gradient)
  writes nothing: the textbook form.
- Beyond ``CPU_ROW_LIMIT`` the split rows keep ``xs - m`` from being shared with the backward
  pass (shared, XLA writes it out as a [rows, classes] temporary); forward and backward make
  three reads and one write of the logits.
- A loss value alone for probability targets (``target_value``): XLA:CPU fuses the row
  maximum, the sum of exp and the target sum ``sum(q * (lse0 - s))`` into one kernel, one
  pass over the logits and targets (as it does optax's ``softmax_cross_entropy``), but only if
  no other computation reads ``m`` or ``lse0`` and no select sits between them: a select on
  the maximum (the old ``m == -inf`` guard), a guard inside the sum, or ``m`` and ``lse0``
  read elsewhere split it into passes and write ``xs - m`` out. So the maximum starts from the
  lowest finite value instead of a select, the ``0 * inf`` guard is a fallback after the sum,
  and the statistics are computed inside. With probability targets the forward took 1.96x
  optax's time at 8192x1000 and 1.41x at 4096x32768 before, 0.84x and 0.91x after
  (``python -m benchmarks.loss --targets probs --settings forward``, AMD EPYC, 2 cores).
- Every other row sum is formed on the parts view (at least two parts, so it is not merged
  with the row statistics' reduction into one slow fusion) and has no elementwise select
  inside (``target_sum`` runs its guarded form only when needed).

Numerics: every ``se_j`` lies in [1, C / k] (0 for a part of only -inf) and every factor
``exp(m_j - m)`` in [0, 1], so the combination adds at most one rounding per part to the
textbook sum.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

CPU_ROW_LIMIT = 32768  # longest row XLA:CPU reduces with a fused exp at full speed
_MAX_PARTS = 64  # beyond this (a large prime C), one part: correct, slower on CPU


def row_stats(xs: jax.Array, axis: int, *, textbook) -> tuple[jax.Array, jax.Array]:
    """(m, lse0) for a loss value alone: ``textbook(xs, axis)``, split beyond the row limit."""
    if xs.shape[axis] > CPU_ROW_LIMIT:
        return split(xs, axis)
    return textbook(xs, axis)


def shared_row_stats(xs: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """(m, lse0) for a loss whose gradient follows: ``exp(xs - m)`` written once and shared
    with ``softmax``, split beyond the row limit."""
    if xs.shape[axis] > CPU_ROW_LIMIT:
        return split(xs, axis)
    return _shared_exp(xs, axis)


def softmax(s: jax.Array, lse0: jax.Array, axis: int) -> jax.Array:
    """``exp(s - lse0)``; up to the row limit ``exp(s) * exp(-lse0)``, sharing the forward's exp.

    ``exp(s)`` is the very expression ``_shared_exp`` summed: under one jit of forward and
    backward XLA computes it once. Both factors lie in (0, 1], so the product is within a few
    ulp of ``exp(s - lse0)``.
    """
    if s.shape[axis] > CPU_ROW_LIMIT:
        return jnp.exp(s - lse0)
    return jnp.exp(s) * lax.optimization_barrier(jnp.exp(-lse0))


def shifted_sum(xs: jax.Array, m: jax.Array, axis: int) -> jax.Array:
    """``sum(xs - m)`` along ``axis`` (reduced away) formed on the parts view: the reduction
    stays on the fast path. The parts are added without the class axis (see ``_add_parts``)."""
    axis = axis % xs.ndim
    parts, k = _parts_view(xs, axis, at_least=2)
    per_part = jnp.sum(parts - jnp.expand_dims(m, axis + 1), axis=axis + 1)
    return _add_parts(per_part, axis, k, keepdims=False)


def target_sum(q, xs, m, axis: int, *, guarded):
    """``sum(q * (xs - m))`` unguarded on the parts view; ``guarded`` only if a row is NaN.

    The guard against ``0 * -inf`` (a select) keeps XLA:CPU from fusing the reduction, which
    then writes (N, C) temporaries; so the unguarded sum runs first, and ``guarded(q, xs, m)``
    only when a row came out NaN (a zero target on a -inf logit, or NaN inputs).
    """
    axis = axis % xs.ndim
    q_parts, k = _parts_view(q, axis, at_least=2)
    x_parts, _ = _parts_view(xs, axis, at_least=2)
    per_part = jnp.sum(q_parts * (x_parts - jnp.expand_dims(m, axis + 1)), axis=axis + 1)
    fast = _add_parts(per_part, axis, k)
    return lax.cond(jnp.any(jnp.isnan(fast)), guarded, lambda q, xs, m: fast, q, xs, m)


def target_value(q, logits, axis: int, *, cap, fallback):
    """``sum(q * (lse0 - (xs - m)))`` per row of ``xs = cap(logits)`` (the class axis reduced
    away), with the row statistics computed inside: one pass over the logits and targets.

    XLA:CPU compiles the maximum, the sum of exp and this target sum into one fused kernel
    when nothing else reads ``m`` or ``lse0``; read elsewhere, they split it into passes with
    an (N, C) temporary of ``xs - m``. Rows longer than ``CPU_ROW_LIMIT`` (see ``split``), and
    any row that comes out NaN (a zero target on a -inf logit is ``0 * inf`` here), take
    ``fallback(q, logits)``, the guarded form from the row statistics.
    """
    if logits.shape[axis] > CPU_ROW_LIMIT:
        return fallback(q, logits)
    xs = cap(logits)
    m = _row_max(xs, axis)
    lse0 = jnp.log(jnp.sum(jnp.exp(xs - m), axis=axis, keepdims=True))
    fast = jnp.sum(q * (lse0 - (xs - m)), axis=axis)
    return lax.cond(jnp.any(jnp.isnan(fast)), fallback, lambda q, logits: fast, q, logits)


def num_parts(num_classes: int) -> int:
    """The fewest equal parts of at most ``CPU_ROW_LIMIT`` classes (1 if none up to 64 divide)."""
    first = -(-num_classes // CPU_ROW_LIMIT)
    return next((k for k in range(first, _MAX_PARTS + 1) if num_classes % k == 0), 1)


def _parts_view(xs: jax.Array, axis: int, at_least: int = 1) -> tuple[jax.Array, int]:
    """``xs`` reshaped to (..., k, C / k, ...) along ``axis`` (non-negative), and ``k``.

    ``at_least=2`` splits even rows that would fit in one part in two, so that the view's shape
    differs from ``row_stats``'s and XLA does not merge the two reductions into one fusion
    (which XLA:CPU runs on its slow path).
    """
    num_classes = xs.shape[axis]
    k = num_parts(num_classes)
    if k < at_least and num_classes % at_least == 0:
        k = at_least
    return xs.reshape((*xs.shape[:axis], k, num_classes // k, *xs.shape[axis + 1 :])), k


def _add_parts(per_part: jax.Array, axis: int, k: int, keepdims: bool = True) -> jax.Array:
    """Sums the k entries along ``axis`` one by one, keeping ``axis`` at size 1 (``keepdims``).

    Not ``jnp.sum``: XLA would fold a sum over parts back into one long reduction. Without
    ``keepdims`` the additions run on rows without the class axis, which XLA:CPU runs faster
    when they fuse into the reduction (see ``jaxce._dense_vjp._rows``).
    """
    pieces = [lax.index_in_dim(per_part, j, axis, keepdims=keepdims) for j in range(k)]
    return functools.reduce(jnp.add, pieces)


def _row_max(xs: jax.Array, axis: int) -> jax.Array:
    """``jaxce._reductions.row_max`` (which imports this module): the maximum along ``axis``,
    at least the dtype's lowest finite value (a row of only -inf: ``xs - m`` stays -inf)."""
    return jnp.max(xs, axis=axis, keepdims=True, initial=jnp.finfo(xs.dtype).min)


def _shared_exp(xs: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """The textbook form with ``exp(xs - m)`` kept out of the reduction's fusion (softmax)."""
    m = _row_max(xs, axis)
    e = lax.optimization_barrier(jnp.exp(xs - m))
    return m, jnp.log(jnp.sum(e, axis=axis, keepdims=True))


def split(xs: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """(m, lse0) from per-part maxima and sums of ``num_parts`` equal parts of each row."""
    axis = axis % xs.ndim
    parts, k = _parts_view(xs, axis)
    m_j = _row_max(parts, axis + 1)
    se_j = jnp.sum(jnp.exp(parts - m_j), axis=axis + 1)  # 0: a part of only -inf
    m = jnp.max(m_j, axis=axis, keepdims=True)
    m_j, m = jnp.squeeze(m_j, axis + 1), jnp.squeeze(m, axis + 1)
    return m, jnp.log(_add_parts(se_j * jnp.exp(m_j - m), axis, k))  # -inf part: 0 * 0
