"""The one tolerance table of the test suite, and the comparison every test uses.

A comparison passes when NaN and +-inf sit at the same positions on both sides and, at every
finite position, ``|actual - expected| <= rtol * |expected| + atol * max|expected|``: ``atol`` is
relative to the largest expected magnitude, so one row serves losses of any scale and gradients
that shrink like 1/N under a mean.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    reason: str


# Keyed by (dtype of the inputs, quantity compared).
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("float64", "loss"): Tolerance(
        1e-12, 1e-13, "float64 on both sides: only summation order differs (~log2(N) ulp)."
    ),
    ("float64", "grad"): Tolerance(
        1e-10, 1e-13, "float64; softmax - target cancels near p=1, costing a few digits."
    ),
    ("float32", "loss"): Tolerance(
        2e-6,
        1e-6,
        "float32 log-sum-exp plus a pairwise sum over <= 1e4 rows: a few ulp (1.2e-7) each; "
        "torch and XLA sum in different orders.",
    ),
    ("float32", "grad"): Tolerance(
        1e-5,
        1e-6,
        "float32 softmax: exp() is accurate to ~2 ulp, and p - 1 at the target loses the "
        "leading bits, so small entries are compared against the largest gradient.",
    ),
    ("float16", "loss"): Tolerance(
        2e-3,
        1e-3,
        "Same rounded float16 inputs; jaxce accumulates in float32 and rounds once to float16 "
        "(ulp 9.8e-4), torch rounds intermediate log-softmax values to float16.",
    ),
    ("float16", "grad"): Tolerance(
        4e-3, 2e-3, "float16 gradient output: one or two float16 roundings (ulp 9.8e-4)."
    ),
    ("bfloat16", "loss"): Tolerance(
        1.6e-2,
        8e-3,
        "bfloat16 output rounding (ulp 7.8e-3) plus torch's bfloat16 intermediate log-softmax.",
    ),
    ("bfloat16", "grad"): Tolerance(
        3.2e-2, 1.6e-2, "bfloat16 gradient output: one or two bfloat16 roundings (ulp 7.8e-3)."
    ),
    ("float32", "second_order"): Tolerance(
        1e-4, 1e-6, "Hessian-vector products in float32 square the first-order rounding."
    ),
    ("float64", "second_order"): Tolerance(
        1e-9, 1e-12, "float64 Hessian entries, p_i(1 - p_j) cancellation near p = 1."
    ),
    ("float32", "data_parallel_loss"): Tolerance(
        1e-5,
        1e-6,
        "train.py on 1 device vs the batch sharded over 4 devices or 2 processes: the gradient's "
        "per-device partial sums are added in another order (a few ulp per step); after 250 Adam "
        "steps the epoch losses differed by <= 1e-7 relative (measured), so 100x margin.",
    ),
    ("float32", "data_parallel_accuracy"): Tolerance(
        0.0,
        1e-3,
        "Test accuracy over 2000 examples under the same resharding: one prediction whose top two "
        "logits tie within rounding may flip (5e-4); none did in the measured runs.",
    ),
}


def tolerance(dtype, quantity: str) -> Tolerance:
    key = (np.dtype(dtype).name if not isinstance(dtype, str) else dtype, quantity)
    if key not in TOLERANCES:
        raise KeyError(f"no tolerance row for {key}; add one to TOLERANCES with its reason.")
    return TOLERANCES[key]


def assert_close(actual, expected, *, dtype, quantity: str, context: str = "") -> None:
    """Asserts equal NaN/inf positions and finite values within the (dtype, quantity) row."""
    tol = tolerance(dtype, quantity)
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    where = f" [{context}]" if context else ""
    if a.shape != e.shape:
        raise AssertionError(f"shape {a.shape} != expected {e.shape}{where}")
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        if not np.array_equal(test(a), test(e)):
            raise AssertionError(
                f"{name} positions differ{where}: actual at {np.argwhere(test(a)).tolist()[:5]}, "
                f"expected at {np.argwhere(test(e)).tolist()[:5]}"
            )
    finite = np.isfinite(e)
    if not finite.any():
        return
    scale = np.max(np.abs(e[finite]))
    err = np.abs(a[finite] - e[finite])
    bound = tol.rtol * np.abs(e[finite]) + tol.atol * scale
    if np.any(err > bound):
        worst = int(np.argmax(err - bound))
        raise AssertionError(
            f"{quantity} ({dtype}) differs{where}: max abs error {err.max():.3e}, worst "
            f"{a[finite][worst]!r} vs {e[finite][worst]!r}; allowed rtol={tol.rtol}, "
            f"atol={tol.atol}*{scale:.3e} ({tol.reason})"
        )
