"""The per-row math of cross-entropy with class indices, written once for every loss.

The dense, fused linear and sharded losses all reduce one row of logits to a few row terms and
build the row's loss and its gradient from them; they differ only in how they gather the terms
(all classes at once, chunk by chunk, or shard by shard). Notation along the class axis
(C classes, class weights ``w``, all ones without ``weight``), with ``xs = softcap(x)``:
``m = max(xs)``, ``s = xs - m``, ``lse0 = log(sum(exp(s)))``, so ``-log p = lse0 - s``.
Every formula is written in shifted terms, which keeps |x| up to 3e4 accurate in float32.

For a label ``y`` (``eps = label_smoothing``), the row loss is

    (1 - eps) w_y (lse0 - s_y) + eps / C * sum_c w_c (lse0 - s_c) + z_loss * w_y * (lse0 + m)^2

and its gradient w.r.t. the capped logits is ``coef * softmax - q`` with the target
``q_c = (1 - eps) w_y [c = y] + eps / C * w_c`` and ``coef = sum_c q_c + 2 z_loss w_y lse``.
The label weight ``w_y`` (``label_weight``) is also the row's share of the mean's divisor
(``reduce_rows``). Row arrays keep the class axis at size 1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxce._reductions import _by_backend, softmax


class Options(NamedTuple):
    """Static options of a kernel call (hashable, so they can be jit/VJP static arguments)."""

    axis: int
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None


def compute_dtype(*dtypes) -> jnp.dtype:
    """float64 when any input is float64, else float32 (fp16/bf16 accumulate in float32)."""
    return jnp.dtype(jnp.promote_types(jnp.float32, jnp.result_type(*dtypes)))


def widened(array: jax.Array) -> jax.Array:
    """float16/bfloat16 ``array`` as float32 (wider floats as they are): what a gradient's
    several parts are added in before it is rounded to the array's own dtype, once."""
    return array.astype(jnp.promote_types(array.dtype, jnp.float32))


def class_vector(vector: jax.Array, axis: int, ndim: int) -> jax.Array:
    """Reshapes a (C,) vector to broadcast along ``axis`` of an ndim-dimensional array."""
    shape = [1] * ndim
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)


def softcap(opts: Options, logits: jax.Array, ct) -> jax.Array:
    """The logits in the compute dtype, soft-capped to ``c * tanh(x / c)`` when set.

    A -inf logit (a masked class) stays -inf: the cap keeps masks, so a masked class gets no
    probability back (``c * tanh(-inf)`` would be ``-c``).
    """
    xs = logits.astype(ct)
    if opts.softcap is not None:
        xs = jnp.where(xs == -jnp.inf, xs, opts.softcap * jnp.tanh(xs / opts.softcap))
    return xs


def softcap_slope(opts: Options, xs: jax.Array) -> jax.Array | float:
    """d softcap(x) / dx = 1 - (softcap(x) / c)^2 from the capped logits; 0 at masked ones."""
    if opts.softcap is None:
        return 1.0
    return jnp.where(xs == -jnp.inf, 0, 1 - jnp.square(xs / opts.softcap))


def neg_log_p(lse0: jax.Array, s: jax.Array, coef: jax.Array | None) -> jax.Array:
    """-log p, with 0 where its coefficient is 0 and the logit is -inf (0 * log 0 = 0)."""
    d = lse0 - s
    if coef is None:
        return d
    return jnp.where((coef == 0) & (d == jnp.inf), 0, d)


def label_weight(weight: jax.Array | None, index: jax.Array, present: jax.Array, ct):
    """The label's class weight ``w_y``: ``weight[index]`` where ``present``, else 0.

    ``weight`` is a block of class weights (all classes, or one device's shard) and ``index``
    the label's position in it; ``present`` says the label lies in the block (and in range).
    Without weights it is 1 where present. Summed over the blocks of a row it is ``w_y``.
    """
    if weight is None:
        return present.astype(ct)
    if weight.shape[0] == 0:  # no class in the block: no label is present
        return jnp.zeros(present.shape, ct)
    picked = _take_weight(weight.astype(ct), jnp.where(present, index, 0))
    return jnp.where(present, picked, 0)


@jax.custom_jvp
def _take_weight(weight: jax.Array, index: jax.Array) -> jax.Array:
    """``weight[index]``, differentiated off CPU as a one-hot contraction, not a gather.

    The gather's transpose is a scatter-add, which XLA:GPU runs with atomic adds: the weight
    gradient (through the mean's divisor) would differ from run to run in its last bits. The
    one-hot form transposes to a column sum, which XLA reduces in a fixed order; its compare is
    computed, not read from memory. On CPU the gather (an in-order scatter) is cheaper.
    """
    return jnp.take(weight, index)


@_take_weight.defjvp
def _take_weight_jvp(primals, tangents):
    weight, index = primals
    d_weight, _ = tangents

    def one_hot(d_weight, index):
        hot = lax.broadcasted_iota(jnp.int32, (*index.shape, weight.shape[0]), index.ndim)
        return jnp.sum(jnp.where(hot == index[..., None], d_weight, 0), axis=-1)

    tangent = _by_backend(lambda d, i: jnp.take(d, i), one_hot, d_weight, index)
    return jnp.take(weight, index), tangent


class RowTerms(NamedTuple):
    in_range: jax.Array  # bool: the label is a class in [0, C)
    onehot: jax.Array | None  # bool, the label's one-hot over a block of classes (gradients)
    w_y: jax.Array | float  # the label's class weight
    nll: jax.Array  # -log p[label] = lse0 - s_y


def row_loss(opts: Options, num_classes: int, t: RowTerms, m, lse0, smooth, keep, *, weighted):
    """Per-row loss from row terms over all ``num_classes`` classes.

    ``smooth`` is ``sum_c w_c * (-log p_c)`` over every class (unused without label
    smoothing); ``keep`` (bool) zeroes rows; a kept row whose label is out of range is NaN.
    """
    eps = opts.label_smoothing
    # A zero label weight removes the row's label term, an infinite -log p included: 0 * inf
    # would be NaN. Only that case is selected away: a NaN stays NaN (NaN logits give a NaN
    # loss, as they give a NaN gradient), and plain autodiff's gradient of 0 * nll carries a
    # NaN cotangent (a mean over no weight) as the custom VJP's does.
    removed = (t.w_y == 0) & jnp.isinf(t.nll)
    loss = jnp.where(removed, 0, t.w_y * t.nll) if weighted else t.nll
    if eps == 1:  # the label term is absent, not 0 * inf (a -inf label logit)
        loss = smooth / num_classes
    elif eps:
        loss = (1 - eps) * loss + (eps / num_classes) * smooth
    if opts.z_loss:
        loss = loss + opts.z_loss * t.w_y * jnp.square(lse0 + m)
    loss = jnp.where(t.in_range, loss, jnp.nan)
    return jnp.where(keep, loss, 0)


def row_grad(
    opts: Options, num_classes: int, w_sum, s, m, lse0, t: RowTerms, weight, g, keep, s_dw=None
):
    """Gradients w.r.t. a block of logits and its class weights, from row terms.

    ``s`` holds the shifted capped logits of a block of classes along ``opts.axis`` (all
    classes, or a chunk or shard of them); ``t.onehot`` and ``weight`` cover that block, while
    ``m``, ``lse0``, ``t.nll``, ``t.w_y``, ``num_classes`` and ``w_sum`` (the summed class
    weight) describe the whole class axis. Returns ``(dx, dw)`` in the compute dtype: ``dx``
    w.r.t. the uncapped logits, NaN on kept rows whose label is out of range; ``dw`` the
    per-class weight gradient of the block (None without weights). ``s_dw``: ``s`` recomputed
    for the weight gradient's smoothing term (a column sum, a kernel of its own on GPU).
    """
    eps, axis = opts.label_smoothing, opts.axis
    p = softmax(s, lse0, axis)
    wb = None if weight is None else class_vector(weight.astype(s.dtype), axis, s.ndim)
    coef_y = (1 - eps) * t.w_y
    coef = coef_y + (eps / num_classes) * w_sum  # sum over classes of the target q
    if opts.z_loss:
        coef = coef + 2 * opts.z_loss * t.w_y * (lse0 + m)
    q = jnp.where(t.onehot, coef_y, 0)
    if eps:
        q = q + (eps / num_classes) * (1.0 if wb is None else wb)
    dx = g * (coef * p - q) * softcap_slope(opts, s + m)
    dx = jnp.where(keep, jnp.where(t.in_range, dx, jnp.nan), 0)
    dw = None
    if weight is not None:
        row = 0.0  # only terms present: z_loss = 0 times an overflowed square is NaN
        if opts.z_loss:
            row = g * opts.z_loss * jnp.square(lse0 + m)
        if eps != 1:  # at eps = 1 the label term is absent, not 0 * inf
            row = row + g * (1 - eps) * t.nll
        per_class = jnp.where(t.onehot, row, 0)
        if eps:
            s_w = s if s_dw is None else s_dw
            per_class = per_class + (eps / num_classes) * g * neg_log_p(lse0, s_w, wb)
        per_class = jnp.where(keep & t.in_range, per_class, 0)
        dw = jnp.sum(per_class, axis=tuple(i for i in range(s.ndim) if i != axis))
    return dx, dw


def reduce_rows(
    rows: jax.Array, row_weight: jax.Array, reduction: str, dtype, *, divisor=None
) -> jax.Array:
    """torch's reductions: "none", "sum", or "mean" dividing by the rows' summed weight.

    ``row_weight`` is each row's share of the divisor: ``w_y`` for kept rows, 0 for dropped
    (times the row's sample weight, if any). A given ``divisor`` replaces their sum.
    """
    if reduction == "none":
        return rows.astype(dtype)
    total = jnp.sum(rows)
    if reduction == "mean":
        total = divide(
            total, jnp.sum(row_weight) if divisor is None else divisor.astype(total.dtype)
        )
    return total.astype(dtype)


@jax.custom_jvp
def divide(total: jax.Array, divisor: jax.Array) -> jax.Array:
    """``total / divisor``, whose derivative w.r.t. the divisor is ``-(total / divisor) /
    divisor``: autodiff's ``-total / divisor**2`` overflows or flushes to 0 for divisors
    beyond about 1.8e19 or below 5e-20 in float32. A mean over no weight (divisor 0) is NaN,
    as torch's, even where the total is not 0 (label smoothing's term): not inf."""
    return total / divisor * nan_at_zero(divisor)


def nan_at_zero(divisor):
    """NaN where ``divisor`` is 0, else exactly 1 (a factor that changes no other quotient)."""
    return jnp.where(divisor == 0, jnp.nan, 1).astype(divisor.dtype)


@divide.defjvp
def _divide_jvp(primals, tangents):
    total, divisor = primals
    d_total, d_divisor = tangents
    # the tangent is NaN at divisor 0 too (not inf, or NaN only where the total's tangent is 0)
    nan = nan_at_zero(divisor)
    quotient = total / divisor * nan
    return quotient, (d_total - quotient * d_divisor) * nan / divisor
