"""torch.nn.functional.cross_entropy on numpy inputs: the one torch runner (parity and tests)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from parity._cases import Case, Inputs, torch_options
from parity._reference import Result

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
