"""Flax NNX modules of jaxce (this module imports flax; ``import jaxce`` does not).

- ``LinearCrossEntropyLoss``: torch 2.13's ``nn.LinearCrossEntropyLoss`` as an NNX module: it
  owns the final linear layer (``self.linear``, an ``nnx.Linear``) and computes the fused
  ``jaxce.loss.linear_cross_entropy`` of its output; it loads and exports torch state dicts.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from jaxce import _options, _validation
from jaxce import _state_dict as state_dict_entries
from jaxce._linear_call import check_chunk, linear_loss
from jaxce._linear_torch import resolve_ignore_index
from jaxce._validation import Reduction

__all__ = ["ClassWeight", "LinearCrossEntropyLoss"]


class ClassWeight(nnx.Variable):
    """The loss's class weights: module state (saved, loaded) but not a trained ``nnx.Param``."""


def torch_linear_init(fan_in: int):
    """``nn.Linear``'s default initialiser: uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)]."""
    bound = 1 / math.sqrt(fan_in) if fan_in else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _positive_int(value, name: str, *, allow_zero=False) -> int:
    number = _validation.check_int(value, name, f"Pass {name} as an int.")
    if number < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be >= {0 if allow_zero else 1}; got {number}.")
    return number


def _initializer(value, name: str, fan_in: int):
    """``value``, an initialiser ``init(key, shape, dtype)``; None: torch's ``nn.Linear`` one."""
    if value is None:
        return torch_linear_init(fan_in)
    fix = f"Pass {name}=None (torch's nn.Linear init) or a callable init(key, shape, dtype)"
    if not callable(value):
        raise TypeError(f"{name} must be a callable init(key, shape, dtype); got {value!r}. {fix}.")
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # no signature to read (some builtins): called as it is
        return value
    try:
        signature.bind(None, (), None)
    except TypeError as err:
        raise TypeError(
            f"{name} must take (key, shape, dtype), as jax.nn.initializers do; got {value!r} "
            f"({err}). {fix}."
        ) from None
    return value


def _float_dtype(value, name: str, *, optional: bool = False):
    """A floating dtype of 16+ bits (None allowed when ``optional``), as a numpy dtype."""
    if value is None and optional:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or dtype.itemsize < 2:
        allowed = "None or " if optional else ""
        raise TypeError(
            f"{name} must be {allowed}a floating dtype of 16 or more bits (bfloat16, float16, "
            f"float32, float64); got {value!r}."
        )
    return dtype


class LinearCrossEntropyLoss(nnx.Module):
    """``torch.nn.LinearCrossEntropyLoss``: a linear head fused with cross-entropy, in NNX.

    ``loss(input, target)`` is ``jaxce.loss.linear_cross_entropy(input, kernel, target,
    bias=bias, ...)`` with the module's options, where ``kernel`` is ``self.linear``'s (D,
    C * prod(out_features)) kernel viewed as (D, C, *out_features) and ``bias`` its bias viewed
    as (C, *out_features). The parameters are stored as torch stores them (one flat linear
    layer), so ``load_torch_state_dict`` takes a torch module's ``state_dict()`` as it is.

    Args:
      in_features: D, the size of each input's last axis.
      num_classes: C.
      out_features: (d1, ..., dk) for torch's K-dimensional loss (default: none).
      bias: whether the linear layer has a bias (torch's default: False).
      dtype: the computation dtype (None: the inputs' and parameters' promoted dtype); torch's
        ``dtype=`` (of the parameters) is ``param_dtype`` here. torch's ``device=`` has no
        counterpart (JAX places arrays) and its ``options=`` is ``chunk_size`` and
        ``row_chunk_size``.
      param_dtype: the parameters' dtype.
      reduction, weight, label_smoothing: as torch's (``weight`` is kept as ``ClassWeight``
        state, not a trained parameter).
      ignore_index: as torch's: None means -100 for class indices and must be None for
        probability targets.
      z_loss, softcap, chunk_size, row_chunk_size: jaxce's, as in ``linear_cross_entropy``.
      kernel_init, bias_init: initialisers ``init(key, shape, dtype)``, as
        ``jax.nn.initializers``; None (the default) is torch's ``nn.Linear`` one (uniform on
        +-1/sqrt(in_features)); the draws differ from torch's.
      rngs: the ``nnx.Rngs`` for the initialisers.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxce.nnx import LinearCrossEntropyLoss
      >>> head = LinearCrossEntropyLoss(4, 10, bias=True, rngs=nnx.Rngs(0))
      >>> loss = head(jnp.ones((3, 4)), jnp.array([1, 2, 9]))
      >>> loss.shape, head.linear.kernel.shape
      ((), (4, 10))
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        out_features: Sequence[int] = (),
        bias: bool = False,
        dtype=None,
        param_dtype=jnp.float32,
        reduction: Reduction = "mean",
        weight: ArrayLike | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        chunk_size: int | None = None,
        row_chunk_size: int | None = None,
        kernel_init=None,
        bias_init=None,
        rngs: nnx.Rngs,
    ):
        self.in_features = _positive_int(in_features, "in_features", allow_zero=True)
        self.num_classes = _positive_int(num_classes, "num_classes", allow_zero=True)
        if isinstance(out_features, (str, bytes)) or not isinstance(out_features, Sequence):
            raise TypeError(f"out_features must be a tuple of ints; got {out_features!r}.")
        self.out_features = tuple(_positive_int(d, "out_features") for d in out_features)
        self.reduction = _validation.check_reduction(reduction)
        self.ignore_index = (
            None if ignore_index is None else _validation.check_ignore_index(ignore_index)
        )
        self.label_smoothing, self.z_loss, self.softcap = _options.check_options(
            label_smoothing, z_loss, softcap
        )
        # checked now; each call fits them to its own sizes
        check_chunk(chunk_size, "chunk_size", 1, "classes per matmul")
        check_chunk(row_chunk_size, "row_chunk_size", 1, "rows per chunk")
        self.chunk_size, self.row_chunk_size = chunk_size, row_chunk_size
        self.dtype = _float_dtype(dtype, "dtype", optional=True)
        param_dtype = _float_dtype(param_dtype, "param_dtype")
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(
                f"rngs must be an nnx.Rngs (it draws the initial parameters); got "
                f"{type(rngs).__name__}. Pass e.g. rngs=nnx.Rngs(0)."
            )
        if weight is not None:
            vector = _validation.check_class_vector(
                weight, "weight", self.num_classes, "Pass one weight per class."
            )
            weight = ClassWeight(vector)
        self.weight = weight
        fan_in = self.in_features
        self.linear = nnx.Linear(
            self.in_features,
            math.prod(self.out_features, start=self.num_classes),
            use_bias=_validation.check_flag(bias, "bias"),
            param_dtype=param_dtype,
            kernel_init=_initializer(kernel_init, "kernel_init", fan_in),
            bias_init=_initializer(bias_init, "bias_init", fan_in),
            rngs=rngs,
        )

    def _kernel_and_bias(self):
        shape = (self.num_classes, *self.out_features)
        kernel = self.linear.kernel[...].reshape(self.in_features, *shape)
        bias = None if self.linear.bias is None else self.linear.bias[...].reshape(shape)
        if self.dtype is not None:
            kernel = kernel.astype(self.dtype)
            bias = None if bias is None else bias.astype(self.dtype)
        return kernel, bias

    def __call__(
        self,
        input: ArrayLike,
        target: ArrayLike,
        *,
        where: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
        divisor: ArrayLike | None = None,
    ) -> jax.Array:
        """The loss of ``input`` (..., D) against ``target`` (indices or probabilities)."""
        kernel, bias = self._kernel_and_bias()
        target = _validation.as_unconverted(target, "target")
        input = _validation.as_array(input, "input")
        _validation.check_floating(input, "input")
        if input.ndim == 0 or input.shape[-1] != self.in_features:
            raise ValueError(
                f"input must have shape (..., in_features) = (..., {self.in_features}); got "
                f"{input.shape}."
            )
        if self.out_features and input.ndim == 1:
            raise ValueError(
                f"input must be batched, (N, {self.in_features}), with out_features="
                f"{self.out_features} (torch's K-dimensional loss requires it); got "
                f"{input.shape}: pass input[None] and target[None]."
            )
        if self.dtype is not None:
            input = input.astype(self.dtype)
        return linear_loss(
            input, kernel, target, torch_layout=False, names=("input", "kernel", "target"),
            bias=bias, weight=None if self.weight is None else self.weight[...],
            ignore_index=resolve_ignore_index(self.ignore_index, target),
            reduction=self.reduction, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
            softcap=self.softcap, where=where, sample_weight=sample_weight, divisor=divisor,
            chunk_size=self.chunk_size, row_chunk_size=self.row_chunk_size,
        )  # fmt: skip

    def _torch_shapes(self) -> dict[str, tuple[int, ...]]:
        rows = math.prod(self.out_features, start=self.num_classes)
        shapes = {"linear.weight": (rows, self.in_features)}
        if self.linear.bias is not None:
            shapes["linear.bias"] = (rows,)
        if self.weight is not None:
            shapes["weight"] = (self.num_classes,)
        return shapes

    def load_torch_state_dict(self, state_dict: Mapping[str, object]) -> None:
        """Loads a torch ``nn.LinearCrossEntropyLoss``'s ``state_dict()`` (strictly).

        ``linear.weight`` (C * prod(out_features), D) becomes the kernel (its transpose),
        ``linear.bias`` the bias, ``weight`` the class weights; each is cast to the dtype of
        the state it replaces. Raises KeyError naming missing or unexpected keys, ValueError
        naming a key whose shape differs.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping of names to tensors, as torch's "
                f"module.state_dict() returns; got {type(state_dict).__name__}."
            )
        shapes = self._torch_shapes()
        missing, unexpected = set(shapes) - set(state_dict), set(state_dict) - set(shapes)
        if missing or unexpected:
            raise KeyError(
                f"the state dict does not match this module (in_features={self.in_features}, "
                f"num_classes={self.num_classes}, out_features={self.out_features}, bias="
                f"{self.linear.bias is not None}, weight={self.weight is not None}): missing "
                f"{sorted(missing)}, unexpected {sorted(unexpected)}."
            )
        values = {k: state_dict_entries.host(state_dict[k], k) for k in shapes}
        for key, shape in shapes.items():
            if values[key].shape != shape:
                raise ValueError(
                    f"state dict entry {key!r} has shape {values[key].shape}; this module "
                    f"needs {shape}."
                )
        if self.weight is not None:  # the constructor's rule for class weights
            _validation.check_class_vector(
                values["weight"], "state dict entry 'weight'", self.num_classes, ""
            )
        targets = {"linear.weight": self.linear.kernel, "linear.bias": self.linear.bias}
        targets["weight"] = self.weight
        cast = {}
        for key, variable in targets.items():
            if key in values:  # checked before anything is replaced: all or nothing
                source = values[key].T if key == "linear.weight" else values[key]
                cast[key] = state_dict_entries.fitted(source, variable[...].dtype, key)
        for key, array in cast.items():
            targets[key][...] = array

    def torch_state_dict(self) -> dict[str, np.ndarray]:
        """The state as torch's module holds it: writable numpy copies, for ``torch.from_numpy``
        (bfloat16 parameters come as float32, exactly, which it takes: ``.bfloat16()`` them)."""

        def host(array):
            array = np.array(array)  # a copy, not a view of the module's buffer
            return array.astype(np.float32) if array.dtype == jnp.bfloat16 else array

        out = {"linear.weight": host(self.linear.kernel[...]).T.copy()}
        if self.linear.bias is not None:
            out["linear.bias"] = host(self.linear.bias[...])
        if self.weight is not None:
            out = {"weight": host(self.weight[...]), **out}
        return out
