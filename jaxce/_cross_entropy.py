"""cross_entropy: torch.nn.functional.cross_entropy's contract as a JAX-native function."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxce import _blocks, _kernels, _validation
from jaxce._label_checks import check_label_values


def cross_entropy(
    logits,
    labels,
    *,
    axis: int = -1,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    where=None,
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
      labels: integer class indices of the logits' shape without ``axis``, or floating class
        probabilities of the logits' shape.
      axis: the class axis of ``logits``. Use ``axis=1`` for torch's (N, C, d1, ...) layout.
      weight: optional floating (C,) class weights, as torch's ``weight``.
      ignore_index: class index whose examples are skipped (class indices only).
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.
      label_smoothing: ``eps`` in [0, 1], mixing the target with the uniform distribution.
      z_loss: coefficient >= 0 of the squared log-partition term (PaLM / T5X z-loss).
      softcap: optional ``c > 0``; logits become ``c * tanh(logits / c)`` first (Gemma 2).
      where: optional boolean mask broadcastable to the examples' shape; False drops an example.
      check_labels: under ``jit``, also check class indices with ``checkify.check`` (wrap the
        caller in ``jax.experimental.checkify.checkify``). Eager calls always check them.
      custom_vjp: True (default) uses the lean custom VJP. False differentiates the same math
        with plain autodiff, for forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``).

    Returns:
      A scalar for ``"mean"`` and ``"sum"``, else an array of the examples' shape; in the logits'
      dtype.

    Raises:
      TypeError: non-floating logits, labels neither integer nor floating, non-floating weight,
        non-boolean ``where``, or options of the wrong type.
      ValueError: a bad axis or labels' shape, weight not of shape (C,), an unknown reduction,
        ``label_smoothing`` outside [0, 1], negative ``z_loss``, non-positive ``softcap``,
        ``ignore_index`` with probabilities, or, for concrete arrays, class indices outside
        [0, C) that are not ``ignore_index``.

    Numerics:
      float16 and bfloat16 inputs are accumulated in float32 and the result is returned in the
      input dtype. The log-sum-exp is shifted by the row maximum, so logits up to |x| ~ 3e4 stay
      finite and accurate in float32. The gradient w.r.t. the logits is ``coef * softmax -
      weight * q``, rebuilt from two saved floats per example. -inf logits (masked classes) give
      finite losses and gradients whenever the target puts no mass on them; a target with mass
      on a -inf logit gives an infinite loss, as the math says, and still a finite gradient.
      Under ``jit`` without ``check_labels``, an out-of-range class index makes its example's
      loss and gradient NaN rather than silently wrong.

    Differences from torch:
      - Probability targets with a -inf logit where the target is 0: torch gives NaN (0 * -inf);
        jaxce gives the finite value (0 * log 0 = 0). There, the gradient w.r.t. that target
        is 0 in jaxce (a convention that keeps it finite); torch and the one-sided derivative
        give +inf.
      - float16 on CPU: torch accumulates in float16 and overflows on large means; jaxce does not.
      - torch's ``ignore_index`` is silently unused with probabilities; jaxce raises, so
        pass ``where=`` to drop examples instead.
      - torch has no gradient w.r.t. ``weight``; jaxce returns it.
      - ``z_loss``, ``softcap``, ``where`` and a free class ``axis`` are extensions.

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
    labels = _validation.as_array(labels, "labels")
    spec = _validation.check_logits_labels(logits, labels, axis)
    weight = _validation.check_weight(weight, spec.num_classes)
    ignore_index = _validation.check_ignore_index(ignore_index)
    if spec.soft_labels and ignore_index != -100:
        raise ValueError(
            f"ignore_index={ignore_index} applies to class indices only, but labels are "
            f"probabilities (dtype {labels.dtype}). Drop examples with where= instead."
        )
    opts, reduction = _validation.check_options(
        spec.axis, reduction, label_smoothing, z_loss, softcap
    )
    where = _validation.check_where(where, spec.batch_shape)
    if not spec.soft_labels:
        check_label_values(labels, spec.num_classes, ignore_index, jit_check=bool(check_labels))
    return _cross_entropy(
        opts, reduction, ignore_index, bool(custom_vjp), logits, labels, weight, where
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _cross_entropy(opts, reduction, ignore_index, use_custom_vjp, logits, labels, weight, where):
    keep = jnp.ones(labels.shape[:0], bool) if where is None else where
    ct = _kernels.compute_dtype(logits.dtype)
    if jnp.issubdtype(labels.dtype, jnp.floating):
        keep = jnp.broadcast_to(keep, logits.shape[: opts.axis] + logits.shape[opts.axis + 1 :])
        rows_fn = _kernels.soft_rows if use_custom_vjp else _kernels.plain_soft_rows
        row_weight = keep.astype(ct)
    else:
        keep = keep & (labels != ignore_index)
        rows_fn = _kernels.index_rows if use_custom_vjp else _kernels.plain_index_rows
        if weight is None:
            row_weight = keep.astype(ct)
        else:
            safe = jnp.clip(labels, 0, weight.shape[0] - 1)
            row_weight = jnp.where(keep, jnp.take(weight.astype(ct), safe), 0)
    rows = rows_fn(opts, logits, labels, weight, keep)
    return _blocks.reduce_rows(rows, row_weight, reduction, logits.dtype)
