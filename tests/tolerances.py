"""The comparison every test uses, against the project's one tolerance table.

The table is ``parity._tolerances.TOLERANCES`` (keyed by dtype and quantity, each row with its
reason), shared with the parity reports. A comparison passes when NaN and +-inf sit at the same
positions on both sides and, at every finite position,
``|actual - expected| <= rtol * |expected| + atol * max|expected|``: ``atol`` is relative to
the largest expected magnitude, so one row serves losses of any scale and gradients that shrink
like 1/N under a mean.
"""

from __future__ import annotations

import numpy as np

from parity._tolerances import TOLERANCES, Tolerance


def tolerance(dtype, quantity: str) -> Tolerance:
    key = (np.dtype(dtype).name if not isinstance(dtype, str) else dtype, quantity)
    if key not in TOLERANCES:
        raise KeyError(
            f"no tolerance row for {key}; add one, with its reason, to TOLERANCES in "
            "parity/_tolerances.py."
        )
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
