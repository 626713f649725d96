"""linear_cross_entropy: a final linear layer fused with cross-entropy, chunked over classes."""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp

from jaxce import _blocks, _chunked, _validation
from jaxce._label_checks import check_label_values


def linear_cross_entropy(
    hidden,
    kernel,
    labels,
    *,
    bias=None,
    chunk_size: int | None = None,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    where=None,
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
      labels: integer class indices, shape ``hidden.shape[:-1]``.
      bias: optional floating (C,) bias.
      chunk_size: classes per chunk. The default picks a multiple of 128 with at most ~16M
        logits per chunk (64 MiB in float32), e.g. 4096 for 4096 rows. A chunk_size of C or
        more computes all logits in one block (no memory saving).
      weight: optional floating (C,) class weights, as torch's ``weight``.
      ignore_index: class index whose rows are skipped.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``; ``"mean"`` divides by the summed weight
        of the kept rows, as cross_entropy.
      label_smoothing: ``eps`` in [0, 1] (torch's definition: ``q = (1 - eps) onehot + eps/C``).
      z_loss: coefficient >= 0 of ``lse^2`` (PaLM z-loss).
      softcap: optional ``c > 0``: logits become ``c * tanh(x / c)`` (Gemma 2).
      where: optional boolean mask broadcastable to ``hidden.shape[:-1]``; False drops a row.

    Returns:
      A scalar for ``"mean"`` and ``"sum"``, else an array of shape ``hidden.shape[:-1]``; in
      the dtype of ``hidden @ kernel + bias``. Differentiable w.r.t. hidden, kernel, bias and
      weight (reverse mode only: it is a ``jax.custom_vjp``).

    Raises:
      TypeError: non-floating hidden, kernel, bias or weight, non-integer labels (class
        probabilities are not supported: use ``cross_entropy``), non-boolean ``where``, or
        options of the wrong type.
      ValueError: a kernel that is not (D, C) with D = ``hidden.shape[-1]``, a bias or weight
        not (C,), labels not of shape ``hidden.shape[:-1]``, ``chunk_size`` < 1, an unknown
        reduction, an option out of range, or, for concrete labels, class indices outside
        [0, C) that are not ``ignore_index``.

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
      torch has no fused linear cross-entropy; Liger Kernel and Cut Cross-Entropy are the
      closest. The kernel is (D, C) as in Flax, where torch's ``nn.Linear.weight`` is (C, D).
      Probability targets are not supported. The weight gradient is returned.

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
    labels = _validation.as_array(labels, "labels")
    _check_arrays(hidden, kernel, labels)
    num_classes = kernel.shape[1]
    bias = _check_bias(bias, num_classes)
    weight = _validation.check_weight(weight, num_classes)
    ignore_index = _validation.check_ignore_index(ignore_index)
    opts, reduction = _validation.check_options(
        _blocks.BLOCK_AXIS, reduction, label_smoothing, z_loss, softcap
    )
    where = _validation.check_where(where, labels.shape)
    rows = int(labels.size)
    chunk = _check_chunk(chunk_size, rows, num_classes)
    check_label_values(labels, num_classes, ignore_index, jit_check=False)
    static = _chunked.Static(opts, chunk)
    return _linear_cross_entropy(
        static, reduction, ignore_index, hidden, kernel, bias, labels, weight, where
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _linear_cross_entropy(static, reduction, ignore_index, hidden, kernel, bias, labels, w, where):
    batch_shape = labels.shape
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    keep = labels != ignore_index
    if where is not None:
        keep = keep & where.reshape(-1)
    rows = _chunked.linear_rows(static, hidden, kernel, bias, labels, w, keep)
    ct, out_dtype = _chunked.dtypes(hidden, kernel, bias)
    if w is None:
        row_weight = keep.astype(ct)
    else:
        safe = jnp.clip(labels, 0, w.shape[0] - 1)
        row_weight = jnp.where(keep, jnp.take(w.astype(ct), safe), 0)
    return _blocks.reduce_rows(rows.reshape(batch_shape), row_weight, reduction, out_dtype)


def _check_arrays(hidden, kernel, labels) -> None:
    for name, array in (("hidden", hidden), ("kernel", kernel)):
        if not jnp.issubdtype(array.dtype, jnp.floating):
            raise TypeError(
                f"{name} must have a floating dtype; got {array.dtype}. "
                f"Cast it, e.g. {name}.astype(jnp.float32)."
            )
    if hidden.ndim == 0:
        raise ValueError("hidden must have shape (..., D) with D features; got a scalar.")
    if kernel.ndim != 2 or kernel.shape[0] != hidden.shape[-1] or kernel.shape[1] == 0:
        raise ValueError(
            f"kernel must have shape (D, C) = ({hidden.shape[-1]}, num_classes) with C >= 1, "
            f"D from hidden {hidden.shape}; got {kernel.shape}. A torch nn.Linear weight is "
            f"(C, D): pass its transpose."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"labels must be integer class indices; got dtype {labels.dtype}. "
            f"linear_cross_entropy does not take class probabilities: compute the logits and "
            f"use cross_entropy, or cast indices with labels.astype(jnp.int32)."
        )
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels must have shape hidden.shape[:-1] = {hidden.shape[:-1]} (one class index "
            f"per row of hidden); got {labels.shape}."
        )


def _check_bias(bias, num_classes: int):
    if bias is None:
        return None
    bias = _validation.as_array(bias, "bias")
    if not jnp.issubdtype(bias.dtype, jnp.floating):
        raise TypeError(
            f"bias must have a floating dtype; got {bias.dtype}. Cast it, e.g. "
            f"bias.astype(jnp.float32)."
        )
    if bias.shape != (num_classes,):
        raise ValueError(
            f"bias must have shape (C,) = ({num_classes},), one entry per kernel column; "
            f"got {bias.shape}."
        )
    return bias


def _check_chunk(chunk_size, rows: int, num_classes: int) -> int:
    if chunk_size is None:
        return _chunked.default_chunk(rows, num_classes)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(
            f"chunk_size must be a Python int (classes per chunk) or None; got {chunk_size!r} "
            f"of type {type(chunk_size).__name__}."
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (classes per chunk) or None; got {chunk_size}.")
    return min(int(chunk_size), num_classes)
