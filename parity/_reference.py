"""The float64 reference: torch's cross-entropy contract written out in numpy, from the math.

It shares no code with torch or JAX. Values and gradients use closed forms:

    logp = (x - max x) - log sum_c exp(x_c - max x)          (log-softmax, per row)
    index targets y (rows with y == ignore_index drop out), smoothing e, weights w, W = sum w:
      loss_i = (1 - e) * w_y * (-logp_y) + (e / C) * sum_c w_c * (-logp_c)
      dloss_i/dx_i = (1 - e) * w_y * (p - onehot_y) + (e / C) * (W * p - w)
      mean = sum_i loss_i / sum_{i kept} w_{y_i}
    probability targets t:  t' = (1 - e) * t + e / C
      loss_i = -sum_c w_c * t'_c * logp_c,  dloss_i/dx_i = (sum_c w_c t'_c) * p - w * t'
      dloss_i/dt_c = -(1 - e) * w_c * logp_c,  mean = sum_i loss_i / rows

Conventions where the arithmetic would say NaN but the math does not:
  * 0 * log 0 = 0: a class with target 0 (or weight 0) and logit -inf adds nothing;
  * a term whose coefficient is exactly 0 (smoothing 0, or 1 - e = 0) is absent, so it cannot
    turn an infinite log-probability into NaN;
  * the gradient of an ignored row is 0, and the gradient of an all-ignored or empty mean is 0
    (the numerator does not depend on the inputs), as in torch; the mean itself is 0/0 = NaN.
Zero classes (C = 0) follow torch 2.13: each row's loss is an empty sum (0), so "sum" is 0 and
"none" is 0 per row; the mean of probability targets divides by torch's row count numel / C, which
is 0 / 0 = NaN; the smoothing term e / C is absent (it multiplies an empty sum).
A target class whose logit is -inf gives loss +inf (with a finite gradient); that is the math.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Result(NamedTuple):
    """float64 value and gradients (None where the input takes no gradient)."""

    value: np.ndarray
    grad_logits: np.ndarray
    grad_target: np.ndarray | None


def _times(coef, values):
    """coef * values, with 0 * inf = 0 (a zero coefficient means the term is absent)."""
    coef = np.broadcast_to(coef, np.broadcast_shapes(np.shape(coef), np.shape(values)))
    with np.errstate(invalid="ignore"):
        return np.where(coef == 0, 0.0, coef * values)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    shifted = x - m  # -inf stays -inf; the max class is exactly 0
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def cross_entropy(
    logits,
    labels,
    *,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    cotangent=1.0,
) -> Result:
    """torch.nn.functional.cross_entropy and its vector-Jacobian product, in float64.

    Args:
      logits: (C,) or (N, C, d1, ..., dk) in torch's layout.
      labels: int class indices of the batch shape, or float probabilities of the logits' shape.
      weight: optional (C,) class weights.
      ignore_index: the index whose rows are dropped (class indices only).
      reduction: "none", "mean" or "sum".
      label_smoothing: e in [0, 1].
      cotangent: the loss' cotangent (shape () or, for "none", the batch shape).

    Returns:
      Result(value, grad_logits (logits' shape), grad_target (for probabilities, else None)).
    """
    x = np.asarray(logits, np.float64)
    axis = 0 if x.ndim == 1 else 1
    xl = np.moveaxis(x, axis, -1)
    c = xl.shape[-1]
    rows = xl.reshape(int(np.prod(xl.shape[:-1])), c)
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    e = float(label_smoothing)
    e_per_class = e / c if c else 0.0  # with no class the smoothing term is an empty sum
    logp = _log_softmax(rows) if rows.size else np.zeros(rows.shape)
    p = np.exp(logp)
    soft = np.issubdtype(np.asarray(labels).dtype, np.floating)
    if soft:
        t = np.moveaxis(np.asarray(labels, np.float64), axis, -1).reshape(rows.shape)
        ts = (1.0 - e) * t + e_per_class
        per_row = -np.sum(_times(w * ts, logp), axis=-1)
        denom = float(rows.shape[0]) if c else np.nan  # torch divides by numel / C
        row_coef = np.sum(w * ts, axis=-1)  # d loss_i / d x_i = row_coef * p - w * t'
        d_rows = row_coef[:, None] * p - w * ts
    else:
        y = np.asarray(labels).reshape(-1)
        kept = y != ignore_index
        ys = np.where(kept, y, 0)
        wy = np.where(kept, w[ys], 0.0)
        nll = -_times(wy, logp[np.arange(y.size), ys])
        smooth = np.where(kept, -np.sum(_times(w, logp), axis=-1), 0.0)
        per_row = _times(1.0 - e, nll) + _times(e_per_class, smooth)
        denom = float(np.sum(wy))
        onehot = np.eye(c)[ys]
        d_rows = (1.0 - e) * wy[:, None] * (p - onehot) + e_per_class * (w.sum() * p - w)
        d_rows = np.where(kept[:, None], d_rows, 0.0)
    batch = xl.shape[:-1]
    g = np.asarray(cotangent, np.float64)
    if reduction == "none":
        value, g_rows = per_row.reshape(batch), g.reshape(-1)
    elif reduction == "sum":
        value, g_rows = np.asarray(np.sum(per_row)), np.full(per_row.shape, float(g))
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.asarray(np.sum(per_row) / denom)
        g_rows = np.full(per_row.shape, float(g) / denom if denom else 0.0)
    grad_x = (g_rows[:, None] * d_rows).reshape(xl.shape)
    grad_t = None
    if soft:
        grad_t_rows = -_times((g_rows[:, None] * (1.0 - e)) * w, logp)
        grad_t = np.moveaxis(grad_t_rows.reshape(xl.shape), -1, axis)
    return Result(value, np.moveaxis(grad_x, -1, axis), grad_t)


class LinearResult(NamedTuple):
    """float64 value and gradients of the fused linear loss, in torch's layout.

    ``grad_logits`` is the reference's own d loss / d logits (the other sides leave it None);
    the comparison uses it for the natural size of the matmuls' gradients.
    """

    value: np.ndarray
    grad_input: np.ndarray  # (N, D)
    grad_weight: np.ndarray  # (C, *out_features, D)
    grad_bias: np.ndarray | None  # (C, *out_features), when there is a bias
    grad_target: np.ndarray | None  # probability targets only
    grad_logits: np.ndarray | None = None


def linear_cross_entropy(
    hidden, linear_weight, labels, *, bias=None, cotangent=1.0, **options
) -> LinearResult:
    """torch.nn.functional.linear_cross_entropy and its vector-Jacobian product, in float64.

    The logits ``x[n, c, k] = sum_d hidden[n, d] linear_weight[c, k, d] + bias[c, k]`` go
    through ``cross_entropy`` above (which gives G = d loss / d x); the chain rule then gives
    ``d input = sum_{c,k} G[n, c, k] W[c, k, d]``, ``d W = sum_n G[n, c, k] hidden[n, d]`` and
    ``d bias = sum_n G[n, c, k]``.

    Args:
      hidden: (N, D) input.
      linear_weight: (C, d1, ..., dk, D), torch's layout (k = 0 for the plain loss).
      labels: int class indices (N, d1, ..., dk) or float probabilities (N, C, d1, ..., dk).
      bias: optional (C, d1, ..., dk).
      cotangent: the loss' cotangent.
      **options: ``cross_entropy``'s weight, ignore_index, reduction, label_smoothing.
    """
    h = np.asarray(hidden, np.float64)
    w = np.asarray(linear_weight, np.float64)
    columns = w.reshape(-1, w.shape[-1])  # (C * d1 * ... * dk, D)
    logits = (h @ columns.T).reshape(h.shape[0], *w.shape[:-1])
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    out = cross_entropy(logits, labels, cotangent=cotangent, **options)
    g = out.grad_logits
    g_columns = g.reshape(h.shape[0], -1)
    return LinearResult(
        out.value,
        g_columns @ columns,
        (g_columns.T @ h).reshape(w.shape),
        None if bias is None else g.sum(axis=0),
        out.grad_target,
        g,
    )
