"""Per-example cross-entropy with a lean custom VJP.

Both kernels return one loss per example (the class axis reduced away) in the compute dtype
(float32, or float64 for float64 inputs). They save O(rows) residuals, the row maximum and the
shifted log-sum-exp, and rebuild the softmax in the backward pass, so the gradient is
``coef * softmax - target`` without a saved [rows, classes] copy.

Notation along the class axis (C classes), with ``xs = softcap(x)``:
``m = max(xs)``, ``s = xs - m``, ``lse0 = log(sum(exp(s)))``, so ``-log p = lse0 - s``.
Every formula is written in shifted terms, which keeps |x| up to 3e4 accurate in float32.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxce._row_stats import row_stats, shifted_sum, softmax, target_sum


class Options(NamedTuple):
    """Static options of a kernel call (hashable, so they can be jit/VJP static arguments)."""

    axis: int
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None


def compute_dtype(*dtypes) -> jnp.dtype:
    """float64 when any input is float64, else float32 (fp16/bf16 accumulate in float32)."""
    return jnp.dtype(jnp.promote_types(jnp.float32, jnp.result_type(*dtypes)))


def _class_vector(vector: jax.Array, axis: int, ndim: int) -> jax.Array:
    """Reshapes a (C,) vector to broadcast along ``axis`` of an ndim-dimensional array."""
    shape = [1] * ndim
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)


def capped(opts: Options, logits: jax.Array, ct) -> jax.Array:
    """The logits in the compute dtype, soft-capped when ``opts.softcap`` is set."""
    xs = logits.astype(ct)
    if opts.softcap is not None:
        xs = opts.softcap * jnp.tanh(xs / opts.softcap)
    return xs


def _capped_stats(opts: Options, logits, ct, autodiff) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (xs, m, lse0): soft-capped logits, row max and shifted log-sum-exp.

    ``autodiff``: the caller is differentiated by plain autodiff (see ``row_stats``).
    """
    xs = capped(opts, logits, ct)
    return xs, *row_stats(xs, opts.axis, autodiff=autodiff)


def _softcap_slope(opts: Options, s: jax.Array, m: jax.Array) -> jax.Array | float:
    """d softcap(x) / dx = 1 - (softcap(x) / c)^2, from the capped logits."""
    if opts.softcap is None:
        return 1.0
    return 1 - jnp.square((s + m) / opts.softcap)


def _neg_log_p(lse0: jax.Array, s: jax.Array, coef: jax.Array | None) -> jax.Array:
    """-log p, with 0 where its coefficient is 0 and the logit is -inf (0 * log 0 = 0)."""
    d = lse0 - s
    if coef is None:
        return d
    return jnp.where((coef == 0) & (d == jnp.inf), 0, d)


class IndexTerms(NamedTuple):
    y: jax.Array  # labels with the class axis kept (size 1), clipped into range
    in_range: jax.Array  # labels in [0, C)
    onehot: jax.Array  # bool, labels' one-hot along the class axis
    w_y: jax.Array | float  # the label's class weight
    nll: jax.Array  # -log p[label]


def _index_terms(opts, logits, m, lse0, labels, weight, ct) -> IndexTerms:
    num_classes = logits.shape[opts.axis]
    y = jnp.expand_dims(labels, opts.axis)
    in_range = (y >= 0) & (y < num_classes)
    y = jnp.where(in_range, y, 0).astype(jnp.int32)
    onehot = lax.broadcasted_iota(jnp.int32, logits.shape, opts.axis) == y
    s_y = capped(opts, jnp.take_along_axis(logits, y, axis=opts.axis), ct) - m
    w_y = 1.0 if weight is None else jnp.take(weight.astype(ct), y)
    return IndexTerms(y, in_range, onehot, w_y, lse0 - s_y)


def _index_forward(opts: Options, logits, labels, weight, mask, autodiff=False):
    ct = compute_dtype(logits.dtype)
    eps, num_classes = opts.label_smoothing, logits.shape[opts.axis]
    xs, m, lse0 = _capped_stats(opts, logits, ct, autodiff)
    t = _index_terms(opts, logits, m, lse0, labels, weight, ct)
    smooth = None
    if eps:
        if weight is None:  # sum_c (lse0 - s_c), summed without an (N, C) temporary on CPU
            smooth = num_classes * lse0 - shifted_sum(xs, m, opts.axis)
        else:
            wb = _class_vector(weight.astype(ct), opts.axis, xs.ndim)
            smooth = jnp.sum(wb * _neg_log_p(lse0, xs - m, wb), axis=opts.axis, keepdims=True)
    keep = jnp.expand_dims(mask, opts.axis)
    loss = index_loss(opts, num_classes, t, m, lse0, smooth, keep, weighted=weight is not None)
    return jnp.squeeze(loss, opts.axis), (m, lse0)


def index_loss(opts: Options, num_classes: int, t, m, lse0, smooth, keep, *, weighted: bool):
    """Per-row loss from row terms (class axis kept, size 1) over all ``num_classes`` classes.

    ``smooth`` is ``sum_c w_c * (-log p_c)`` over every class (unused when there is no label
    smoothing); ``keep`` (bool) zeroes rows. Shared with the chunked and sharded variants,
    which assemble the same row terms from blocks of classes.
    """
    eps = opts.label_smoothing
    loss = jnp.where(t.w_y == 0, 0, t.w_y * t.nll) if weighted else t.nll
    if eps == 1:  # the label term is absent, not 0 * inf (a -inf label logit)
        loss = smooth / num_classes
    elif eps:
        loss = (1 - eps) * loss + (eps / num_classes) * smooth
    if opts.z_loss:
        loss = loss + opts.z_loss * t.w_y * jnp.square(lse0 + m)
    loss = jnp.where(t.in_range, loss, jnp.nan)
    return jnp.where(keep, loss, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def index_rows(opts: Options, logits, labels, weight, mask):
    """Per-example loss for integer labels; ``mask`` (bool, labels' shape) zeroes examples."""
    return _index_forward(opts, logits, labels, weight, mask)[0]


def _index_rows_fwd(opts, logits, labels, weight, mask):
    loss, (m, lse0) = _index_forward(opts, logits, labels, weight, mask)
    return loss, (logits, labels, weight, mask, m, lse0)


def _index_rows_bwd(opts, res, g):
    logits, labels, weight, mask, m, lse0 = res
    ct = compute_dtype(logits.dtype)
    s = capped(opts, logits, ct) - m
    t = _index_terms(opts, logits, m, lse0, labels, weight, ct)
    num_classes = logits.shape[opts.axis]
    w_sum = num_classes if weight is None else jnp.sum(weight.astype(ct))
    keep = jnp.expand_dims(mask, opts.axis)
    g = jnp.expand_dims(g, opts.axis).astype(ct)
    dx, dw = index_grad(opts, num_classes, w_sum, s, m, lse0, t, weight, g, keep)
    dw = None if dw is None else dw.astype(weight.dtype)
    return dx.astype(logits.dtype), None, dw, None


def index_grad(opts: Options, num_classes: int, w_sum, s, m, lse0, t, weight, g, keep):
    """Gradients w.r.t. a block of (capped) logits and its class weights, from row terms.

    ``s`` holds the shifted logits of a block of classes along ``opts.axis`` (all classes, or a
    chunk or shard of them); ``t.onehot`` and ``weight`` cover that block, while ``m``,
    ``lse0``, ``t.nll``, ``t.w_y``, ``num_classes`` and ``w_sum`` (the summed class weight)
    describe the whole class axis. Row arrays keep the class axis with size 1. Returns
    ``(dx, dw)`` in the compute dtype: ``dx`` with NaN on kept rows whose label is out of
    range, ``dw`` the per-class weight gradient of the block (None without weights).
    """
    eps, axis = opts.label_smoothing, opts.axis
    p = softmax(s, lse0, axis)
    wb = None if weight is None else _class_vector(weight.astype(s.dtype), axis, s.ndim)
    coef_y = (1 - eps) * t.w_y
    coef = coef_y + (eps / num_classes) * w_sum  # sum over classes of the target q
    if opts.z_loss:
        coef = coef + 2 * opts.z_loss * t.w_y * (lse0 + m)
    q = jnp.where(t.onehot, coef_y, 0)
    if eps:
        q = q + (eps / num_classes) * (1.0 if wb is None else wb)
    dx = g * (coef * p - q) * _softcap_slope(opts, s, m)
    dx = jnp.where(keep, jnp.where(t.in_range, dx, jnp.nan), 0)
    dw = None
    if weight is not None:
        row = g * opts.z_loss * jnp.square(lse0 + m)
        if eps != 1:  # at eps = 1 the label term is absent, not 0 * inf
            row = row + g * (1 - eps) * t.nll
        per_class = jnp.where(t.onehot, row, 0)
        if eps:
            per_class = per_class + (eps / num_classes) * g * _neg_log_p(lse0, s, wb)
        per_class = jnp.where(keep & t.in_range, per_class, 0)
        others = tuple(i for i in range(s.ndim) if i != axis)
        dw = jnp.sum(per_class, axis=others)
    return dx, dw


index_rows.defvjp(_index_rows_fwd, _index_rows_bwd)


def _soft_target(opts, logits, labels, weight, ct):
    """The weighted, smoothed target q = weight * (labels * (1 - eps) + eps / C)."""
    eps, num_classes = opts.label_smoothing, logits.shape[opts.axis]
    tt = labels.astype(ct)
    if eps == 1:  # uniform, independent of the labels (so no 0 * inf in their gradient)
        tt = jnp.full(labels.shape, 1 / num_classes, ct)
    elif eps:
        tt = tt * (1 - eps) + eps / num_classes
    wb = None if weight is None else _class_vector(weight.astype(ct), opts.axis, logits.ndim)
    return tt, wb, (tt if wb is None else tt * wb)


def _soft_forward(opts: Options, logits, labels, weight, mask, autodiff=False):
    ct = compute_dtype(logits.dtype, labels.dtype)
    xs, m, lse0 = _capped_stats(opts, logits, ct, autodiff)
    _, _, q = _soft_target(opts, logits, labels, weight, ct)
    q_sum = jnp.sum(q, axis=opts.axis, keepdims=True)
    # sum_c q_c (lse0 - s_c), both terms >= 0 for q >= 0 (no cancellation)
    loss = lse0 * q_sum - target_sum(q, xs, m, opts.axis, autodiff=autodiff)
    if opts.z_loss:
        loss = loss + opts.z_loss * jnp.square(lse0 + m)
    loss = jnp.where(jnp.expand_dims(mask, opts.axis), loss, 0)
    return jnp.squeeze(loss, opts.axis), (m, lse0, q_sum)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def soft_rows(opts: Options, logits, labels, weight, mask):
    """Per-example loss for probability labels; ``mask`` (bool, batch shape) zeroes examples."""
    return _soft_forward(opts, logits, labels, weight, mask)[0]


def _soft_rows_fwd(opts, logits, labels, weight, mask):
    loss, (m, lse0, q_sum) = _soft_forward(opts, logits, labels, weight, mask)
    return loss, (logits, labels, weight, mask, m, lse0, q_sum)


def _soft_rows_bwd(opts, res, g):
    logits, labels, weight, mask, m, lse0, q_sum = res
    ct = compute_dtype(logits.dtype, labels.dtype)
    axis = opts.axis
    s = capped(opts, logits, ct) - m
    tt, wb, q = _soft_target(opts, logits, labels, weight, ct)
    p = softmax(s, lse0, axis)
    coef = q_sum
    if opts.z_loss:
        coef = coef + 2 * opts.z_loss * (lse0 + m)
    keep = jnp.expand_dims(mask, axis)
    g = jnp.where(keep, jnp.expand_dims(g, axis).astype(ct), 0)
    dx = jnp.where(keep, g * (coef * p - q) * _softcap_slope(opts, s, m), 0)
    d = _neg_log_p(lse0, s, q)
    if opts.label_smoothing == 1:  # the loss does not depend on the labels
        d_labels = jnp.zeros(labels.shape, labels.dtype)
    else:
        d_labels = (1 - opts.label_smoothing) * (d if wb is None else jnp.where(wb == 0, 0, wb * d))
        d_labels = jnp.where(keep, g * d_labels, 0).astype(labels.dtype)
    dw = None
    if weight is not None:
        others = tuple(i for i in range(s.ndim) if i != axis)
        dw = jnp.sum(jnp.where(keep, g * tt * d, 0), axis=others).astype(weight.dtype)
    return dx.astype(logits.dtype), d_labels, dw, None


soft_rows.defvjp(_soft_rows_fwd, _soft_rows_bwd)


def plain_index_rows(opts: Options, logits, labels, weight, mask):
    """The same math as ``index_rows`` without the custom VJP: every autodiff mode works."""
    return _index_forward(opts, logits, labels, weight, mask, autodiff=True)[0]


def plain_soft_rows(opts: Options, logits, labels, weight, mask):
    """The same math as ``soft_rows`` without the custom VJP: every autodiff mode works."""
    return _soft_forward(opts, logits, labels, weight, mask, autodiff=True)[0]
