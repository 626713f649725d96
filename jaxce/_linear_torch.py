"""torch_linear_cross_entropy: torch 2.13's ``F.linear_cross_entropy`` contract, in JAX.

Ported code keeps its shapes: ``input`` (N, D), ``linear_weight`` (C, D) as an ``nn.Linear``
weight (or (C, d1, ..., dk, D) for the K-dimensional loss), ``target`` class indices or
probabilities, and torch's option names and defaults. The work is the fused linear loss's
(``jaxce._linear_call``), run on the kernel in this layout (no transposed copy of it or of
its gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxce import _validation
from jaxce._linear_call import linear_loss
from jaxce._validation import Reduction


def resolve_ignore_index(ignore_index: int | None, target) -> int:
    """torch's rule: None means -100 for class indices; probabilities take None only."""
    if ignore_index is None:
        return -100
    if jnp.issubdtype(target.dtype, jnp.floating):
        raise ValueError(
            f"ignore_index={ignore_index!r} cannot be given when target holds class "
            f"probabilities (dtype {target.dtype}), as in torch. Leave it None, or drop "
            f"examples with where=."
        )
    return ignore_index


def torch_linear_cross_entropy(
    input: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = None,
    weight: ArrayLike | None = None,
    reduction: Reduction = "mean",
    ignore_index: int | None = None,
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
    """``torch.nn.functional.linear_cross_entropy``, fused: torch's layout, names and defaults.

    Equals ``cross_entropy(logits, target, axis=input.ndim - 1, ...)`` with the logits
    ``input @ linear_weight.T + linear_bias`` reshaped to ``(*input.shape[:-1], C, d1, ...,
    dk)``, computed as ``linear_cross_entropy`` computes them (row chunks through every class;
    see there for the math, the numerics and the memory). The examples are the input's rows
    and, for the K-dimensional loss, the positions (d1, ..., dk) of each row.

    Args:
      input: floating (D,) or (N, D) features (any (..., D) is accepted).
      linear_weight: floating (C, D), an ``nn.Linear`` weight, or (C, d1, ..., dk, D) for the
        K-dimensional loss (torch's ``out_features``; it requires batched input, as in torch).
      target: integer class indices of shape ``input.shape[:-1] + (d1, ..., dk)``, or floating
        probabilities of shape ``input.shape[:-1] + (C, d1, ..., dk)``.
      linear_bias: optional floating (C, d1, ..., dk) bias.
      weight: optional floating (C,) class weights.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.
      ignore_index: the class index of examples to skip; None (torch's default) means -100
        for class indices. With probabilities it must be None, as in torch.
      label_smoothing: ``eps`` in [0, 1].
      z_loss, softcap, where, sample_weight, divisor, num_classes, chunk_size,
        row_chunk_size: jaxce's extensions, as in ``linear_cross_entropy``.

    Returns:
      A scalar for ``"mean"`` and ``"sum"``, else an array of the examples' shape, in the dtype
      of the logits. Differentiable (reverse mode) w.r.t. input, linear_weight, linear_bias,
      weight, probability targets, sample_weight and divisor.

    Raises:
      TypeError, ValueError: as ``linear_cross_entropy``, naming torch's argument names; also
        for a K-dimensional ``linear_weight`` with unbatched input, and for ``ignore_index``
        with probabilities.

    Differences from torch:
      torch takes int64 class indices only, jaxce any integer dtype; torch takes (D,) or
      (N, D) input, jaxce any (..., D). The chunked path is always on (torch's
      ``options=LinearCrossEntropyOptions()`` takes no smoothing, probabilities or
      K-dimensional loss, and falls back to the reference path for them); there is no
      ``options`` argument. The class-weight gradient is returned.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxce import loss
      >>> x = jnp.array([[1.0, 0.0], [0.5, 2.0], [0.0, -1.0]])
      >>> w = jnp.array([[1.0, 0.0], [-1.0, 1.0], [0.5, 2.0]])  # (C, D), as nn.Linear
      >>> print(f"{loss.torch_linear_cross_entropy(x, w, jnp.array([0, 2, 1])):.4f}")
      0.6821
    """
    input = _validation.as_array(input, "input")
    linear_weight = _validation.as_array(linear_weight, "linear_weight")
    if linear_weight.ndim > 2 and input.ndim == 1:
        raise ValueError(
            f"the K-dimensional loss of linear_weight {linear_weight.shape} requires batched "
            f"input (N, {input.shape[-1]}); got unbatched input {input.shape}. Pass "
            f"input[None] (and target[None])."
        )
    target = _validation.as_unconverted(target, "target")
    ignore_index = resolve_ignore_index(ignore_index, target)
    return linear_loss(
        input, linear_weight, target, torch_layout=True,
        names=("input", "linear_weight", "target"), bias=linear_bias, bias_name="linear_bias",
        weight=weight, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        where=where, sample_weight=sample_weight, divisor=divisor, num_classes=num_classes,
        chunk_size=chunk_size, row_chunk_size=row_chunk_size,
    )  # fmt: skip
