"""cross_entropy: torch.nn.functional.cross_entropy's contract, in JAX.

The public function checks its arguments once; ``_cross_entropy`` (compiled) slices a padded
class axis, turns labels and masks into per-example row weights, runs the per-example kernels
of ``jaxce._dense_vjp`` and reduces their losses (``jaxce._row_math.reduce_rows``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxce import _explicit, _labels, _options, _validation
from jaxce import _row_math as rm
from jaxce._dense_vjp import index_forward, index_rows, soft_forward, soft_rows
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
      label_smoothing: ``eps`` in [0, 1], mixing the target with the uniform distribution
        (at 1 the target is uniform: the labels' values do not enter, not even a NaN).
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
        Both accumulate in float32 and give dropped examples a zero gradient; where the loss
        is infinite (a target's mass on a -inf logit) the conventions above are the custom
        VJP's, and plain autodiff gives what it gives.

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
    options = dict(
        axis=axis, weight=weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, where=where,
        num_classes=num_classes, check_labels=check_labels, custom_vjp=custom_vjp,
    )  # fmt: skip
    return checked_call(logits, labels, names=("logits", "labels"), **options)


def checked_call(logits, labels, *, names: tuple[str, str], axis, weight, ignore_index,
                 reduction, label_smoothing, z_loss, softcap, where, num_classes, check_labels,
                 custom_vjp) -> jax.Array:  # fmt: skip
    """``cross_entropy``'s checks and call; ``names`` name the two arrays in the messages."""
    logits = _validation.as_array(logits, names[0])
    labels = _validation.as_unconverted(labels, names[1])
    spec = _validation.check_logits_labels(logits, labels, axis, names)
    count = _validation.check_num_classes(num_classes, spec.num_classes, "logits' class axis")
    ct = rm.compute_dtype(logits.dtype)
    weight = _validation.check_class_vector(
        weight, "weight", spec.num_classes, "Pass one weight per class.", compute=ct
    )
    ignore_index = _validation.check_ignore_index(ignore_index, labels, names[1])
    opts = rm.Options(spec.axis, *_options.check_options(label_smoothing, z_loss, softcap, ct))
    reduction = _validation.check_reduction(reduction)
    where = _validation.check_where(where, spec.batch_shape)
    check_labels = _validation.check_flag(check_labels, "check_labels")
    custom_vjp = _validation.check_flag(custom_vjp, "custom_vjp")
    if spec.soft_labels:
        labels = jnp.asarray(labels)
    else:
        labels, ignore_index = _labels.prepare(
            labels, count, ignore_index, check_traced=check_labels, name=names[1]
        )
    fix = "Pass custom_vjp=False to differentiate the same math with plain autodiff, any mode."
    core = functools.partial(
        _cross_entropy, opts=opts, reduction=reduction, ignore_index=ignore_index,
        num_classes=count, use_custom_vjp=custom_vjp,
    )  # fmt: skip
    out = lambda: P() if reduction != "none" else _explicit.examples_spec(logits, [spec.axis])
    with _validation.reverse_mode_only("cross_entropy", fix):
        return _explicit.call(core, (logits, labels, weight, where), out)


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
    # float16/bfloat16 class weights get their gradient's parts (the loss's, the divisor's)
    # added in float32, and rounded once
    weight = None if weight is None else rm.widened(weight)
    if soft:
        plain = functools.partial(soft_forward, plain=True)
        rows_fn = soft_rows if use_custom_vjp else _plain(plain, ct)
        row_weight = keep.astype(ct)
        if num_classes == 0:  # as torch: per-example losses 0, the mean NaN
            rows, row_weight = jnp.zeros(batch_shape, ct), jnp.zeros(batch_shape, ct)
        else:
            rows = rows_fn(opts, logits, labels, weight, keep)
    else:
        index, ignored = _labels.normalize(labels, num_classes, ignore_index)
        keep = keep & ~ignored
        row_weight = jnp.where(keep, rm.label_weight(weight, index, index >= 0, ct), 0)
        rows_fn = index_rows if use_custom_vjp else _plain(index_forward, ct)
        if num_classes == 0:  # every kept label is out of range
            rows = jnp.where(keep, jnp.nan, 0).astype(ct)
        else:
            rows = rows_fn(opts, logits, index, weight, keep)
    return rm.reduce_rows(rows, row_weight, reduction, logits.dtype)


def _plain(forward, ct):
    """``forward``'s per-example losses, made safe for plain autodiff (``custom_vjp=False``).

    The logits (and probability targets) enter in the compute dtype, so the gradient's parts
    add up in float32 for float16/bfloat16 inputs, as the custom VJP's do; and a dropped
    example's are replaced by zeros, since a ``where`` that hides a NaN or inf from the loss
    does not hide it from the gradient.
    """

    def rows(opts, logits, labels, weight, keep):
        kept = jnp.expand_dims(keep, opts.axis)
        logits = jnp.where(kept, logits.astype(ct), 0)
        if jnp.issubdtype(labels.dtype, jnp.floating):
            labels = jnp.where(kept, rm.widened(labels), 0)
        return forward(opts, logits, labels, weight, keep)[0]

    return rows
