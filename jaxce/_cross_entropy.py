"""cross_entropy: torch.nn.functional.cross_entropy's contract, with its lean custom VJPs.

The kernels return one loss per example (the class axis reduced away) in the compute dtype.
They save O(rows) residuals, the row maximum and the shifted log-sum-exp, and rebuild the
softmax in the backward pass, so the gradient is ``coef * softmax - target`` without a saved
[rows, classes] copy. The per-row math is ``jaxce._row_math``'s.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxce import _labels, _validation
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
from jaxce._validation import Reduction


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: int = -1,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    where: ArrayLike | None = None,
    num_classes: int | None = None,
    check_labels: bool = False,
    custom_vjp: bool = True,
) -> jax.Array:
    r"""Cross-entropy between logits and class indices or class probabilities.

    With ``p = softmax(softcap(logits))`` along ``axis``, ``eps = label_smoothing``, C classes
    and class weights ``w`` (all ones by default), each example's loss is

    .. math::

        \ell = -\sum_c w_c q_c \log p_c + \text{z\_loss} \cdot r \cdot (\log \sum_c e^{x_c})^2,

    where for a class index ``y`` the target is ``q_c = (1 - eps) [c = y] + eps / C`` and the row
    weight is ``r = w_y``; for probabilities ``t`` it is ``q_c = (1 - eps) t_c + eps / C`` and
    ``r = 1``. Examples whose index equals ``ignore_index`` or whose ``where`` is False have loss
    0. ``reduction="mean"`` divides the sum by the summed row weights ``r`` of the kept examples
    (torch's divisor: the summed class weight of the non-ignored targets, or the example count
    for probabilities); ``"sum"`` sums; ``"none"`` returns the per-example losses.

    Args:
      logits: floating array of any shape, the classes along ``axis``.
      labels: integer class indices of the logits' shape without ``axis`` (any signed or
        unsigned dtype), or floating class probabilities of the logits' shape.
      axis: the class axis of ``logits``. Use ``axis=1`` for torch's (N, C, d1, ...) layout.
      weight: optional floating (C,) class weights, as torch's ``weight``.
      ignore_index: class index whose examples are skipped (class indices only). A value the
        labels' dtype cannot hold (-100 for uint8 labels) matches no label.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.
      label_smoothing: ``eps`` in [0, 1], mixing the target with the uniform distribution.
      z_loss: coefficient >= 0 of the squared log-partition term (PaLM / T5X z-loss).
      softcap: optional ``c > 0``; logits become ``c * tanh(logits / c)`` first (Gemma 2);
        -inf logits (masked classes) stay -inf.
      where: optional boolean mask broadcastable to the examples' shape; False drops an example.
      num_classes: the true class count of a padded class axis: classes at positions
        >= ``num_classes`` along ``axis`` are padding, left out of the softmax, the smoothing's
        ``eps / C``, the weights and the labels' range (their gradient is 0; probabilities
        there are ignored). The result equals the loss of the unpadded logits exactly.
        Default: all classes are real.
      check_labels: under ``jit``, also check class indices with ``checkify.check``, reported
        when the caller is wrapped in ``jax.experimental.checkify.checkify`` (without it the
        check is dropped and a bad label gives NaN, as with False). Eager calls always check.
      custom_vjp: True (default) uses the lean custom VJP, for reverse mode (``jax.grad``,
        ``jax.jacrev``, and ``jax.hessian``, forward over reverse). False differentiates the
        same math with plain autodiff, for forward mode too (``jax.jvp``, ``jax.jacfwd``).

    Returns:
      A scalar for ``"mean"`` and ``"sum"``, else an array of the examples' shape; in the logits'
      dtype.

    Raises:
      TypeError: non-floating logits, labels neither integer nor floating (bool, complex),
        non-floating weight, non-boolean ``where``, options of the wrong type, or forward-mode
        autodiff with ``custom_vjp=True`` (naming ``custom_vjp=False``; under an outer
        ``jit``, JAX's own "can't apply forward-mode autodiff" error, raised at compile time).
      ValueError: a bad axis or labels' shape, weight not of shape (C,), an unknown reduction,
        ``label_smoothing`` outside [0, 1], ``z_loss`` outside [0, inf), ``softcap`` outside
        (0, inf), ``num_classes`` outside [0, C], ``ignore_index`` with probabilities, or,
        for concrete arrays, non-finite class weights or class indices outside [0, C) that
        are not ``ignore_index``.

    Numerics:
      float16 and bfloat16 inputs are accumulated in float32 and the result is returned in the
      input dtype. The log-sum-exp is shifted by the row maximum, so logits up to |x| ~ 3e4 stay
      finite and accurate in float32. The gradient w.r.t. the logits is ``coef * softmax -
      weight * q``, rebuilt from two saved floats per example. -inf logits (masked classes) give
      finite losses and gradients whenever the target puts no mass on them; a target with mass
      on a -inf logit gives an infinite loss, as the math says, and still a finite gradient.
      Under ``jit`` without ``check_labels``, an out-of-range class index makes its example's
      loss and gradient NaN rather than silently wrong. NaN logits or probabilities give NaN.

    Differences from torch:
      - Probability targets with a -inf logit where the target is 0: torch gives NaN (0 * -inf);
        jaxce gives the finite value (0 * log 0 = 0). There, the gradient w.r.t. that target
        is 0 in jaxce (a convention that keeps it finite); torch and the one-sided derivative
        give +inf.
      - float16 on CPU: torch accumulates in float16 and overflows on large means; jaxce does not.
      - ``ignore_index`` with probabilities: torch 2.13 raises for ``ignore_index >= 0`` and
        silently ignores a negative one; jaxce raises for any value but the default -100, so
        pass ``where=`` to drop examples instead.
      - torch takes int64 or uint8 class indices; jaxce any integer dtype (not bool).
      - torch has no gradient w.r.t. ``weight``; jaxce returns it.
      - Zero classes behave as in torch: probabilities give per-example losses 0 and a NaN
        mean; class indices must all be ``ignore_index`` (else an error).
      - ``z_loss``, ``softcap``, ``where``, ``num_classes`` and a free class ``axis`` are
        extensions.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxce import loss
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
      >>> print(f"{loss.cross_entropy(logits, jnp.array([0, 2])):.4f}")
      0.1755
      >>> print(loss.cross_entropy(logits, jnp.array([0, -100]), reduction="none"))
      [0.24131 0.     ]
    """
    logits = _validation.as_array(logits, "logits")
    labels = _validation.as_unconverted(labels, "labels")
    spec = _validation.check_logits_labels(logits, labels, axis)
    count = _validation.check_num_classes(num_classes, spec.num_classes, "logits' class axis")
    weight = _validation.check_class_vector(
        weight, "weight", spec.num_classes, "Pass one weight per class."
    )
    ignore_index = _validation.check_ignore_index(ignore_index, labels)
    opts = rm.Options(spec.axis, *_validation.check_options(label_smoothing, z_loss, softcap))
    reduction = _validation.check_reduction(reduction)
    where = _validation.check_where(where, spec.batch_shape)
    check_labels = _validation.check_flag(check_labels, "check_labels")
    custom_vjp = _validation.check_flag(custom_vjp, "custom_vjp")
    if spec.soft_labels:
        labels = jnp.asarray(labels)
    else:
        labels, ignore_index = _labels.prepare(
            labels, count, ignore_index, check_traced=check_labels
        )
    fix = "Pass custom_vjp=False to differentiate the same math with plain autodiff, any mode."
    with _validation.reverse_mode_only("cross_entropy", fix):
        return _cross_entropy(
            logits, labels, weight, where, opts=opts, reduction=reduction,
            ignore_index=ignore_index, num_classes=count, use_custom_vjp=custom_vjp,
        )  # fmt: skip


@functools.partial(
    jax.jit, static_argnames=("opts", "reduction", "ignore_index", "num_classes", "use_custom_vjp")
)
def _cross_entropy(
    logits, labels, weight, where, *, opts, reduction, ignore_index, num_classes, use_custom_vjp
):
    axis, soft = opts.axis, jnp.issubdtype(labels.dtype, jnp.floating)
    if num_classes < logits.shape[axis]:  # a padded class axis: keep the real classes only
        logits = lax.slice_in_dim(logits, 0, num_classes, axis=axis)
        labels = lax.slice_in_dim(labels, 0, num_classes, axis=axis) if soft else labels
        weight = None if weight is None else weight[:num_classes]
    batch_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
    keep = jnp.ones(batch_shape, bool) if where is None else where
    ct = rm.compute_dtype(logits.dtype)
    if soft:
        rows_fn = soft_rows if use_custom_vjp else lambda *a: _soft_forward(*a)[0]
        row_weight = keep.astype(ct)
        if num_classes == 0:  # as torch: per-example losses 0, the mean NaN
            rows, row_weight = jnp.zeros(batch_shape, ct), jnp.zeros(batch_shape, ct)
        else:
            rows = rows_fn(opts, logits, labels, weight, keep)
    else:
        index, ignored = _labels.normalize(labels, num_classes, ignore_index)
        keep = keep & ~ignored
        row_weight = jnp.where(keep, rm.label_weight(weight, index, index >= 0, ct), 0)
        rows_fn = index_rows if use_custom_vjp else lambda *a: _index_forward(*a)[0]
        if num_classes == 0:  # every kept label is out of range
            rows = jnp.where(keep, jnp.nan, 0).astype(ct)
        else:
            rows = rows_fn(opts, logits, index, weight, keep)
    return rm.reduce_rows(rows, row_weight, reduction, logits.dtype)


def _index_terms(opts, logits, m, lse0, index, weight, ct) -> rm.RowTerms:
    y = jnp.expand_dims(index, opts.axis)
    in_range = y >= 0
    y = jnp.where(in_range, y, 0)
    onehot = lax.broadcasted_iota(jnp.int32, logits.shape, opts.axis) == y
    s_y = rm.softcap(opts, jnp.take_along_axis(logits, y, axis=opts.axis), ct) - m
    w_y = rm.label_weight(weight, y, in_range, ct)
    return rm.RowTerms(in_range, onehot, w_y, lse0 - s_y)


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


def _index_forward(opts: rm.Options, logits, index, weight, keep, shared=False):
    ct = rm.compute_dtype(logits.dtype)
    eps, num_classes = opts.label_smoothing, logits.shape[opts.axis]
    xs, m, lse0 = _capped_stats(opts, logits, ct, shared)
    t = _index_terms(opts, logits, m, lse0, index, weight, ct)
    smooth = None
    if eps:
        xs = _capped_again(opts, logits, ct)
        if weight is None:  # sum_c (lse0 - s_c), summed without an (N, C) temporary on CPU
            smooth = num_classes * lse0 - shifted_sum(xs, m, opts.axis)
        else:  # W lse0 - sum_c w_c s_c (0 where w_c = 0): a sum independent of lse0
            wb = rm.class_vector(weight.astype(ct), opts.axis, xs.ndim)
            ws = jnp.where(wb == 0, 0, wb * (xs - m))
            smooth = jnp.sum(wb) * lse0 - jnp.sum(ws, axis=opts.axis, keepdims=True)
    keep = jnp.expand_dims(keep, opts.axis)
    loss = rm.row_loss(opts, num_classes, t, m, lse0, smooth, keep, weighted=weight is not None)
    return jnp.squeeze(loss, opts.axis), (m, lse0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def index_rows(opts: rm.Options, logits, index, weight, keep):
    """Per-example loss for int32 class indices (-1: out of range); ``keep`` zeroes examples."""
    return _index_forward(opts, logits, index, weight, keep)[0]


def _index_rows_fwd(opts, logits, index, weight, keep):
    loss, (m, lse0) = _index_forward(opts, logits, index, weight, keep, shared=True)
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
    dw = None if dw is None else dw.astype(weight.dtype)
    return dx.astype(logits.dtype), None, dw, None


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


def _soft_sums(opts: rm.Options, logits, q, ct, shared=False):
    """``sum_c q_c (lse0 - s_c)`` per row, and the row terms ``(m, lse0, sum_c q_c)``."""
    _, m, lse0 = _capped_stats(opts, logits, ct, shared)
    q_sum = jnp.sum(q, axis=opts.axis, keepdims=True)
    # both terms >= 0 for q >= 0 (no cancellation)
    value = lse0 * q_sum - target_sum(q, _capped_again(opts, logits, ct), m, opts.axis)
    return value, (m, lse0, q_sum)


def _soft_forward(opts: rm.Options, logits, labels, weight, keep, shared=False):
    ct = rm.compute_dtype(logits.dtype, labels.dtype)
    _, _, q = _soft_target(opts, logits, labels, weight, ct)
    loss, (m, lse0, q_sum) = _soft_sums(opts, logits, q, ct, shared)
    if opts.z_loss:
        loss = loss + opts.z_loss * jnp.square(lse0 + m)
    loss = jnp.where(jnp.expand_dims(keep, opts.axis), loss, 0)
    return jnp.squeeze(loss, opts.axis), (m, lse0, q_sum)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def soft_rows(opts: rm.Options, logits, labels, weight, keep):
    """Per-example loss for probability labels; ``keep`` (bool, batch shape) zeroes examples."""
    if opts.z_loss:  # z-loss reads the row terms: the form that keeps them
        return _soft_forward(opts, logits, labels, weight, keep)[0]
    ct = rm.compute_dtype(logits.dtype, labels.dtype)
    _, _, q = _soft_target(opts, logits, labels, weight, ct)
    loss = target_value(
        q,
        logits,
        opts.axis,
        cap=lambda logits: rm.softcap(opts, logits, ct),
        default=lambda q, logits: _soft_sums(opts, logits, q, ct)[0],
    )
    return jnp.squeeze(jnp.where(jnp.expand_dims(keep, opts.axis), loss, 0), opts.axis)


def _soft_rows_fwd(opts, logits, labels, weight, keep):
    loss, (m, lse0, q_sum) = _soft_forward(opts, logits, labels, weight, keep, shared=True)
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
        dw = jnp.sum(jnp.where(keep, g * tt * d, 0), axis=others).astype(weight.dtype)
    return dx.astype(logits.dtype), d_labels, dw, None


soft_rows.defvjp(_soft_rows_fwd, _soft_rows_bwd)
