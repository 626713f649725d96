"""The chunked linear + cross-entropy kernel: cross_entropy(hidden @ kernel + bias) in chunks.

The classes are processed in chunks of ``chunk`` columns of the kernel. The forward pass keeps
an online log-sum-exp per row (the running maximum ``m`` and the block sums of
``jaxce._blocks``, rebased whenever ``m`` grows) and saves three floats per row. The backward
pass recomputes each chunk's logits, forms its logits gradient with the core kernel's
``index_grad`` and contracts it at once into the gradients of hidden, kernel, bias and weight.
At no point does an array of more than (rows, chunk) logits exist.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxce import _blocks, _kernels

_LOGITS_PER_CHUNK = 1 << 24  # default chunk: at most 16M logits (64 MiB in float32)
_CHUNK_ALIGN = 128


class Static(NamedTuple):
    """Hashable static configuration of one call."""

    opts: _kernels.Options  # axis is 1: chunks are (rows, classes)
    chunk: int


def default_chunk(num_rows: int, num_classes: int) -> int:
    """A multiple of 128 classes with at most ~16M logits per chunk, capped at the classes."""
    chunk = max(_CHUNK_ALIGN, _LOGITS_PER_CHUNK // max(num_rows, 1) // _CHUNK_ALIGN * _CHUNK_ALIGN)
    return min(chunk, num_classes)


def dtypes(hidden, kernel, bias):
    arrays = (hidden, kernel) if bias is None else (hidden, kernel, bias)
    dtypes = [a.dtype for a in arrays]
    return _kernels.compute_dtype(*dtypes), jnp.result_type(*dtypes)


def _slices(kernel, bias, weight, offset, size):
    """Columns [offset, offset + size) of the kernel and the matching bias and weight."""
    cut = functools.partial(lax.dynamic_slice_in_dim, start_index=offset, slice_size=size)
    k = cut(kernel, axis=1)
    return k, None if bias is None else cut(bias), None if weight is None else cut(weight)


def _chunk_logits(static, hidden, k, b, ct):
    """Soft-capped logits of one chunk, (rows, size), accumulated in the compute dtype."""
    x = lax.dot_general(hidden, k, (((1,), (0,)), ((), ())), preferred_element_type=ct)
    if b is not None:
        x = x + b.astype(ct)
    return _kernels.capped(static.opts, x, ct)


def _for_chunks(num_classes: int, chunk: int, step, carry):
    """Runs ``step(carry, offset, size)`` over the full chunks (a scan), then the remainder."""
    full, rest = divmod(num_classes, chunk)
    if full:
        body = lambda c, offset: (step(c, offset, chunk), None)
        carry, _ = lax.scan(body, carry, jnp.arange(full, dtype=jnp.int32) * chunk)
    if rest:
        carry = step(carry, full * chunk, rest)
    return carry


def _row_inputs(labels, weight, num_classes, ct):
    in_range = ((labels >= 0) & (labels < num_classes))[:, None]
    if weight is None:
        return in_range, 1.0, num_classes
    safe = jnp.where(in_range[:, 0], labels, 0)
    w_y = jnp.take(weight.astype(ct), safe)[:, None]
    return in_range, w_y, jnp.sum(weight.astype(ct))


def _forward(static: Static, hidden, kernel, bias, labels, weight, keep):
    ct, _ = dtypes(hidden, kernel, bias)
    opts, (rows, num_classes) = static.opts, (hidden.shape[0], kernel.shape[1])

    def step(carry, offset, size):
        m, sums, w_seen = carry
        k, b, w = _slices(kernel, bias, weight, offset, size)
        xs = _chunk_logits(static, hidden, k, b, ct)
        m_new = jnp.maximum(m, jnp.max(xs, axis=1, keepdims=True))
        delta = jnp.where(m == -jnp.inf, 0, m_new - m)  # sums so far are 0 or +-inf then
        s = xs - jnp.where(m_new == -jnp.inf, 0, m_new)
        seen = ((labels >= 0) & (labels < offset))[:, None].astype(ct)
        new = _blocks.block_sums(opts, s, _blocks.onehot(labels, offset, size), w)
        sums = _blocks.add(_blocks.rebase(sums, delta, seen, w_seen), new)
        w_seen = w_seen + (size if w is None else jnp.sum(w.astype(ct)))
        return m_new, sums, w_seen

    zeros = jnp.zeros((rows, 1), ct)
    sums = _blocks.BlockSums(zeros, zeros, zeros if opts.label_smoothing else None)
    init = (jnp.full((rows, 1), -jnp.inf, ct), sums, jnp.zeros((), ct))
    m, sums, _ = _for_chunks(num_classes, static.chunk, step, init)
    m = jnp.where(m == -jnp.inf, 0, m)
    in_range, w_y, w_sum = _row_inputs(labels, weight, num_classes, ct)
    lse0, smooth, t = _blocks.row_terms(opts, num_classes, w_sum, sums, in_range, w_y)
    loss = _kernels.index_loss(
        opts, num_classes, t, m, lse0, smooth, keep[:, None], weighted=weight is not None
    )
    return loss[:, 0], (m, lse0, t.nll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def linear_rows(static: Static, hidden, kernel, bias, labels, weight, keep):
    """Per-row loss of ``cross_entropy(hidden @ kernel + bias, labels)``; hidden is (N, D)."""
    return _forward(static, hidden, kernel, bias, labels, weight, keep)[0]


def _linear_rows_fwd(static, hidden, kernel, bias, labels, weight, keep):
    loss, rows = _forward(static, hidden, kernel, bias, labels, weight, keep)
    return loss, (hidden, kernel, bias, labels, weight, keep, *rows)


def _linear_rows_bwd(static, res, g):
    hidden, kernel, bias, labels, weight, keep, m, lse0, nll = res
    ct, _ = dtypes(hidden, kernel, bias)
    opts, num_classes = static.opts, kernel.shape[1]
    mm = jnp.result_type(hidden.dtype, kernel.dtype)  # operand dtype of the gradient matmuls
    in_range, w_y, w_sum = _row_inputs(labels, weight, num_classes, ct)
    g, keep = g[:, None].astype(ct), keep[:, None]

    def step(carry, offset, size):
        d_hidden, d_kernel, d_bias, d_weight = carry
        k, b, w = _slices(kernel, bias, weight, offset, size)
        s = _chunk_logits(static, hidden, k, b, ct) - m
        t = _kernels.IndexTerms(None, in_range, _blocks.onehot(labels, offset, size), w_y, nll)
        dx, dw = _kernels.index_grad(opts, num_classes, w_sum, s, m, lse0, t, w, g, keep)
        dxm = dx.astype(mm)
        d_hidden = d_hidden + lax.dot_general(
            dxm, k, (((1,), (1,)), ((), ())), preferred_element_type=ct
        )
        dk = lax.dot_general(hidden, dxm, (((0,), (0,)), ((), ())), preferred_element_type=ct)
        d_kernel = lax.dynamic_update_slice_in_dim(d_kernel, dk.astype(kernel.dtype), offset, 1)
        if d_bias is not None:
            db = jnp.sum(dx, axis=0).astype(bias.dtype)
            d_bias = lax.dynamic_update_slice_in_dim(d_bias, db, offset, 0)
        if d_weight is not None:
            d_weight = lax.dynamic_update_slice_in_dim(d_weight, dw.astype(weight.dtype), offset, 0)
        return d_hidden, d_kernel, d_bias, d_weight

    init = (
        jnp.zeros(hidden.shape, ct),
        jnp.zeros_like(kernel),
        None if bias is None else jnp.zeros_like(bias),
        None if weight is None else jnp.zeros_like(weight),
    )
    d_hidden, d_kernel, d_bias, d_weight = _for_chunks(num_classes, static.chunk, step, init)
    return d_hidden.astype(hidden.dtype), d_kernel, d_bias, None, d_weight, None


linear_rows.defvjp(_linear_rows_fwd, _linear_rows_bwd)
