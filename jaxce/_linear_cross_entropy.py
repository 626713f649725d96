"""linear_cross_entropy: a final linear layer fused with cross-entropy, in Flax's layout.

The public function and its contract; the work is ``jaxce._linear_call`` (checks, flattening),
``jaxce._linear_vjp`` (the custom VJPs) and ``jaxce._linear_sweep`` (the row-chunked sweep).
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from jaxce._linear_call import linear_loss
from jaxce._validation import Reduction


def linear_cross_entropy(
    hidden: ArrayLike,
    kernel: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    where: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    divisor: ArrayLike | None = None,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    row_chunk_size: int | None = None,
) -> jax.Array:
    r"""Cross-entropy of a linear layer's output, without materialising the logits.

    Equals ``cross_entropy(x, labels, axis=hidden.ndim - 1, ...)`` for the logits
    ``x = einsum("...d,dc...->...c...", hidden, kernel) + bias`` (with a 2-D kernel, simply
    ``hidden @ kernel + bias``), but never holds all of them or their gradient. An
    undifferentiated call takes the rows of ``hidden`` ``row_chunk_size`` at a time; a chunk's
    logits cover every class, so its log-sum-exp is exact (one matmul). The gradients come
    from one of two sweeps:

    - over class chunks, for class indices without ``out_features`` and no more rows than
      classes (a language-model head): ``chunk_size`` classes of every row at a time, first
      for each row's maximum, sum of exponentials and label logit (online, rescaled as the
      maximum grows), then again for the gradient ``g_B`` of the chunk's logits:

      .. math::

          \nabla K_B = h^\top g_B \ \text{(written once)}, \quad
          \nabla h \mathrel{+}= g_B K_B^\top,

      four matmuls, each over all N rows; besides the gradients only ``d hidden`` (N, D) is
      accumulated;
    - over row chunks otherwise (probabilities, K-dimensional logits, more rows than
      classes): each chunk's losses and logits gradient at once,

      .. math::

          x_B = h_B K + b, \quad \ell_B, \nabla_{x_B} = \text{cross\_entropy's VJP}(x_B),
          \quad \nabla h_B = \nabla_{x_B} K^\top, \quad
          \nabla K \mathrel{+}= h_B^\top \nabla_{x_B},

      three matmuls, the kernel's gradient accumulated over the chunks.

    With ``reduction="mean"`` or ``"sum"`` the loss is a scalar, so a differentiated call
    computes the loss and the finished gradients in that one sweep and the backward pass only
    scales them by the cotangent. ``reduction="none"`` keeps its inputs and runs the gradient
    sweep in the backward pass (after the forward's matmul).

    Per example (a row of ``hidden``, at each of the ``out_features`` positions), the loss is
    cross_entropy's: with ``p = softmax(softcap(x))``, ``eps = label_smoothing`` and C classes,
    ``-sum_c w_c q_c log p_c + z_loss * r * lse^2``, where for a class index ``y`` the target is
    ``q = (1 - eps) onehot(y) + eps / C`` and ``r = w_y``; for probabilities ``t`` it is
    ``q = (1 - eps) t + eps / C`` and ``r = 1``. Each is then multiplied by its
    ``sample_weight`` ``s`` (1 by default). ``"sum"`` sums, ``"none"`` returns them, and
    ``"mean"`` divides the sum by ``sum(r * s)`` over the kept examples (torch's divisor when
    ``s = 1``), or by ``divisor`` when given.

    Args:
      hidden: floating (..., D) features, e.g. the last hidden states (N, D) or (B, T, D).
      kernel: floating (D, C) weights, as a Flax ``Linear`` kernel (torch's ``weight.T``), or
        (D, C, d1, ..., dk) for torch's K-dimensional loss (``out_features=(d1, ..., dk)``):
        each of the positions has its own softmax over the C classes.
      labels: integer class indices (any integer dtype) of shape ``hidden.shape[:-1] +
        out_features``, or floating class probabilities of shape ``hidden.shape[:-1] + (C,) +
        out_features``.
      bias: optional floating (C, *out_features) bias.
      weight: optional floating (C,) class weights, as torch's ``weight``.
      ignore_index: class index whose examples are skipped (class indices only); one the
        labels' dtype cannot hold matches no label.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.
      label_smoothing: ``eps`` in [0, 1] (torch's definition).
      z_loss: coefficient >= 0 of ``lse^2`` (PaLM z-loss).
      softcap: optional ``c > 0``: logits become ``c * tanh(x / c)`` (Gemma 2).
      where: optional boolean mask broadcastable to the examples' shape; False drops one.
      sample_weight: optional floating per-example weights (Keras's ``sample_weight``, a
        per-token loss weight) broadcastable to the examples' shape; see the divisor above.
      divisor: optional real scalar (``reduction="mean"`` only), replacing the mean's divisor:
        pass the summed ``mean_divisor`` of every micro-batch (or its ``jax.lax.psum`` over a
        data-parallel axis) so that the parts' gradients add up to the whole batch's.
      num_classes: the true class count of a kernel padded to C columns (a vocabulary rounded
        up to a multiple of 128): columns >= ``num_classes`` are never computed and their
        kernel, bias and weight gradients are 0. Default: all C columns are classes.
      chunk_size: kernel columns per matmul, an int >= 1 (over row chunks, default 2048):
        the matmuls' operand copies are (D, chunk_size). Over class chunks it is the chunk:
        memory O(N * chunk_size) besides the inputs and the gradients (by default about 1M
        logits, a multiple of 128 in [128, 2048]).
      row_chunk_size: rows per chunk, an int >= 1. The default keeps a chunk's logits near 4M
        (16 MiB in float32) with at least 64 rows: memory O(row_chunk_size * C) besides the
        inputs and the gradients; fewer, larger chunks read the kernel fewer times.
        Chunks of either kind all have the same size (one compiled body): where the size does
        not divide the count, the last chunk overlaps the one before it, whose rows or columns
        it computes again and counts once (at most one chunk of extra work in each loop).

    Returns:
      A scalar for ``"mean"`` and ``"sum"``, else an array of the examples' shape; in the dtype
      of ``hidden @ kernel + bias``. Differentiable w.r.t. hidden, kernel, bias, weight,
      probability labels, sample_weight and divisor (reverse mode: a ``jax.custom_vjp``).

    Raises:
      TypeError: non-floating hidden, kernel, bias, weight or sample_weight, labels neither
        integer nor floating, non-boolean ``where``, options of the wrong type, or forward-mode
        autodiff.
      ValueError: a kernel that is not (D, C, ...) with D = ``hidden.shape[-1]``, a bias not
        (C, *out_features), a weight not (C,), labels of the wrong shape, an unknown
        reduction, an option out of range, ``ignore_index`` with probabilities, ``divisor``
        with a reduction other than "mean" or not a scalar, ``num_classes`` outside [0, C],
        chunk sizes < 1, a symbolic (``jax.export``) dimension in hidden or the kernel, or,
        for concrete arrays, non-finite class or sample weights, a divisor not finite and
        > 0, or class indices outside [0, C) that are not ``ignore_index``. A traced divisor
        of 0 (or weights that sum to 0) gives a NaN mean, with NaN gradients, as torch's mean
        over no weight.

    Numerics:
      Logits are accumulated in float32 (float64 for float64 inputs) through
      ``preferred_element_type``, also for float16/bfloat16 inputs, and never rounded to the
      input dtype; the kernel gradient is accumulated in float32 and rounded once (over class
      chunks each class's is one matmul over every row; over row chunks, a float32 sum across
      them); the gradient matmuls take the logits gradient in the input dtype. The two sweeps
      add the exponentials in different orders, so a differentiated call's value can differ
      from an undifferentiated one's in the last bits. Matmuls
      use JAX's default precision (full float32 on CPU; possibly TF32 or bfloat16 passes on
      GPU/TPU unless ``jax.default_matmul_precision("highest")``). The log-sum-exp of a row is
      cross_entropy's, so values match the unfused path to rounding. Out-of-range labels under
      ``jit`` give NaN, as in cross_entropy.

    Differences from torch:
      torch 2.13's ``F.linear_cross_entropy(input, linear_weight, target, ...)`` takes the
      (C, ..., D) ``nn.Linear`` weight (``jaxce.loss.torch_linear_cross_entropy`` does too);
      here the kernel is (D, C, ...) as in Flax, and ``hidden`` may have any batch shape
      (torch: (D,) or (N, D)). torch's chunked path (``options=LinearCrossEntropyOptions()``)
      takes neither label smoothing, nor probabilities, nor K-dimensional outputs, nor
      higher-order autodiff; this one takes all of them (reverse over reverse included). The
      gradients w.r.t. ``weight`` are returned; ``z_loss``, ``softcap``, ``where``,
      ``sample_weight``, ``divisor`` and ``num_classes`` are extensions.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxce import loss
      >>> hidden = jnp.array([[1.0, 0.0], [0.5, 2.0], [0.0, -1.0]])
      >>> kernel = jnp.array([[1.0, -1.0, 0.5], [0.0, 1.0, 2.0]])
      >>> labels = jnp.array([0, 2, 1])
      >>> fused = loss.linear_cross_entropy(hidden, kernel, labels, row_chunk_size=2)
      >>> print(f"{fused:.4f} {loss.cross_entropy(hidden @ kernel, labels):.4f}")
      0.6821 0.6821
    """
    return linear_loss(
        hidden, kernel, labels, torch_layout=False, bias=bias, weight=weight,
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, where=where, sample_weight=sample_weight,
        divisor=divisor, num_classes=num_classes, chunk_size=chunk_size,
        row_chunk_size=row_chunk_size,
    )  # fmt: skip
