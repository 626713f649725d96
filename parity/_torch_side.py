"""torch.nn.functional.cross_entropy on a case's inputs, in torch's own layout and dtype."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from parity._cases import Case, Inputs
from parity._reference import Result

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _tensor(array: np.ndarray, dtype: str, requires_grad: bool = False) -> torch.Tensor:
    # float64 -> dtype is exact: the values were rounded to ``dtype`` when the case was drawn.
    return (
        torch.tensor(array, dtype=torch.float64)
        .to(TORCH_DTYPES[dtype])
        .requires_grad_(requires_grad)
    )


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).numpy()


def run_torch(case: Case, inputs: Inputs) -> Result:
    """Runs torch's loss forward and backward (with the case's cotangent) in the case's dtype.

    Args:
      case: the case (options and dtype).
      inputs: its float64 inputs, exactly representable in ``case.dtype``, torch layout.

    Returns:
      Result with float64 copies of torch's value and gradients.
    """
    x = _tensor(inputs.logits, case.dtype, requires_grad=True)
    soft = case.target == "prob"
    if soft:
        t = _tensor(inputs.labels, case.dtype, requires_grad=True)
    else:
        t = torch.tensor(inputs.labels, dtype=torch.int64)
    w = None if inputs.weight is None else _tensor(inputs.weight, case.dtype)
    loss = F.cross_entropy(
        x,
        t,
        weight=w,
        ignore_index=case.ignore_index,
        reduction=case.reduction,
        label_smoothing=case.smoothing,
    )
    loss.backward(_tensor(inputs.cotangent, case.dtype))
    grad_t = _numpy(t.grad) if soft else None
    return Result(_numpy(loss), _numpy(x.grad), grad_t)
