"""CrossEntropyLoss: the torch.nn.CrossEntropyLoss module, in torch's layout."""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from jaxce import _options, _validation
from jaxce._cross_entropy import checked_call
from jaxce._validation import Reduction


class CrossEntropyLoss:
    r"""torch.nn.CrossEntropyLoss in JAX: options at construction, torch's layout at call.

    ``CrossEntropyLoss(...)(input, target)`` equals ``cross_entropy(input, target, axis=a, ...)``
    with the class axis ``a`` at torch's place: dim 1 for (N, C) and (N, C, d1, ..., dk) inputs,
    dim 0 for an unbatched (C,) input. Ported code keeps its shapes. With ``p =
    softmax(input)`` along that axis, ``eps = label_smoothing`` and class weights ``w``, an
    example's loss is ``-sum_c w_c q_c log p_c`` with ``q = (1 - eps) onehot(target) + eps / C``
    (or ``(1 - eps) target + eps / C`` for probabilities); ``"mean"`` divides the sum by the
    summed ``w_target`` of the non-ignored examples (by their count for probabilities).

    Args:
      weight: optional floating (C,) class weights (the only positional argument).
      ignore_index: class index whose examples are skipped (class indices only).
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.
      label_smoothing: in [0, 1].

    Call args:
      input: floating (C,), (N, C) or (N, C, d1, ..., dk) logits.
      target: integer class indices of shape (), (N,) or (N, d1, ..., dk), or floating
        probabilities of the input's shape.

    Returns:
      ``jax.Array``: a scalar for ``"mean"`` and ``"sum"``, else the examples' shape.

    Raises:
      TypeError: a second positional argument (torch's deprecated ``size_average``), or bad
        options, at construction; bad arrays at call (see ``jaxce.loss.cross_entropy``).
      ValueError: options out of range at construction; bad shapes or labels at call.

    Numerics:
      Those of ``jaxce.loss.cross_entropy``: float32 accumulation for float16/bfloat16,
      -inf-safe gradients, a lean custom VJP.

    Differences from torch:
      Not a stateful ``nn.Module``; no ``size_average``/``reduce`` (deprecated in torch), so
      every option after ``weight`` is keyword-only. See ``jaxce.loss.cross_entropy`` for the
      numerical differences.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxce import loss
      >>> criterion = loss.CrossEntropyLoss(label_smoothing=0.1)
      >>> logits = jnp.zeros((2, 4, 3))  # (N, C, d1): classes on dim 1, as in torch
      >>> print(f"{criterion(logits, jnp.zeros((2, 3), jnp.int32)):.4f}")
      1.3863
    """

    def __init__(
        self,
        weight: ArrayLike | None = None,
        *deprecated_positional,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
    ):
        if deprecated_positional:
            raise TypeError(
                f"CrossEntropyLoss takes weight as its only positional argument; got "
                f"{len(deprecated_positional)} more ({', '.join(map(repr, deprecated_positional))}"
                f"). torch's second positional parameter is the deprecated size_average (then "
                f"ignore_index, reduce, reduction): pass options by keyword, e.g. "
                f"CrossEntropyLoss(weight, ignore_index=0, reduction='sum')."
            )
        self.weight = None
        if weight is not None:
            given = _validation.as_unconverted(weight, "weight")  # checked as given
            if given.ndim != 1:
                raise ValueError(
                    f"weight must have shape (num_classes,); got {given.shape}. "
                    f"Pass one weight per class."
                )
            self.weight = _validation.check_class_vector(
                given, "weight", given.shape[0], "Pass one weight per class."
            )
        self.ignore_index = _validation.check_ignore_index(ignore_index)
        self.reduction = _validation.check_reduction(reduction)
        self.label_smoothing = _options.check_options(label_smoothing, 0.0, None)[0]

    def __call__(self, input: ArrayLike, target: ArrayLike) -> jax.Array:
        input = _validation.as_array(input, "input")
        if input.ndim == 0:
            raise ValueError(
                "input must have shape (C,), (N, C) or (N, C, d1, ..., dk); got a scalar."
            )
        return checked_call(
            input, target, names=("input", "target"), axis=0 if input.ndim == 1 else 1,
            weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, z_loss=0.0, softcap=None, where=None,
            num_classes=None, check_labels=False, custom_vjp=True,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"CrossEntropyLoss(weight={'None' if self.weight is None else 'Array'}, "
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing})"
        )
