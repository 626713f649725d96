"""The project's one tolerance rule and its table, used by the parity reports and by every test.

The rule. ``actual`` agrees with ``expected`` (arrays of one shape, compared in float64) when

  * NaN, +inf and -inf sit at the same positions on both sides, and
  * at every other position ``|actual - expected| <= rtol * |expected| + atol * scale + floor``,

where ``(rtol, atol)`` is the table's row for ``(dtype, quantity)``, ``scale`` is the largest
finite ``|expected|`` but at least ``unit``, and ``floor`` is twice the dtype's smallest
subnormal (nothing finer can be represented). ``atol * scale`` makes the bound normwise: entries
that cancel to near 0 (p - 1 at the target, a confident row's loss) are judged against the
largest one. ``unit`` is the quantity's natural size when the caller knows it and the expected
array may be tiny everywhere: the parity report passes 1 for a loss value and |cotangent| * max
class weight / divisor for a gradient w.r.t. logits (``parity._compare.grad_unit``, which tests
use where a gradient may cancel to rounding noise everywhere), and for a gradient the fused
linear loss forms by a matmul (input, linear weight, bias) the largest sum of that matmul's term
magnitudes, which bounds its rounding error (``parity._compare.linear_units``); otherwise 0.

The table. Quantities, for each dtype:

  * ``loss``, ``grad``: a loss value, a first-order gradient, against another computation in
    the same dtype (torch, a plain reference, another code path);
  * ``loss_vs_float64``, ``grad_vs_float64``: against the float64 truth rounded to the dtype
    (the best answer the dtype can hold; parity's reference);
  * ``second_order``, ``data_parallel_loss``, ``data_parallel_accuracy`` (float32/float64 only):
    Hessian products; train.py on one device vs several devices or processes.

Every row carries the reason for its numbers, in units of the dtype's machine epsilon eps
(float64 2^-52 = 2.2e-16, float32 2^-23 = 1.2e-7, bfloat16 2^-7 = 7.8e-3, float16 2^-10 =
9.8e-4). "Measured" figures are the largest error / (eps * scale), scale as in the rule, found
over the full parity matrix (seeds 0, 1 and 2: 944 cases each) and every test's comparisons;
under these rows the largest ratio error / allowed was 0.46 in the parity matrix (2831 cases)
and 0.3 in the tests.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np

DTYPES = ("float64", "float32", "bfloat16", "float16")
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "bfloat16": 2.0**-7, "float16": 2.0**-10}
RULE = (
    "|actual - expected| <= rtol*|expected| + atol*max(max|expected|, unit) + "
    "2*smallest_subnormal(dtype); NaN, +inf and -inf must match by position"
)


class Tolerance(NamedTuple):
    rtol: float
    atol: float
    reason: str


def _eps_row(dtype: str, rtol_eps: float, atol_eps: float, reason: str) -> Tolerance:
    """A row given in units of ``dtype``'s eps (the reason states them)."""
    eps = EPS[dtype]
    return Tolerance(
        rtol_eps * eps, atol_eps * eps, f"rtol {rtol_eps:g} eps, atol {atol_eps:g} eps: {reason}"
    )


_F64_SUMS = "float64 on both sides; only the order of log-sum-exp, class and row sums differs"
_F32_SUMS = "float32 log-sum-exp plus sums over up to 70k rows, in different orders"

TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("float64", "loss"): _eps_row(
        "float64", 32, 16, f"{_F64_SUMS} (measured: 2.3 eps normwise, 6 eps elementwise)."
    ),
    ("float64", "grad"): _eps_row(
        "float64",
        64,
        64,
        "softmax - target cancels near p = 1, so small entries are judged against the largest; "
        "a custom VJP against autodiff of the plain formula (another association of the same "
        "terms) measured 13 eps normwise, torch 1.9 eps.",
    ),
    ("float64", "loss_vs_float64"): _eps_row(
        "float64", 32, 16, "as loss: the reference is the same float64 math (measured 2.0 eps)."
    ),
    ("float64", "grad_vs_float64"): _eps_row(
        "float64", 64, 64, "as grad: the reference is the same float64 math (measured 1.8 eps)."
    ),
    ("float64", "second_order"): _eps_row(
        "float64",
        64,
        64,
        "Hessian entries p_i (delta_ij - p_j) and Hessian-vector products, by two differentiation "
        "orders (measured 2.1 eps normwise, 3.6 eps elementwise).",
    ),
    ("float32", "loss"): _eps_row(
        "float32", 16, 8, f"{_F32_SUMS} (measured: 2.9 eps normwise, against torch)."
    ),
    ("float32", "grad"): _eps_row(
        "float32",
        80,
        8,
        "exp() is accurate to ~2 ulp and p - 1 at the target loses the leading bits, so small "
        "entries are judged against the largest (measured 4.7 eps normwise: -inf logits with "
        "probability targets against torch in float64).",
    ),
    ("float32", "loss_vs_float64"): _eps_row(
        "float32", 16, 8, "one float32 computation against the truth (measured 2.2 eps)."
    ),
    ("float32", "grad_vs_float64"): _eps_row(
        "float32", 80, 8, "one float32 computation against the truth (measured 3.3 eps)."
    ),
    ("float32", "data_parallel_loss"): Tolerance(
        1e-5,
        1e-6,
        "train.py on 1 device vs the batch sharded over 4 devices or 2 processes: the gradient's "
        "per-device partial sums are added in another order (a few ulp per step); after the "
        "README's 10 epochs on mnist-mini (1250 Adam steps) the epoch losses differed by <= 3e-7 "
        "relative on one AMD host and <= 6.7e-7 on another (3.0e-7 there with today's example "
        "order; measured), so 15x margin.",
    ),
    ("float32", "data_parallel_accuracy"): Tolerance(
        0.0,
        1e-3,
        "Test accuracy over 2000 examples under the same resharding: one prediction whose top two "
        "logits tie within rounding may flip (5e-4); none did in the measured runs.",
    ),
}
for _dtype in ("bfloat16", "float16"):
    TOLERANCES[_dtype, "loss"] = _eps_row(
        _dtype,
        4,
        2,
        f"the same rounded {_dtype} inputs; the implementation under test accumulates in "
        f"float32 and rounds once (0 eps from the rounded truth), torch rounds its log-softmax "
        f"to {_dtype} on CPU and is off by up to 2.2 eps normwise (measured), 0.73 of the "
        "former 2/1 eps row: doubled so other seeds keep a margin.",
    )
    TOLERANCES[_dtype, "grad"] = _eps_row(
        _dtype,
        4,
        2,
        f"a {_dtype} gradient: one or two {_dtype} roundings on each side (measured 1.8 eps "
        "normwise).",
    )
    for _kind in ("loss", "grad"):
        TOLERANCES[_dtype, _kind + "_vs_float64"] = _eps_row(
            _dtype,
            1,
            1,
            f"float32 accumulation then one rounding to {_dtype}: within 1 ulp of the correctly "
            f"rounded truth (measured 0.6 eps; {_dtype} gradients of means over 70k rows are "
            "subnormal, where the floor of 2 subnormals judges them).",
        )


def dtype_name(dtype) -> str:
    """The name of a dtype given as a name ("float32"), a numpy or JAX dtype, or a type."""
    return dtype if isinstance(dtype, str) else np.dtype(dtype).name


def tolerance(dtype, quantity: str) -> Tolerance:
    """The table's row for (dtype, quantity); KeyError naming the missing row otherwise."""
    key = (dtype_name(dtype), quantity)
    if key not in TOLERANCES:
        raise KeyError(
            f"no tolerance row for {key}; add one, with its reason, to TOLERANCES in "
            "parity/_tolerances.py."
        )
    return TOLERANCES[key]


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype for a case dtype name (bfloat16 via ml_dtypes)."""
    if dtype == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def round_to(array: np.ndarray, dtype: str) -> np.ndarray:
    """Rounds float64 values to ``dtype`` (round to nearest even) and returns them as float64."""
    with np.errstate(over="ignore"):  # beyond the dtype's range rounds to inf, as it should
        return np.asarray(array, dtype=numpy_dtype(dtype)).astype(np.float64)


def subnormal_floor(dtype) -> float:
    """Twice the smallest positive subnormal of ``dtype``."""
    info = ml_dtypes.finfo(numpy_dtype(dtype_name(dtype)))
    return 2.0 * float(info.smallest_subnormal)


def compare(actual, expected, *, dtype, quantity: str, unit: float = 0.0) -> dict:
    """Measures ``actual`` against ``expected`` under the rule and the (dtype, quantity) row.

    Args:
      actual: an array (any float dtype; compared in float64).
      expected: an array of the same shape.
      dtype: the dtype whose row applies (a name or a dtype).
      quantity: a quantity of the table, e.g. "loss" or "grad_vs_float64".
      unit: the quantity's natural size, a lower bound of ``scale`` (0: none).

    Returns:
      A JSON-ready dict: ``ok``; ``max_abs`` and ``max_rel`` (max_abs / scale) over the finite
      pairs; ``ratio`` (largest error / allowed error; <= 1 passes); ``nonfinite_mismatch``
      (positions whose NaN/inf pattern differs) with up to 5 of each side's ``nonfinite``
      positions when it is not 0; ``worst`` (index, actual, expected, allowed) of the largest
      ratio; ``shape_mismatch`` when the shapes differ; the row's ``rtol``, ``atol``, the
      ``scale`` and the ``quantity``/``dtype`` it was judged by.
    """
    tol = tolerance(dtype, quantity)
    a = np.asarray(actual, np.float64)
    b = np.asarray(expected, np.float64)
    stats = {"dtype": dtype_name(dtype), "quantity": quantity, "rtol": tol.rtol, "atol": tol.atol}
    if a.shape != b.shape:
        none = dict.fromkeys(("max_abs", "max_rel", "ratio", "nonfinite_mismatch", "scale"))
        return {**stats, **none, "ok": False, "shape_mismatch": f"{a.shape} vs {b.shape}"}
    same = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    both = np.isfinite(a) & np.isfinite(b)
    mismatch = ~both & ~same
    diff = np.abs(np.subtract(a, b, where=both, out=np.zeros(a.shape)))
    mag = np.abs(np.where(both, b, 0.0))
    scale = max(float(mag.max()) if mag.size else 0.0, unit)
    allowed = tol.rtol * mag + tol.atol * scale + subnormal_floor(dtype)
    ratios = diff / allowed
    max_abs = float(diff.max()) if diff.size else 0.0
    stats.update(
        ok=bool(not mismatch.any() and (not ratios.size or ratios.max() <= 1.0)),
        max_abs=max_abs,
        max_rel=max_abs / scale if scale > 0 else max_abs,
        ratio=float(ratios.max()) if ratios.size else 0.0,
        nonfinite_mismatch=int(mismatch.sum()),
        scale=scale,
    )
    if mismatch.any() and np.ndim(a) == 0:  # a scalar: its values say more than positions
        stats["nonfinite"] = {"actual": str(float(a)), "expected": str(float(b))}
    elif mismatch.any():
        stats["nonfinite"] = {
            "actual": np.argwhere(~np.isfinite(a)).tolist()[:5],
            "expected": np.argwhere(~np.isfinite(b)).tolist()[:5],
            "first_mismatch": np.argwhere(mismatch)[0].tolist(),
        }
    elif ratios.size:
        at = np.unravel_index(int(np.argmax(ratios)), ratios.shape)
        stats["worst"] = {
            "index": [int(i) for i in at],
            "actual": float(a[at]),
            "expected": float(b[at]),
            "allowed": float(allowed[at]),
        }
    return stats


def describe(stats: dict) -> str:
    """One line saying why ``compare``'s verdict failed (or how close it came)."""
    where = f"{stats['quantity']} ({stats['dtype']})"
    if stats.get("shape_mismatch"):
        return f"{where}: shapes differ ({stats['shape_mismatch']})"
    if stats["nonfinite_mismatch"]:
        nf = stats["nonfinite"]
        if "first_mismatch" not in nf:  # a scalar
            return f"{where}: {nf['actual']}, expected {nf['expected']} (NaN and inf must match)"
        return (
            f"{where}: NaN/inf at {stats['nonfinite_mismatch']} different positions (first at "
            f"{nf['first_mismatch']}); non-finite actual at {nf['actual']}, expected at "
            f"{nf['expected']}"
        )
    text = (
        f"{where}: max abs error {stats['max_abs']:.3g} is {stats['ratio']:.3g}x the tolerance "
        f"(rtol {stats['rtol']:.3g}, atol {stats['atol']:.3g} x scale {stats['scale']:.3g})"
    )
    worst = stats.get("worst")
    if worst:
        text += (
            f"; worst at {worst['index']}: {worst['actual']!r} vs {worst['expected']!r} "
            f"(allowed {worst['allowed']:.3g})"
        )
    return text
