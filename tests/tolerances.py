"""``assert_close``: the tests' side of the project's one tolerance rule.

The rule and its table (keyed by dtype and quantity, each row with its reason) live in
``parity/_tolerances.py`` and judge the parity reports too. In short: NaN, +inf and -inf must
sit at the same positions, and every finite position must satisfy
``|actual - expected| <= rtol * |expected| + atol * max|expected| + 2 * smallest subnormal``.
"""

from __future__ import annotations

from parity._tolerances import Tolerance, compare, describe, tolerance

__all__ = ["Tolerance", "assert_close", "tolerance"]


def assert_close(
    actual, expected, *, dtype, quantity: str, context: str = "", unit: float = 0.0
) -> None:
    """Asserts that ``actual`` agrees with ``expected`` under the (dtype, quantity) row.

    Args:
      actual, expected: arrays of one shape (any float dtype).
      dtype: the dtype whose row applies (a name such as "float32", or a dtype).
      quantity: "loss", "grad", "second_order", "data_parallel_loss", ... (a row of the table).
      context: what is compared, for the failure message.
      unit: the quantity's natural size, if the expected values may all be tiny (see the rule).
    """
    stats = compare(actual, expected, dtype=dtype, quantity=quantity, unit=unit)
    if not stats["ok"]:
        reason = tolerance(dtype, quantity).reason
        where = f" [{context}]" if context else ""
        raise AssertionError(f"{describe(stats)}{where} -- row's reason: {reason}")
