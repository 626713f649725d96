"""The single tolerance table of the parity report, keyed by (dtype, quantity).

Two arrays ``actual`` and ``expected`` agree when, element by element,

    |actual - expected| <= rtol * |expected| + atol * scale + floor

where ``scale`` is the largest finite ``|expected|`` of the array, but at least the quantity's
natural unit: 1 for loss values (tiny losses of confident rows are judged against the loss'
unit), and for gradients w.r.t. logits |upstream factor| * max class weight (entries are
differences of probabilities times that factor, and may cancel to exactly 0), and ``floor`` is
twice the smallest subnormal of the dtype (nothing finer can be represented). Non-finite
elements must match by position: NaN with NaN, +inf with +inf, -inf with -inf.

Quantities: ``value`` (the loss), ``grad_logits``, ``grad_target`` (probability targets) compared
between the implementation under test and torch, and the same three with ``_ref`` compared with
the float64 reference rounded to the case's dtype (the best answer that dtype can hold).
Every row carries the reason for its numbers; eps is the dtype's machine epsilon
(float64 2^-52, float32 2^-23, bfloat16 2^-7, float16 2^-10).
"""

from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np

DTYPES = ("float64", "float32", "bfloat16", "float16")
QUANTITIES = ("value", "grad_logits", "grad_target")


class Tolerance(NamedTuple):
    rtol: float
    atol: float
    reason: str


def _rows() -> dict[tuple[str, str], Tolerance]:
    rows: dict[tuple[str, str], Tolerance] = {}
    same = "both compute in float64; log-sum-exp and sums differ only in summation order"
    for q in QUANTITIES:
        rows["float64", q] = Tolerance(1e-12, 1e-12, same)
        rows["float64", q + "_ref"] = Tolerance(1e-12, 1e-12, same + " (reference too)")
    f32 = (
        "float32 on both sides: a few eps (2^-23 = 1.2e-7) per log-sum-exp and per class sum; "
        "sums over <= 70k rows in different orders add ~sqrt(n)*eps"
    )
    f32_ref = "float32 result vs float64 truth: the same rounding budget as against torch"
    for q in QUANTITIES:
        rows["float32", q] = Tolerance(2e-5, 2e-6, f32)
        rows["float32", q + "_ref"] = Tolerance(2e-5, 2e-6, f32_ref)
    low = {"bfloat16": 2.0**-7, "float16": 2.0**-10}
    for dtype, eps in low.items():
        torch_reason = (
            f"torch on CPU rounds log-softmax to {dtype} and accumulates sums in {dtype}; the "
            f"implementation under test accumulates in float32 and rounds once: "
            f"several ulp apart (eps = {eps:.2g})"
        )
        ref_reason = (
            f"float32 accumulation then one rounding to {dtype}: within 1 ulp of the "
            f"correctly rounded float64 truth"
        )
        for q in QUANTITIES:
            rows[dtype, q] = Tolerance(8 * eps, 8 * eps, torch_reason)
            rows[dtype, q + "_ref"] = Tolerance(eps, eps, ref_reason)
    return rows


# Rows for the test suite's ``tests.tolerances.assert_close``: the same kind of rule, with atol
# relative to the largest expected magnitude (no floor, no unit scale for values).
_TEST_SUITE_ROWS: dict[tuple[str, str], Tolerance] = {
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

TOLERANCES: dict[tuple[str, str], Tolerance] = {**_rows(), **_TEST_SUITE_ROWS}


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype for a case dtype name (bfloat16 via ml_dtypes)."""
    if dtype == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def round_to(array: np.ndarray, dtype: str) -> np.ndarray:
    """Rounds float64 values to ``dtype`` (round to nearest even) and returns them as float64."""
    return np.asarray(array, dtype=numpy_dtype(dtype)).astype(np.float64)


def subnormal_floor(dtype: str) -> float:
    """Twice the smallest positive subnormal of ``dtype``."""
    info = ml_dtypes.finfo(numpy_dtype(dtype))
    return 2.0 * float(info.smallest_subnormal)


def compare(
    actual: np.ndarray, expected: np.ndarray, dtype: str, quantity: str, *, unit: float = 0.0
) -> dict:
    """Measures how far ``actual`` is from ``expected`` under the table's row for them.

    Args:
      actual: float64 array of any shape.
      expected: float64 array of the same shape.
      dtype: the case's dtype name, a key of the table.
      quantity: one of QUANTITIES, optionally with the suffix ``_ref``.
      unit: the quantity's natural unit, a lower bound of ``scale`` (values use 1 regardless).

    Returns:
      A dict with ``max_abs`` and ``max_rel`` (max_abs / scale, a normwise relative error,
      over finite pairs), ``ratio`` (largest
      error / allowed error; <= 1 passes), ``nonfinite_mismatch`` (count of positions whose
      NaN/inf pattern differs) and ``ok``.
    """
    tol = TOLERANCES[dtype, quantity]
    a = np.asarray(actual, np.float64)
    b = np.asarray(expected, np.float64)
    if a.shape != b.shape:
        return {
            "max_abs": None,
            "max_rel": None,
            "ratio": None,
            "nonfinite_mismatch": None,
            "ok": False,
            "shape_mismatch": f"{a.shape} vs {b.shape}",
        }
    fa, fb = np.isfinite(a), np.isfinite(b)
    same_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    mismatch = int(np.sum(~(fa & fb) & ~same_nan & ~same_inf))
    both = fa & fb
    diff = np.abs(a[both] - b[both])
    mag = np.abs(b[both])
    scale = float(mag.max()) if mag.size else 0.0
    scale = max(scale, 1.0 if quantity.startswith("value") else unit)
    allowed = tol.rtol * mag + tol.atol * scale + subnormal_floor(dtype)
    ratio = float(np.max(diff / allowed)) if diff.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    return {
        "max_abs": max_abs,
        "max_rel": max_rel,
        "ratio": ratio,
        "nonfinite_mismatch": mismatch,
        "ok": bool(mismatch == 0 and ratio <= 1.0),
    }
