"""The dense loss's per-example kernels, each a custom VJP: class indices and probabilities.

``index_rows`` and ``soft_rows`` return one loss per example (the class axis reduced away) in
the compute dtype. They save O(rows) residuals, the row maximum and the shifted log-sum-exp,
and rebuild the softmax in the backward pass, so the gradient is ``coef * softmax - target``
without a saved [rows, classes] copy. ``index_forward`` and ``soft_forward`` are the same
losses as plain functions (``cross_entropy(..., custom_vjp=False)`` differentiates them with
autodiff). The per-row math is ``jaxce._row_math``'s; the fused linear loss's sweep runs these
kernels on each chunk of rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxce import _row_math as rm
from jaxce._reductions import (
    capped_row_stats,
    fresh,
    row_stats,
    shared_row_stats,
    shifted_sum,
    softmax,
    target_sum,
    target_value,
)
from jaxce._vma import sum_to_type


def _rows(v, axis: int):
    """``v`` without its size-1 class axis (a Python scalar as it is).

    The forward's per-row arithmetic runs on these: XLA:CPU fuses it into the reduction that
    made ``lse0``, and on shapes that keep the class axis at size 1 that fused kernel ran at
    about half speed (65536x10 float32, the index loss's forward: 0.64 ms, 0.44 without it;
    optax's 0.43).
    """
    return jnp.squeeze(v, axis) if jnp.ndim(v) else v


def _label_terms(opts, logits, m, lse0, index, weight, ct) -> rm.RowTerms:
    """The row terms of a forward pass, in the batch shape, without a one-hot."""
    in_range = index >= 0
    y = jnp.where(in_range, index, 0)
    picked = jnp.take_along_axis(logits, jnp.expand_dims(y, opts.axis), axis=opts.axis)
    s_y = _rows(rm.softcap(opts, picked, ct), opts.axis) - _rows(m, opts.axis)
    w_y = rm.label_weight(weight, y, in_range, ct)
    return rm.RowTerms(in_range, None, w_y, _rows(lse0, opts.axis) - s_y)


def _index_terms(opts, logits, m, lse0, index, weight, ct) -> rm.RowTerms:
    """The row terms of a backward pass: the class axis kept at size 1, with the one-hot."""
    t = _label_terms(opts, logits, m, lse0, index, weight, ct)
    kept = lambda v: jnp.expand_dims(v, opts.axis) if jnp.ndim(v) else v
    y = jnp.expand_dims(jnp.where(t.in_range, index, 0), opts.axis)
    onehot = lax.broadcasted_iota(jnp.int32, logits.shape, opts.axis) == y
    return rm.RowTerms(kept(t.in_range), onehot, kept(t.w_y), kept(t.nll))


def _capped_stats(opts: rm.Options, logits, ct, shared=False):
    """(xs, m, lse0): the soft-capped logits, their row maximum and shifted log-sum-exp
    (``shared``: in a custom VJP's forward pass, whose backward reuses them)."""
    xs = rm.softcap(opts, logits, ct)
    if opts.softcap is None:
        return xs, *(shared_row_stats if shared else row_stats)(xs, opts.axis)
    cap = lambda v: rm.softcap(opts, v, ct)
    return xs, *capped_row_stats(logits, xs, cap, opts.axis, shared=shared)


def _capped_again(opts: rm.Options, logits, ct, *tag):
    """The soft-capped logits for one more kernel: recomputed (``fresh``) when capped."""
    if opts.softcap is None:
        return rm.softcap(opts, logits, ct)
    return rm.softcap(opts, fresh(logits, *tag), ct)


def index_forward(opts: rm.Options, logits, index, weight, keep, shared=False):
    ct = rm.compute_dtype(logits.dtype)
    eps, num_classes = opts.label_smoothing, logits.shape[opts.axis]
    xs, m, lse0 = _capped_stats(opts, logits, ct, shared)
    t = _label_terms(opts, logits, m, lse0, index, weight, ct)
    m_r, lse0_r = _rows(m, opts.axis), _rows(lse0, opts.axis)
    smooth = None
    if eps:
        xs = _capped_again(opts, logits, ct)
        if weight is None:  # sum_c (lse0 - s_c), summed without an (N, C) temporary on CPU
            smooth = num_classes * lse0_r - shifted_sum(xs, m, opts.axis)
        else:  # W lse0 - sum_c w_c s_c (0 where w_c = 0): a sum independent of lse0
            wb = rm.class_vector(weight.astype(ct), opts.axis, xs.ndim)
            ws = jnp.where(wb == 0, 0, wb * (xs - m))
            smooth = jnp.sum(wb) * lse0_r - jnp.sum(ws, axis=opts.axis)
    weighted = weight is not None
    loss = rm.row_loss(opts, num_classes, t, m_r, lse0_r, smooth, keep, weighted=weighted)
    return loss, (m, lse0)


def index_value(opts: rm.Options, logits, index, weight, keep):
    """``index_rows``' value as a plain function (no custom VJP, so forward-mode autodiff
    differentiates it): for a loss computed without its gradient."""
    return index_forward(opts, logits, index, weight, keep)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def index_rows(opts: rm.Options, logits, index, weight, keep):
    """Per-example loss for int32 class indices (-1: out of range); ``keep`` zeroes examples."""
    return index_value(opts, logits, index, weight, keep)


def _index_rows_fwd(opts, logits, index, weight, keep):
    loss, (m, lse0) = index_forward(opts, logits, index, weight, keep, shared=True)
    return loss, (logits, index, weight, keep, m, lse0)


def _index_rows_bwd(opts, res, g):
    logits, index, weight, keep, m, lse0 = res
    ct = rm.compute_dtype(logits.dtype)
    s = _capped_again(opts, logits, ct, lse0) - m
    s_dw = None
    if weight is not None and opts.label_smoothing and opts.softcap is not None:
        s_dw = _capped_again(opts, logits, ct, m) - m
    t = _index_terms(opts, logits, m, lse0, index, weight, ct)
    num_classes = logits.shape[opts.axis]
    w_sum = num_classes if weight is None else jnp.sum(weight.astype(ct))
    keep = jnp.expand_dims(keep, opts.axis)
    g = jnp.expand_dims(g, opts.axis).astype(ct)
    dx, dw = rm.row_grad(opts, num_classes, w_sum, s, m, lse0, t, weight, g, keep, s_dw)
    dw = None if dw is None else sum_to_type(dw, weight).astype(weight.dtype)
    return sum_to_type(dx, logits).astype(logits.dtype), None, dw, None


index_rows.defvjp(_index_rows_fwd, _index_rows_bwd)


def _soft_target(opts, logits, labels, weight, ct):
    """The weighted, smoothed target q = weight * (labels * (1 - eps) + eps / C)."""
    eps, num_classes = opts.label_smoothing, logits.shape[opts.axis]
    tt = labels.astype(ct)
    if eps == 1:  # uniform, independent of the labels (so no 0 * inf in their gradient)
        tt = jnp.full(labels.shape, 1 / num_classes, ct)
    elif eps:
        tt = tt * (1 - eps) + eps / num_classes
    wb = None if weight is None else rm.class_vector(weight.astype(ct), opts.axis, logits.ndim)
    return tt, wb, (tt if wb is None else tt * wb)


def _soft_sums(opts: rm.Options, logits, q, ct, shared=False, plain=False):
    """``sum_c q_c (lse0 - s_c)`` per row, and the row terms ``(m, lse0, sum_c q_c)``: the sums
    in the batch shape (see ``_rows``), ``m`` and ``lse0`` with the class axis kept.

    ``plain`` (differentiated by autodiff): ``sum_c q_c`` leaves out, by a select, the classes
    of zero target at a -inf logit, so that their target's derivative is 0 as the custom VJP's
    (not ``lse0``: ``0 * inf`` is taken as 0 in the value, and its derivative with it).
    """
    xs, m, lse0 = _capped_stats(opts, logits, ct, shared)
    counted = jnp.where((q == 0) & (xs == -jnp.inf), 0, q) if plain else q
    q_sum = jnp.sum(counted, axis=opts.axis)
    # both terms >= 0 for q >= 0 (no cancellation)
    target = target_sum(q, _capped_again(opts, logits, ct), m, opts.axis)
    value = _rows(lse0, opts.axis) * q_sum - _rows(target, opts.axis)
    return value, (m, lse0, q_sum)


def soft_forward(opts: rm.Options, logits, labels, weight, keep, shared=False, plain=False):
    ct = rm.compute_dtype(logits.dtype, labels.dtype)
    _, _, q = _soft_target(opts, logits, labels, weight, ct)
    loss, (m, lse0, q_sum) = _soft_sums(opts, logits, q, ct, shared, plain)
    if opts.z_loss:
        loss = loss + opts.z_loss * jnp.square(_rows(lse0, opts.axis) + _rows(m, opts.axis))
    return jnp.where(keep, loss, 0), (m, lse0, jnp.expand_dims(q_sum, opts.axis))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def soft_rows(opts: rm.Options, logits, labels, weight, keep):
    """Per-example loss for probability labels; ``keep`` (bool, batch shape) zeroes examples."""
    return soft_value(opts, logits, labels, weight, keep)


def soft_value(opts: rm.Options, logits, labels, weight, keep):
    """``soft_rows``' value as a plain function (see ``index_value``)."""
    if opts.z_loss:  # z-loss reads the row terms: the form that keeps them
        return soft_forward(opts, logits, labels, weight, keep)[0]
    ct = rm.compute_dtype(logits.dtype, labels.dtype)
    _, _, q = _soft_target(opts, logits, labels, weight, ct)
    loss = target_value(
        q,
        logits,
        opts.axis,
        cap=lambda logits: rm.softcap(opts, logits, ct),
        default=lambda q, logits: _soft_sums(opts, logits, q, ct)[0],
    )
    return jnp.where(keep, loss, 0)


def _soft_rows_fwd(opts, logits, labels, weight, keep):
    loss, (m, lse0, q_sum) = soft_forward(opts, logits, labels, weight, keep, shared=True)
    return loss, (logits, labels, weight, keep, m, lse0, q_sum)


def _soft_rows_bwd(opts, res, g):
    logits, labels, weight, keep, m, lse0, q_sum = res
    ct = rm.compute_dtype(logits.dtype, labels.dtype)
    axis = opts.axis
    s = _capped_again(opts, logits, ct, lse0) - m
    tt, wb, q = _soft_target(opts, logits, labels, weight, ct)
    p = softmax(s, lse0, axis)
    coef = q_sum
    if opts.z_loss:
        coef = coef + 2 * opts.z_loss * (lse0 + m)
    keep = jnp.expand_dims(keep, axis)
    g = jnp.where(keep, jnp.expand_dims(g, axis).astype(ct), 0)
    dx = jnp.where(keep, g * (coef * p - q) * rm.softcap_slope(opts, s + m), 0)
    d = rm.neg_log_p(lse0, s, q)
    if opts.label_smoothing == 1:  # the loss does not depend on the labels
        d_labels = jnp.zeros(labels.shape, labels.dtype)
    else:
        d_labels = (1 - opts.label_smoothing) * (d if wb is None else jnp.where(wb == 0, 0, wb * d))
        d_labels = jnp.where(keep, g * d_labels, 0).astype(labels.dtype)
    dw = None
    if weight is not None:
        others = tuple(i for i in range(s.ndim) if i != axis)
        dw = sum_to_type(jnp.sum(jnp.where(keep, g * tt * d, 0), axis=others), weight)
        dw = dw.astype(weight.dtype)
    d_labels = sum_to_type(d_labels, labels)
    return sum_to_type(dx, logits).astype(logits.dtype), d_labels, dw, None


soft_rows.defvjp(_soft_rows_fwd, _soft_rows_bwd)
