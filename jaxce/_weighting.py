"""Per-example weights and the mean's divisor, shared by the losses, and ``mean_divisor``.

``reduction="mean"`` divides the summed (sample-weighted) losses by the summed weight of the
kept examples: each kept example adds ``w_y * s`` (its label's class weight, 1 without
``weight`` or for probability targets, times its sample weight ``s``, 1 without
``sample_weight``). A batch split into micro-batches, or over devices, has one such divisor
for the whole: ``mean_divisor`` gives each part's share, and passing their sum as
``divisor=`` to every part's loss makes the parts' losses and gradients add up to the whole
batch's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxce import _explicit, _labels, _validation
from jaxce import _row_math as rm


def _concrete(array) -> np.ndarray | None:
    return None if isinstance(array, jax.core.Tracer) else np.asarray(array, np.float64)


def check_sample_weight(value, example_shape: tuple[int, ...]) -> jax.Array | None:
    """Floating per-example weights broadcastable to the examples' shape (concrete: finite)."""
    if value is None:
        return None
    weights = _validation.as_unconverted(value, "sample_weight")  # checked as given
    _validation.check_floating(weights, "sample_weight")
    _validation.check_broadcasts(weights, "sample_weight", example_shape, "one weight per example")
    values = _concrete(weights)
    held = jax.dtypes.canonicalize_dtype(weights.dtype)  # float32 for float64 without x64
    if values is not None:
        flat = np.atleast_1d(values)
        big = np.abs(flat) > float(jnp.finfo(jnp.promote_types(held, jnp.float32)).max)
        for bad, must in ((~np.isfinite(flat), "be finite"), (big, f"fit {held.name}")):
            if bad.any():
                i = tuple(int(j[0]) for j in np.nonzero(bad))
                raise ValueError(
                    f"sample_weight must {must}; got {flat[i]} at position {i}. Pass finite "
                    f"weights {'' if must == 'be finite' else 'of a smaller scale '}(0 drops an "
                    "example, as where=False does)."
                )
        _validation.check_normal(values, "sample_weight", held)
    return jnp.broadcast_to(_validation.as_array(weights, "sample_weight"), example_shape)


def check_divisor(value, reduction: str) -> jax.Array | None:
    """The mean's divisor given by the caller: a real scalar; concrete ones finite and > 0."""
    if value is None:
        return None
    if reduction != "mean":
        raise ValueError(
            f"divisor replaces the divisor of reduction='mean' and applies to it only; got "
            f"reduction={reduction!r}. Use reduction='mean' with divisor=, or drop divisor."
        )
    divisor = _validation.as_unconverted(value, "divisor")  # an int is checked as given
    real = jnp.issubdtype(divisor.dtype, jnp.floating) or jnp.issubdtype(divisor.dtype, jnp.integer)
    if divisor.dtype == jnp.bool_ or not real:
        raise TypeError(
            f"divisor must be a real number (a float or an int, or a scalar array of one); "
            f"got dtype {divisor.dtype}."
        )
    if jnp.issubdtype(divisor.dtype, jnp.floating):
        _validation.check_float_width(divisor, "divisor")
    if divisor.shape != ():
        raise ValueError(
            f"divisor must be a scalar; got shape {divisor.shape}. Pass the summed weight of "
            f"all the examples the mean is over, e.g. the sum of mean_divisor over the parts."
        )
    values = _concrete(divisor)
    if values is not None and not (np.isfinite(values) and values > 0):
        raise ValueError(
            f"divisor must be finite and > 0; got {float(values)}. Pass the summed weight of "
            f"the examples the mean is over (mean_divisor of each part, summed)."
        )
    if values is not None and jnp.issubdtype(divisor.dtype, jnp.floating):
        dtype = jax.dtypes.canonicalize_dtype(divisor.dtype)
        _validation.check_normal(values, "divisor", dtype, zero=False)
    if jnp.issubdtype(divisor.dtype, jnp.integer):  # a count: as the widest float JAX uses
        wide = jax.dtypes.canonicalize_dtype(jnp.float64)
        return jnp.asarray(values.astype(wide)) if values is not None else divisor.astype(wide)
    return _validation.as_array(divisor, "divisor")


def mean_divisor(
    labels: ArrayLike,
    *,
    axis: int = -1,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    where: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
) -> jax.Array:
    """The divisor ``reduction="mean"`` uses for these labels: the kept examples' summed weight.

    Each kept example (its class index not ``ignore_index``, its ``where`` True) adds
    ``w_y * s``: its label's class weight (1 without ``weight``, and for probability targets)
    times its sample weight (1 without ``sample_weight``). Sum it over the parts of a batch
    (micro-batches, or ``jax.lax.psum`` over a data-parallel mesh axis) and pass the sum as
    ``divisor=`` to each part's loss: the parts' losses and gradients then add up to those of
    the whole batch with ``reduction="mean"``.

    Args:
      labels: integer class indices (any shape: one per example) or floating probabilities
        with the classes along ``axis``.
      axis: the class axis of probability targets (ignored for class indices); ``1`` for the
        (N, C, d1, ...) targets of the K-dimensional losses.
      weight: optional floating (C,) class weights, as given to the loss.
      ignore_index: the class index of examples to skip (class indices only).
      where: optional boolean mask broadcastable to the examples' shape; False drops one.
      sample_weight: optional floating per-example weights broadcastable to the examples'
        shape.

    Returns:
      A float32 scalar (float64 if a weight is float64).

    Raises:
      TypeError, ValueError: as the losses do for these arguments; concrete class indices
      outside [0, C) (C from ``weight``; without it, negative ones or ones beyond int32) that
      are not ``ignore_index``. Under ``jit`` such a label makes the divisor NaN, as it makes
      its example's loss NaN: never a silently smaller divisor.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxce import loss
      >>> print(loss.mean_divisor(jnp.array([3, -100, 1, 0])))
      3.0
    """
    labels = _validation.as_unconverted(labels, "labels")
    axis = _validation.check_int(axis, "axis", "Pass the index of the class axis.")
    soft = _validation.label_kind(
        labels, "labels", indices=labels.shape, probs=labels.shape,
        indices_as="one label per example", probs_as="the classes along axis",
    )  # fmt: skip
    ignore_index = _validation.check_ignore_index(ignore_index, labels)
    if soft:
        if labels.ndim == 0:
            raise ValueError(
                "probability labels need a class axis; got a scalar. Pass one row of class "
                "probabilities per example (e.g. shape (N, C)), or class indices."
            )
        if not -labels.ndim <= axis < labels.ndim:
            raise ValueError(
                f"axis={axis} is out of range for probability labels of shape {labels.shape}; "
                f"use an axis in [{-labels.ndim}, {labels.ndim})."
            )
        axis %= labels.ndim
        examples, size = labels.shape[:axis] + labels.shape[axis + 1 :], labels.shape[axis]
    else:
        examples = labels.shape
        size = None if weight is None else _class_count(weight)
    weight = _validation.check_class_vector(weight, "weight", size, "Pass one weight per class.")
    where = _validation.check_where(where, examples)
    sample_weight = check_sample_weight(sample_weight, examples)
    dtypes = [a.dtype for a in (weight, sample_weight) if a is not None]
    ct = rm.compute_dtype(*dtypes) if dtypes else jnp.dtype(jnp.float32)
    if soft:  # every example counts 1 (torch's divisor for probabilities: the rows)
        labels, weight = jnp.ones(examples, ct), None
    else:
        labels, ignore_index = _labels.prepare(labels, size, ignore_index, check_traced=False)
    core = functools.partial(_shares, soft=soft, size=size, ignore_index=ignore_index, ct=ct)
    return _explicit.call(core, (labels, weight, where, sample_weight), P())


def _class_count(weight) -> int:
    weight = _validation.as_array(weight, "weight")
    if weight.ndim != 1:
        raise ValueError(
            f"weight must be a (C,) vector of class weights; got shape {weight.shape}."
        )
    return weight.shape[0]


def _shares(labels, weight, where, sample_weight, *, soft, size, ignore_index, ct):
    """The summed shares of the examples; ``labels`` are the examples' ones if ``soft``."""
    if soft:
        share = labels
    else:
        index, ignored = _labels.normalize(labels, size, ignore_index)
        share = rm.label_weight(weight, index, index >= 0, ct)
        # a label out of range under jit: NaN, as that example's loss (never silently dropped)
        share = jnp.where(ignored, 0, jnp.where(index < 0, jnp.nan, share))
    if sample_weight is not None:
        share = share * sample_weight.astype(ct)
    if where is not None:
        share = jnp.where(where, share, 0)
    return jnp.sum(share)
