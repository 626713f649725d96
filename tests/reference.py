"""A plain-jnp cross-entropy, written independently of jaxce's kernels, for autodiff checks.

It follows torch's documented formulas literally: log_softmax, an explicit (smoothed, weighted)
target array, a masked sum. It materialises everything and has no custom VJP, so jax.grad,
jax.jvp and jax.hessian all differentiate it directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reference_cross_entropy(
    logits,
    labels,
    *,
    axis=-1,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    where=None,
):
    axis = axis % logits.ndim
    num_classes = logits.shape[axis]
    ct = jnp.promote_types(jnp.float32, jnp.result_type(logits, labels))
    x = logits.astype(ct)
    if softcap is not None:  # a -inf logit (a masked class) stays masked
        x = jnp.where(x == -jnp.inf, x, softcap * jnp.tanh(x / softcap))
    log_p = jax.nn.log_softmax(x, axis=axis)
    lse = jax.nn.logsumexp(x, axis=axis)
    w = jnp.ones(num_classes, ct) if weight is None else weight.astype(ct)
    w_b = jnp.expand_dims(w, tuple(i for i in range(logits.ndim) if i != axis))
    batch_shape = lse.shape
    keep = jnp.ones(batch_shape, bool) if where is None else jnp.broadcast_to(where, batch_shape)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        keep = keep & (labels != ignore_index)
        y = jnp.where(keep, labels, 0)
        target = jax.nn.one_hot(y, num_classes, axis=axis, dtype=ct)
        row_weight = jnp.where(keep, w[y], 0)
    else:
        target = labels.astype(ct)
        row_weight = keep.astype(ct)
    target = target * (1 - label_smoothing) + label_smoothing / num_classes
    coef = w_b * target
    safe_log_p = jnp.where(coef == 0, 0, log_p)  # 0 * log 0 = 0, with a NaN-free gradient
    per_example = -jnp.sum(coef * safe_log_p, axis=axis) + z_loss * row_weight * lse**2
    per_example = jnp.where(keep, per_example, 0)
    if reduction == "none":
        return per_example.astype(logits.dtype)
    total = jnp.sum(per_example)
    if reduction == "mean":
        total = total / jnp.sum(row_weight)
    return total.astype(logits.dtype)
