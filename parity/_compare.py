"""Verdicts: each case's outputs against torch and against the float64 reference.

A case passes when, for every quantity (value, gradient w.r.t. logits, gradient w.r.t.
probability targets), the implementation under test agrees with torch within the tolerance table
AND with the float64 reference rounded to the case's dtype. A case listed as an intentional
difference must still agree with the reference; it is then reported as an intentional
difference (not a pass) when torch disagrees, and as a pass when torch happens to agree. An
intentional difference may name quantities (OFF_REFERENCE) where the implementation also
departs from the math; only the reference's non-finite positions are waived there, and their
count is recorded. Torch and
optax are measured against the reference too, so the report can say who is closer to the truth.
"""

from __future__ import annotations

import math

import numpy as np

from parity._cases import Case, Inputs
from parity._intentional import OFF_REFERENCE
from parity._reference import Result
from parity._tolerances import QUANTITIES, compare, round_to

PASSED, FAILED, INTENTIONAL = "passed", "failed", "intentional"


def _distance(stats: dict) -> float:
    """One number for "how far from the reference": inf when the NaN/inf pattern differs."""
    if stats.get("nonfinite_mismatch") != 0 or stats.get("max_abs") is None:
        return math.inf
    return stats["max_abs"]


def _closer(impl: dict, torch: dict) -> str:
    a, b = _distance(impl), _distance(torch)
    if a == b:
        return "tie"
    return "impl" if a < b else "torch"


def gradient_unit(case: Case, inputs: Inputs) -> float:
    """The natural size of d loss / d logits: |upstream factor| * max class weight."""
    g = float(np.max(np.abs(inputs.cotangent))) if inputs.cotangent.size else 0.0
    w = 1.0 if inputs.weight is None else float(np.max(inputs.weight))
    if case.reduction == "mean":
        if case.target == "prob":
            denom = inputs.labels.size / max(case.shape[case.class_axis], 1)
        else:
            kept = inputs.labels[inputs.labels != case.ignore_index]
            denom = float(kept.size if inputs.weight is None else inputs.weight[kept].sum())
        g = g / denom if denom > 0 else 0.0
    return g * w


def evaluate(
    case: Case,
    impl: Result,
    torch: Result,
    reference: Result,
    optax: Result | None,
    *,
    grad_unit: float = 0.0,
) -> dict:
    """The report record of one case.

    Args:
      case: the case.
      impl, torch, reference, optax: float64 results in torch's layout (optax None when it
        does not support the case).
      grad_unit: ``gradient_unit(case, inputs)``, the natural unit of grad_logits.

    Returns:
      A JSON-ready dict: the case's options, ``status`` (passed/failed/intentional), ``failures``
      (readable reasons) and ``errors[quantity][pair]`` statistics from ``compare``, plus
      ``closer[quantity]`` ("impl", "torch" or "tie": who is nearer the float64 truth).
    """
    errors, closer, failures = {}, {}, []
    for q in QUANTITIES:
        ref = getattr(reference, q)
        if ref is None:
            continue
        truth = round_to(ref, case.dtype)
        unit = grad_unit if q == "grad_logits" else 0.0

        def cmp(a, b, quantity, unit=unit):
            return compare(a, b, case.dtype, quantity, unit=unit)

        pairs = {
            "impl_vs_torch": cmp(getattr(impl, q), getattr(torch, q), q),
            "impl_vs_reference": cmp(getattr(impl, q), truth, q + "_ref"),
            "torch_vs_reference": cmp(getattr(torch, q), truth, q + "_ref"),
        }
        if optax is not None:
            pairs["optax_vs_reference"] = cmp(getattr(optax, q), truth, q + "_ref")
            pairs["impl_vs_optax"] = cmp(getattr(impl, q), getattr(optax, q), q)
        closer[q] = _closer(pairs["impl_vs_reference"], pairs["torch_vs_reference"])
        if q in OFF_REFERENCE.get(case.intentional, ()):
            pairs["impl_vs_reference"] = _waived(getattr(impl, q), truth, case.dtype, q)
        errors[q] = pairs
        for pair in ("impl_vs_torch", "impl_vs_reference"):
            stats = pairs[pair]
            if not stats["ok"] and not (case.intentional and pair == "impl_vs_torch"):
                failures.append(_describe(q, pair, stats))
    torch_agrees = all(e["impl_vs_torch"]["ok"] for e in errors.values())
    if failures:
        status = FAILED
    elif case.intentional and not torch_agrees:
        status = INTENTIONAL
    else:
        status = PASSED
    return {
        "id": case.id,
        "group": case.group,
        "dtype": case.dtype,
        "layout": case.layout,
        "shape": list(case.shape),
        "target": case.target,
        "weight": case.weight,
        "ignore": case.ignore,
        "ignore_index": case.ignore_index,
        "reduction": case.reduction,
        "label_smoothing": case.smoothing,
        "logits": case.logits,
        "seed": case.seed,
        "intentional": case.intentional,
        "status": status,
        "failures": failures,
        "errors": errors,
        "closer": closer,
    }


def _waived(actual: np.ndarray, truth: np.ndarray, dtype: str, quantity: str) -> dict:
    """compare() over the truth's finite positions; counts the waived non-finite ones."""
    finite = np.isfinite(truth)
    stats = compare(actual[finite], truth[finite], dtype, quantity + "_ref")
    stats["waived_positions"] = int(np.sum(~finite & (actual != truth)))
    return stats


def _describe(quantity: str, pair: str, stats: dict) -> str:
    if stats.get("shape_mismatch"):
        return f"{quantity} {pair}: shapes differ ({stats['shape_mismatch']})"
    if stats["nonfinite_mismatch"]:
        return f"{quantity} {pair}: NaN/inf at {stats['nonfinite_mismatch']} different positions"
    return (
        f"{quantity} {pair}: max abs error {stats['max_abs']:.3g} is {stats['ratio']:.3g}x "
        f"the tolerance"
    )
