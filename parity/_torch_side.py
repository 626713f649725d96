"""torch's cross_entropy and linear_cross_entropy on numpy inputs: the one torch runner.

Used by the parity reports and the tests. ``torch_cross_entropy`` runs
``torch.nn.functional.cross_entropy``; ``torch_linear_cross_entropy`` runs
``torch.nn.functional.linear_cross_entropy`` on its reference path or its chunked path.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from parity._cases import Case, Inputs, torch_options
from parity._linear_cases import LinearCase, LinearInputs, torch_linear_options
from parity._reference import LinearResult, Result

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _tensor(array, dtype: str, requires_grad: bool = False) -> torch.Tensor:
    # float64 -> dtype rounds to nearest, exactly as numpy and JAX round the same values.
    return (
        torch.tensor(np.asarray(array, np.float64), dtype=torch.float64)
        .to(TORCH_DTYPES[dtype])
        .requires_grad_(requires_grad)
    )


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).numpy()


def torch_cross_entropy(
    logits,
    labels,
    *,
    dtype: str,
    weight=None,
    cotangent=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Result:
    """Runs torch's loss forward and backward in ``dtype`` on CPU.

    Args:
      logits: (C,) or (N, C, d1, ..., dk), torch's layout; rounded to ``dtype``.
      labels: integer class indices of the batch shape, or float probabilities of the logits'
        shape (rounded to ``dtype``; their gradient is returned too).
      dtype: "float64", "float32", "bfloat16" or "float16".
      weight: optional (C,) class weights, rounded to ``dtype``.
      cotangent: the loss' cotangent (its shape), or None for ones.
      ignore_index, reduction, label_smoothing: torch's options, passed as they are.

    Returns:
      Result with float64 copies of torch's value and gradients.

    Raises:
      Whatever torch raises for the inputs (parity records it as torch's answer).
    """
    x = _tensor(logits, dtype, requires_grad=True)
    soft = np.issubdtype(np.asarray(labels).dtype, np.floating)
    if soft:
        t = _tensor(labels, dtype, requires_grad=True)
    else:
        t = torch.tensor(np.asarray(labels), dtype=torch.int64)
    w = None if weight is None else _tensor(weight, dtype)
    loss = F.cross_entropy(
        x,
        t,
        weight=w,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    loss.backward(torch.ones_like(loss) if cotangent is None else _tensor(cotangent, dtype))
    return Result(_numpy(loss), _numpy(x.grad), _numpy(t.grad) if soft else None)


def run_torch(case: Case, inputs: Inputs) -> Result:
    """``torch_cross_entropy`` on a case's inputs (exact in ``case.dtype``) and options."""
    return torch_cross_entropy(
        inputs.logits, inputs.labels, dtype=case.dtype, **torch_options(case, inputs)
    )


def _grad(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None or tensor.grad is None else _numpy(tensor.grad)


def torch_linear_cross_entropy(
    hidden,
    linear_weight,
    labels,
    *,
    dtype: str,
    chunked: bool,
    bias=None,
    weight=None,
    cotangent=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> LinearResult:
    """Runs ``F.linear_cross_entropy`` forward and backward in ``dtype`` on CPU.

    Args:
      hidden: (N, D) input; linear_weight: (C, d1, ..., dk, D); bias: optional (C, d1, ...,
        dk); all rounded to ``dtype`` and differentiated.
      labels: int64 class indices (N, d1, ..., dk), or float probabilities (N, C, d1, ..., dk)
        (rounded to ``dtype``; their gradient is returned too).
      dtype: "float64", "float32" or "bfloat16".
      chunked: torch's chunked path (``options=LinearCrossEntropyOptions()``) instead of its
        reference path (``options=None``).
      weight: optional (C,) class weights, rounded to ``dtype`` (torch does not differentiate
        them).
      cotangent: the loss' cotangent (its shape), or None for ones.
      ignore_index: passed for class indices (torch refuses it with probabilities).
      reduction, label_smoothing: torch's options, passed as they are.

    Returns:
      LinearResult with float64 copies of torch's value and gradients.

    Raises:
      Whatever torch raises for the inputs; and, on the chunked path, torch's warning that it
      falls back to the reference path (as an error: such a call would not test the chunked
      path).
    """
    x = _tensor(hidden, dtype, requires_grad=True)
    w = _tensor(linear_weight, dtype, requires_grad=True)
    b = None if bias is None else _tensor(bias, dtype, requires_grad=True)
    soft = np.issubdtype(np.asarray(labels).dtype, np.floating)
    if soft:
        t = _tensor(labels, dtype, requires_grad=True)
    else:
        t = torch.tensor(np.asarray(labels), dtype=torch.int64)
    options = torch.nn.LinearCrossEntropyOptions() if chunked else None
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="linear_cross_entropy: ``options`` ignored")
        loss = F.linear_cross_entropy(
            x,
            w,
            t,
            linear_bias=b,
            weight=None if weight is None else _tensor(weight, dtype),
            reduction=reduction,
            ignore_index=None if soft else ignore_index,
            label_smoothing=label_smoothing,
            options=options,
        )
    loss.backward(torch.ones_like(loss) if cotangent is None else _tensor(cotangent, dtype))
    return LinearResult(_numpy(loss), _grad(x), _grad(w), _grad(b), _grad(t) if soft else None)


def run_torch_linear(case: LinearCase, inputs: LinearInputs) -> LinearResult:
    """``torch_linear_cross_entropy`` on a case's inputs, options and torch path."""
    return torch_linear_cross_entropy(
        inputs.hidden,
        inputs.linear_weight,
        inputs.labels,
        dtype=case.dtype,
        chunked=case.path == "chunked",
        **torch_linear_options(case, inputs),
    )
