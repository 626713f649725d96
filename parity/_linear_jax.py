"""jaxce's fused linear cross-entropy on a linear case's inputs, through parity's ``Runner``.

``api="torch"`` calls ``torch_linear_cross_entropy`` with torch's ``linear_weight`` (C, ...,
D); ``api="jax"`` calls ``linear_cross_entropy`` with the kernel (D, C, ...) (the same numbers,
transposed), and its kernel gradient is transposed back. Both run with parity's row and class
chunks (``parity._linear_cases.ROW_CHUNK``, ``CLASS_CHUNK``), compiled a group at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

import jaxce
from parity._jax_side import Runner
from parity._linear_cases import CLASS_CHUNK, ROW_CHUNK, LinearCase, LinearInputs
from parity._reference import LinearResult
from parity._tolerances import numpy_dtype


class LinearRunner(Runner):
    """``Runner`` for the fused linear loss: one traced body per signature, a group per program.

    Args:
      torch_layout_fn: called as ``torch_linear_cross_entropy`` (default: jaxce's).
      jax_layout_fn: called as ``linear_cross_entropy`` (default: jaxce's).
    """

    def __init__(
        self,
        torch_layout_fn: Callable = jaxce.torch_linear_cross_entropy,
        jax_layout_fn: Callable = jaxce.linear_cross_entropy,
    ):
        super().__init__(torch_layout_fn)
        self._fns = {"torch": torch_layout_fn, "jax": jax_layout_fn}

    def _prepare(self, case: LinearCase, inputs: LinearInputs) -> tuple[tuple, tuple]:
        dt = numpy_dtype(case.dtype)
        kernel = inputs.linear_weight
        if case.api == "jax":
            kernel = np.moveaxis(kernel, -1, 0)  # (C, ..., D) -> (D, C, ...)
        labels = inputs.labels
        labels = labels.astype(dt) if case.target == "prob" else labels.astype(np.int32)
        arrays = (
            inputs.hidden.astype(dt),
            kernel.astype(dt),
            labels,
            None if inputs.bias is None else inputs.bias.astype(dt),
            None if inputs.weight is None else inputs.weight.astype(dt),
            np.asarray(inputs.cotangent.astype(dt)),
        )
        static = (case.api, case.target, case.ignore_index, case.reduction, case.smoothing)
        return static, arrays

    def _one(self, static: tuple, hidden, kernel, labels, bias, weight, cot) -> LinearResult:
        api, target, ignore_index, reduction, smoothing = static
        fn = self._fns[api]
        kwargs = {
            "weight": weight,
            "reduction": reduction,
            "label_smoothing": smoothing,
            "row_chunk_size": ROW_CHUNK,
            "chunk_size": CLASS_CHUNK,
        }
        if target == "index":
            kwargs["ignore_index"] = ignore_index
        bias_name = "linear_bias" if api == "torch" else "bias"

        def loss(hidden, kernel, bias, labels):
            return fn(hidden, kernel, labels, **{bias_name: bias}, **kwargs)

        if target == "prob":
            value, vjp = jax.vjp(loss, hidden, kernel, bias, labels)
            gh, gk, gb, gt = vjp(cot)
        else:
            value, vjp = jax.vjp(lambda h, k, b: loss(h, k, b, labels), hidden, kernel, bias)
            (gh, gk, gb), gt = vjp(cot), None
        return LinearResult(value, gh, gk, gb, gt)

    def _back(self, case: LinearCase, out: LinearResult) -> LinearResult:
        def host(a):
            return None if a is None else np.asarray(a).astype(np.float64)

        grad_weight = host(out.grad_weight)
        if case.api == "jax":
            grad_weight = np.moveaxis(grad_weight, 0, -1)  # (D, C, ...) -> (C, ..., D)
        return LinearResult(
            host(out.value),
            host(out.grad_input),
            grad_weight,
            host(out.grad_bias),
            host(out.grad_target),
        )
