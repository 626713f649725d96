"""linear_cross_entropy: a final linear layer fused with cross-entropy, chunked over classes.

The classes are processed in chunks of ``chunk`` columns of the kernel. The forward pass keeps
an online log-sum-exp per row (the running maximum ``m`` and the block sums of
``jaxce._online_lse``, rebased whenever ``m`` grows) and saves three floats per row. The
backward pass recomputes each chunk's logits, forms its logits gradient with ``row_grad`` and
contracts it at once into the gradients of hidden, kernel, bias and weight. At no point does
an array of more than (rows, chunk) logits exist.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxce import _labels, _validation
from jaxce import _online_lse as ol
from jaxce import _row_math as rm
from jaxce._validation import Reduction

_LOGITS_PER_CHUNK = 1 << 24  # default chunk: at most 16M logits (64 MiB in float32)
_CHUNK_ALIGN = 128


def linear_cross_entropy(
    hidden: ArrayLike,
    kernel: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    chunk_size: int | None = None,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    where: ArrayLike | None = None,
    num_classes: int | None = None,
) -> jax.Array:
    r"""Cross-entropy of a linear layer's output, without materialising the logits.

    Equals ``cross_entropy(hidden @ kernel + bias, labels, ...)`` (class indices, classes on
    the last axis) but never holds the (N, C) logits or their gradient: the C classes are
    processed ``chunk_size`` columns of ``kernel`` at a time. The forward pass keeps an online
    log-sum-exp per row; with ``x = hidden @ kernel + bias``, chunks ``B_1, B_2, ...`` and
    running maximum ``m``,

    .. math::

        m \leftarrow \max(m, \max_{c \in B_k} x_c), \quad
        S \leftarrow S\, e^{m_\text{old} - m} + \sum_{c \in B_k} e^{x_c - m}, \quad
        \log \sum_c e^{x_c} = m + \log S,

    together with the target logit and, for label smoothing, ``sum_c w_c (m - x_c)``, each
    rebased when ``m`` grows. The loss per row is then cross_entropy's ``(1 - eps) w_y (lse -
    x_y) + eps / C sum_c w_c (lse - x_c) + z_loss w_y lse^2``. The backward pass recomputes each
    chunk's logits ``x_B`` and its gradient ``G_B = g (coef * softmax - q)`` from three saved
    floats per row, and accumulates ``d hidden += G_B kernel_B^T``, ``d kernel_B = hidden^T G_B``,
    ``d bias_B = sum_rows G_B`` and the weight gradient.

    Args:
      hidden: floating (..., D) features, e.g. the last hidden states (N, D).
      kernel: floating (D, C) weights, as a Flax ``Linear`` kernel (torch's ``weight.T``).
      labels: integer class indices (any integer dtype), shape ``hidden.shape[:-1]``.
      bias: optional floating (C,) bias.
      chunk_size: classes per chunk, an int >= 1. The default picks a multiple of 128 with at
        most ~16M logits per chunk (64 MiB in float32), e.g. 4096 for 4096 rows. A chunk_size
        of C or more computes all logits in one block (no memory saving).
      weight: optional floating (C,) class weights, as torch's ``weight``.
      ignore_index: class index whose rows are skipped; one the labels' dtype cannot hold
        matches no label.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``; ``"mean"`` divides by the summed weight
        of the kept rows, as cross_entropy.
      label_smoothing: ``eps`` in [0, 1] (torch's definition: ``q = (1 - eps) onehot + eps/C``).
      z_loss: coefficient >= 0 of ``lse^2`` (PaLM z-loss).
      softcap: optional ``c > 0``: logits become ``c * tanh(x / c)`` (Gemma 2).
      where: optional boolean mask broadcastable to ``hidden.shape[:-1]``; False drops a row.
      num_classes: the true class count of a kernel padded to C columns (e.g. a vocabulary
        rounded up to a multiple of 128): columns >= ``num_classes`` are never computed, and
        their kernel, bias and weight gradients are 0. Default: all C columns are classes.

    Returns:
      A scalar for ``"mean"`` and ``"sum"``, else an array of shape ``hidden.shape[:-1]``; in
      the dtype of ``hidden @ kernel + bias``. Differentiable w.r.t. hidden, kernel, bias and
      weight (reverse mode only: it is a ``jax.custom_vjp``).

    Raises:
      TypeError: non-floating hidden, kernel, bias or weight, non-integer labels (class
        probabilities are not supported: use ``cross_entropy``), non-boolean ``where``,
        options of the wrong type, or forward-mode autodiff.
      ValueError: a kernel that is not (D, C) with D = ``hidden.shape[-1]``, a bias or weight
        not (C,), labels not of shape ``hidden.shape[:-1]``, ``chunk_size`` < 1, an unknown
        reduction, an option out of range, ``num_classes`` outside [0, C], or, for concrete
        arrays, non-finite class weights or class indices outside [0, C) that are not
        ``ignore_index``.

    Numerics:
      Logits are accumulated in float32 (float64 for float64 inputs) through
      ``preferred_element_type``, also for float16/bfloat16 inputs, and never rounded to the
      input dtype; the gradient matmuls take the logits gradient in the input dtype. Matmuls
      use JAX's default precision, like ``hidden @ kernel`` would: full float32 on CPU, but
      possibly TF32 or bfloat16 passes on GPU/TPU unless you set
      ``jax.default_matmul_precision("highest")``. The log-sum-exp is shifted by the running
      maximum, so results match the unfused path to float32 rounding (the summation order over
      classes differs). Out-of-range labels under ``jit`` give NaN, as in cross_entropy.
      Memory: O(N * chunk_size) temporaries besides the inputs and gradients; time: one extra
      matmul (the backward recomputes the logits), about 4/3 of the unfused path's matmuls.

    Differences from torch:
      torch 2.13's ``F.linear_cross_entropy(input, linear_weight, target, ...)`` takes the
      (C, D) ``nn.Linear`` weight; here the kernel is (D, C) as in Flax (pass
      ``linear_weight.T``). torch also takes class probabilities and K-dimensional outputs,
      jaxce class indices only; torch's chunked path has no higher-order autodiff, jaxce's
      custom VJP supports reverse over reverse. The weight gradient is returned; ``z_loss``,
      ``softcap``, ``where`` and ``num_classes`` are extensions.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxce import loss
      >>> hidden = jnp.array([[1.0, 0.0], [0.5, 2.0], [0.0, -1.0]])
      >>> kernel = jnp.array([[1.0, -1.0, 0.5], [0.0, 1.0, 2.0]])
      >>> labels = jnp.array([0, 2, 1])
      >>> fused = loss.linear_cross_entropy(hidden, kernel, labels, chunk_size=2)
      >>> print(f"{fused:.4f} {loss.cross_entropy(hidden @ kernel, labels):.4f}")
      0.6821 0.6821
    """
    hidden = _validation.as_array(hidden, "hidden")
    kernel = _validation.as_array(kernel, "kernel")
    labels = _validation.as_unconverted(labels, "labels")
    _validation.check_linear_arrays(hidden, kernel, labels)
    columns = kernel.shape[1]
    count = _validation.check_num_classes(num_classes, columns, "kernel's class axis")
    bias = _validation.check_class_vector(
        bias, "bias", columns, "One entry per kernel column.", finite=False
    )
    weight = _validation.check_class_vector(weight, "weight", columns, "Pass one weight per class.")
    ignore_index = _validation.check_ignore_index(ignore_index)
    opts = rm.Options(ol.BLOCK_AXIS, *_validation.check_options(label_smoothing, z_loss, softcap))
    reduction = _validation.check_reduction(reduction)
    where = _validation.check_where(where, labels.shape)
    chunk = _validation.check_chunk_size(chunk_size, count)
    if chunk is None:
        chunk = default_chunk(int(labels.size), count)
    labels, ignore_index = _labels.prepare(labels, count, ignore_index, check_traced=False)
    fix = "For forward mode use cross_entropy(hidden @ kernel + bias, ..., custom_vjp=False)."
    with _validation.reverse_mode_only("linear_cross_entropy", fix):
        return _linear_cross_entropy(
            hidden, kernel, bias, labels, weight, where, static=Static(opts, chunk, count),
            reduction=reduction, ignore_index=ignore_index,
        )  # fmt: skip


class Static(NamedTuple):
    """Hashable static configuration of one call."""

    opts: rm.Options  # axis is 1: chunks are (rows, classes)
    chunk: int
    num_classes: int  # the real classes: the kernel's first columns


def default_chunk(num_rows: int, num_classes: int) -> int:
    """A multiple of 128 classes with at most ~16M logits per chunk, capped at the classes."""
    chunk = max(_CHUNK_ALIGN, _LOGITS_PER_CHUNK // max(num_rows, 1) // _CHUNK_ALIGN * _CHUNK_ALIGN)
    return max(1, min(chunk, num_classes))


@functools.partial(jax.jit, static_argnames=("static", "reduction", "ignore_index"))
def _linear_cross_entropy(
    hidden, kernel, bias, labels, w, where, *, static, reduction, ignore_index
):
    batch_shape = labels.shape
    hidden = hidden.reshape(labels.size, hidden.shape[-1])
    index, ignored = _labels.normalize(labels.reshape(-1), static.num_classes, ignore_index)
    keep = ~ignored if where is None else ~ignored & where.reshape(-1)
    ct, out_dtype = dtypes(hidden, kernel, bias)
    if static.num_classes == 0:  # every kept label is out of range
        rows = jnp.where(keep, jnp.nan, 0).astype(ct)
    else:
        rows = linear_rows(static, hidden, kernel, bias, index, w, keep)
    row_weight = jnp.where(keep, rm.label_weight(w, index, index >= 0, ct), 0)
    return rm.reduce_rows(rows.reshape(batch_shape), row_weight, reduction, out_dtype)


def dtypes(hidden, kernel, bias):
    arrays = (hidden, kernel) if bias is None else (hidden, kernel, bias)
    dtypes = [a.dtype for a in arrays]
    return rm.compute_dtype(*dtypes), jnp.result_type(*dtypes)


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
    return rm.softcap(static.opts, x, ct)


def _for_chunks(num_classes: int, chunk: int, step, carry):
    """Runs ``step(carry, offset, size)`` over the full chunks (a scan), then the remainder."""
    full, rest = divmod(num_classes, chunk)
    if full:
        body = lambda c, offset: (step(c, offset, chunk), None)
        carry, _ = lax.scan(body, carry, jnp.arange(full, dtype=jnp.int32) * chunk)
    if rest:
        carry = step(carry, full * chunk, rest)
    return carry


def _row_inputs(index, weight, num_classes, ct):
    in_range = index >= 0
    w_y = rm.label_weight(weight, index, in_range, ct)[:, None]
    w_sum = num_classes if weight is None else jnp.sum(weight[:num_classes].astype(ct))
    return in_range[:, None], w_y, w_sum


def _forward(static: Static, hidden, kernel, bias, index, weight, keep):
    ct, _ = dtypes(hidden, kernel, bias)
    opts, rows, num_classes = static.opts, hidden.shape[0], static.num_classes

    def step(carry, offset, size):
        m, sums, w_seen = carry
        k, b, w = _slices(kernel, bias, weight, offset, size)
        xs = _chunk_logits(static, hidden, k, b, ct)
        m_new = jnp.maximum(m, jnp.max(xs, axis=1, keepdims=True))
        delta = jnp.where(m == -jnp.inf, 0, m_new - m)  # sums so far are 0 or +-inf then
        s = xs - jnp.where(m_new == -jnp.inf, 0, m_new)
        seen = ((index >= 0) & (index < offset))[:, None].astype(ct)
        new = ol.block_sums(opts, s, ol.onehot(index, offset, size), w)
        sums = ol.add(ol.rebase(sums, delta, seen, w_seen), new)
        w_seen = w_seen + (size if w is None else jnp.sum(w.astype(ct)))
        return m_new, sums, w_seen

    zeros = jnp.zeros((rows, 1), ct)
    sums = ol.BlockSums(zeros, zeros, zeros if opts.label_smoothing else None)
    init = (jnp.full((rows, 1), -jnp.inf, ct), sums, jnp.zeros((), ct))
    m, sums, _ = _for_chunks(num_classes, static.chunk, step, init)
    m = jnp.where(m == -jnp.inf, 0, m)
    in_range, w_y, w_sum = _row_inputs(index, weight, num_classes, ct)
    lse0, smooth, t = ol.row_terms(sums, w_sum, in_range, w_y)
    loss = rm.row_loss(
        opts, num_classes, t, m, lse0, smooth, keep[:, None], weighted=weight is not None
    )
    return loss[:, 0], (m, lse0, t.nll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def linear_rows(static: Static, hidden, kernel, bias, index, weight, keep):
    """Per-row loss of ``cross_entropy(hidden @ kernel + bias, index)``; hidden is (N, D)."""
    return _forward(static, hidden, kernel, bias, index, weight, keep)[0]


def _linear_rows_fwd(static, hidden, kernel, bias, index, weight, keep):
    loss, rows = _forward(static, hidden, kernel, bias, index, weight, keep)
    return loss, (hidden, kernel, bias, index, weight, keep, *rows)


def _linear_rows_bwd(static, res, g):
    hidden, kernel, bias, index, weight, keep, m, lse0, nll = res
    ct, _ = dtypes(hidden, kernel, bias)
    opts, num_classes = static.opts, static.num_classes
    mm = jnp.result_type(hidden.dtype, kernel.dtype)  # operand dtype of the gradient matmuls
    in_range, w_y, w_sum = _row_inputs(index, weight, num_classes, ct)
    g, keep = g[:, None].astype(ct), keep[:, None]

    def step(carry, offset, size):
        d_hidden, d_kernel, d_bias, d_weight = carry
        k, b, w = _slices(kernel, bias, weight, offset, size)
        s = _chunk_logits(static, hidden, k, b, ct) - m
        t = rm.RowTerms(in_range, ol.onehot(index, offset, size), w_y, nll)
        dx, dw = rm.row_grad(opts, num_classes, w_sum, s, m, lse0, t, w, g, keep)
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
