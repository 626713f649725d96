"""CrossEntropyLoss: the torch.nn.CrossEntropyLoss module, in torch's layout."""

from __future__ import annotations

from jaxce import _validation
from jaxce._cross_entropy import cross_entropy


class CrossEntropyLoss:
    """torch.nn.CrossEntropyLoss in JAX: options at construction, torch's layout at call.

    ``CrossEntropyLoss(...)(input, target)`` equals ``cross_entropy(input, target, axis=a, ...)``
    with the class axis ``a`` at torch's place: dim 1 for (N, C) and (N, C, d1, ..., dk) inputs,
    dim 0 for an unbatched (C,) input. Ported code keeps its shapes.

    Args:
      weight: optional floating (C,) class weights.
      ignore_index: class index whose examples are skipped (class indices only).
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.
      label_smoothing: in [0, 1].

    Raises:
      TypeError, ValueError: bad options, at construction; bad arrays, at call
        (see ``jaxce.loss.cross_entropy``).

    Differences from torch:
      Not a stateful module and no ``size_average``/``reduce`` (deprecated in torch). See
      ``jaxce.loss.cross_entropy`` for the numerical differences.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxce import loss
      >>> criterion = loss.CrossEntropyLoss(label_smoothing=0.1)
      >>> logits = jnp.zeros((2, 4, 3))  # (N, C, d1): classes on dim 1, as in torch
      >>> print(f"{criterion(logits, jnp.zeros((2, 3), jnp.int32)):.4f}")
      1.3863
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        self.weight = None if weight is None else _validation.as_array(weight, "weight")
        if self.weight is not None and self.weight.ndim != 1:
            raise ValueError(
                f"weight must have shape (num_classes,); got {self.weight.shape}. "
                f"Pass one weight per class."
            )
        self.ignore_index = _validation.check_ignore_index(ignore_index)
        self.reduction = _validation.check_reduction(reduction)
        self.label_smoothing = _validation.real_option(
            label_smoothing, "label_smoothing", low=0.0, high=1.0
        )

    def __call__(self, input, target):
        input = _validation.as_array(input, "input")
        axis = 0 if input.ndim == 1 else 1
        if input.ndim == 0:
            raise ValueError(
                "input must have shape (C,), (N, C) or (N, C, d1, ..., dk); got a scalar."
            )
        return cross_entropy(
            input,
            target,
            axis=axis,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def __repr__(self):
        return (
            f"CrossEntropyLoss(weight={'None' if self.weight is None else 'Array'}, "
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing})"
        )
