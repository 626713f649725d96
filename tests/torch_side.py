"""torch.nn.functional.cross_entropy run on numpy inputs, returning values and gradients."""

from __future__ import annotations

import numpy as np
import torch

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def torch_cross_entropy(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    dtype: str,
    class_dim: int,
    cotangent: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    **options,
) -> dict[str, np.ndarray]:
    """Returns {"loss", "grad", "grad_labels"?} as float64 numpy arrays.

    ``logits`` are in torch's layout already. The gradient is of ``sum(loss * cotangent)``
    (or of the scalar loss when ``cotangent`` is None).
    """
    if class_dim != (0 if logits.ndim == 1 else 1):
        raise ValueError("torch_cross_entropy takes torch's layout")
    tdtype = TORCH_DTYPES[dtype]
    x = torch.tensor(np.asarray(logits, np.float64), dtype=tdtype, requires_grad=True)
    soft = np.issubdtype(labels.dtype, np.floating)
    if soft:
        t = torch.tensor(np.asarray(labels, np.float64), dtype=tdtype, requires_grad=True)
    else:
        t = torch.tensor(labels.astype(np.int64))
    w = None if weight is None else torch.tensor(np.asarray(weight, np.float64), dtype=tdtype)
    out = torch.nn.functional.cross_entropy(x, t, weight=w, **options)
    ct = torch.ones_like(out) if cotangent is None else torch.tensor(cotangent, dtype=out.dtype)
    (out * ct).sum().backward()
    result = {"loss": out.detach().double().numpy(), "grad": x.grad.double().numpy()}
    if soft:
        result["grad_labels"] = t.grad.double().numpy()
    return result
