"""Verdicts: each case's outputs against torch and against the float64 reference.

A case passes when, for every quantity (value, gradient w.r.t. logits, gradient w.r.t.
probability targets; for a fused linear case value and the gradients w.r.t. input, linear
weight, linear bias and probability targets, see ``linear_units``), the implementation under
test agrees with torch (the "loss"/"grad" rows of the tolerance table) AND with the float64
reference rounded to the case's dtype (the "..._vs_float64" rows). When torch raises for a
case, the implementation must raise too (both refusing the input is agreement). A case listed
as an intentional difference must still agree with the reference; it is then reported as an
intentional difference (not a pass) when torch disagrees, and as a pass when torch happens to
agree. An intentional difference may name quantities (OFF_REFERENCE) where the implementation
also departs from the math; only the reference's non-finite positions are waived there, and
their count is recorded. Torch and optax are measured against the reference too, so the report
can say who is closer to the truth.
"""

from __future__ import annotations

import math

import numpy as np

from parity._cases import Case, Inputs
from parity._intentional import OFF_REFERENCE, REFUSALS
from parity._linear_cases import LinearCase, LinearInputs
from parity._reference import LinearResult, Result
from parity._tolerances import compare, describe, round_to

PASSED, FAILED, INTENTIONAL = "passed", "failed", "intentional"


class Misbehaved(Exception):
    """The implementation under test broke the call's contract (not a refusal of the input):
    the message says what it did, starting with a verb ("returned ...")."""


# The parity report's quantities and the tolerance rows they are judged by.
QUANTITIES = {"value": "loss", "grad_logits": "grad", "grad_target": "grad"}
# The fused linear cases' quantities (torch's names: input, linear weight, linear bias).
LINEAR_QUANTITIES = {
    "value": "loss",
    "grad_input": "grad",
    "grad_weight": "grad",
    "grad_bias": "grad",
    "grad_target": "grad",
}


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


def grad_unit(
    labels, *, class_axis: int, weight=None, cotangent=1.0, reduction="mean", ignore_index=-100
) -> float:
    """The natural size of d loss / d logits: |cotangent| * max class weight / mean's divisor.

    Its entries are differences of probabilities times that factor, and may all cancel to
    rounding noise (probabilities equal to the softmax); the tolerance rule judges them against
    this unit then. ``labels`` are class indices or probabilities in torch's layout.
    """
    cotangent = np.asarray(cotangent, np.float64)
    labels = np.asarray(labels)
    g = float(np.max(np.abs(cotangent))) if cotangent.size else 0.0
    w = 1.0 if weight is None or not np.size(weight) else float(np.max(weight))
    if reduction == "mean":
        if np.issubdtype(labels.dtype, np.floating):
            denom = labels.size / max(labels.shape[class_axis] if labels.ndim else 1, 1)
        else:
            kept = labels[labels != ignore_index]
            denom = float(kept.size if weight is None else np.asarray(weight)[kept].sum())
        g = g / denom if denom > 0 else 0.0
    return g * w


def gradient_unit(case: Case, inputs: Inputs) -> float:
    """``grad_unit`` of a case's inputs."""
    return grad_unit(
        inputs.labels,
        class_axis=case.class_axis,
        weight=inputs.weight,
        cotangent=inputs.cotangent,
        reduction=case.reduction,
        ignore_index=case.ignore_index,
    )


def linear_units(inputs: LinearInputs, reference: LinearResult | None) -> dict[str, float]:
    """The natural sizes of a fused linear case's quantities (the tolerance rule's ``unit``).

    A matmul's rounding error is bounded by the sum of its terms' magnitudes, not by the
    magnitude of the sum, so each gradient is judged against the largest such sum formed from
    the reference's d loss / d logits G: ``max |G| |W|`` (input), ``max |G|^T |hidden|``
    (linear weight), ``max sum_n |G|`` (bias). The value's unit is 1, the probability
    targets' 0, as in the dense cases.
    """
    units = {"value": 1.0, "grad_input": 0.0, "grad_weight": 0.0, "grad_bias": 0.0}
    units["grad_target"] = 0.0
    if reference is None or reference.grad_logits is None or not reference.grad_logits.size:
        return units
    g = np.abs(reference.grad_logits).reshape(reference.grad_logits.shape[0], -1)
    if not np.all(np.isfinite(g)):
        return units
    w = np.abs(inputs.linear_weight).reshape(-1, inputs.linear_weight.shape[-1])
    units["grad_input"] = float(np.max(g @ w))
    units["grad_weight"] = float(np.max(g.T @ np.abs(inputs.hidden)))
    units["grad_bias"] = float(np.max(g.sum(axis=0)))
    return units


def _raised(err: Exception) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0]


def evaluate(
    case: Case,
    impl: Result | Exception,
    torch: Result | Exception,
    reference: Result | None,
    optax: Result | None,
    *,
    grad_unit: float = 0.0,
    units: dict[str, float] | None = None,
) -> dict:
    """The report record of one case.

    Args:
      case: the case (a ``LinearCase`` is judged on ``LINEAR_QUANTITIES``, others on
        ``QUANTITIES``).
      impl, torch: float64 results in torch's layout, or the exception each raised.
      reference: the float64 reference (None where it cannot evaluate the inputs).
      optax: optax's result (None when it does not support the case or raised).
      grad_unit: ``gradient_unit(case, inputs)``, the natural unit of grad_logits.
      units: each quantity's natural unit, in place of the one derived from ``grad_unit``
        (``linear_units`` for a fused linear case).

    Returns:
      A JSON-ready dict: the case's options, ``status`` (passed/failed/intentional), ``failures``
      (readable reasons), ``raised`` (what each side raised, if it did), ``errors[quantity][pair]``
      statistics from ``compare``, and ``closer[quantity]`` ("impl", "torch" or "tie": who is
      nearer the float64 truth).
    """
    raised = {
        side: _raised(out) for side, out in (("impl", impl), ("torch", torch))
        if isinstance(out, Exception)
    }  # fmt: skip
    if units is None:
        units = {"value": 1.0, "grad_logits": grad_unit, "grad_target": 0.0}
    errors, closer, failures = {}, {}, []
    if not raised:
        errors, closer, failures = _numbers(case, impl, torch, reference, optax, units)
        torch_agrees = all(e["impl_vs_torch"]["ok"] for e in errors.values())
    elif "impl" not in raised:  # torch raised, the implementation returned: still vs the truth
        errors, closer, failures = _numbers(case, impl, None, reference, optax, units)
        if not case.intentional:
            failures.append(f"torch raises ({raised['torch']}); the implementation returned")
        torch_agrees = False
    elif "torch" not in raised:
        refusal = REFUSALS.get(case.intentional)
        if isinstance(impl, Misbehaved):
            failures.append(f"implementation {impl}")
        elif refusal is None or not isinstance(impl, refusal):
            failures.append(f"implementation raised {raised['impl']}")
        torch_agrees = False
    else:  # both refuse the input
        torch_agrees = True
    if failures:
        status = FAILED
    elif case.intentional and not torch_agrees:
        status = INTENTIONAL
    else:
        status = PASSED
    extra = {}
    if isinstance(case, LinearCase):
        extra = {
            "api": case.api,
            "torch_path": case.path,
            "bias": case.bias,
            "features": case.features,
            "out_features": list(case.out_features),
        }
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
        "raised": raised,
        "errors": errors,
        "closer": closer,
        **extra,
    }


def quantities(case) -> dict[str, str]:
    """The quantities a case is judged on, and their tolerance rows' kind."""
    return LINEAR_QUANTITIES if isinstance(case, LinearCase) else QUANTITIES


def _numbers(case, impl, torch, reference, optax, units):
    """errors, closer and failures of the numeric comparisons (torch None: not compared)."""
    errors, closer, failures = {}, {}, []
    if reference is None:
        return errors, closer, ["the float64 reference cannot evaluate these inputs"]
    for q, kind in quantities(case).items():
        ref = getattr(reference, q)
        if ref is None:
            continue
        truth = round_to(ref, case.dtype)
        unit = units.get(q, 0.0)

        def cmp(a, b, quantity, unit=unit):
            return compare(a, b, dtype=case.dtype, quantity=quantity, unit=unit)

        pairs = {"impl_vs_reference": cmp(getattr(impl, q), truth, kind + "_vs_float64")}
        if torch is not None:
            pairs["impl_vs_torch"] = cmp(getattr(impl, q), getattr(torch, q), kind)
            pairs["torch_vs_reference"] = cmp(getattr(torch, q), truth, kind + "_vs_float64")
        if optax is not None:
            pairs["optax_vs_reference"] = cmp(getattr(optax, q), truth, kind + "_vs_float64")
            pairs["impl_vs_optax"] = cmp(getattr(impl, q), getattr(optax, q), kind)
        if torch is not None:
            closer[q] = _closer(pairs["impl_vs_reference"], pairs["torch_vs_reference"])
        if q in OFF_REFERENCE.get(case.intentional, ()):
            pairs["impl_vs_reference"] = _waived(getattr(impl, q), truth, case.dtype, kind, unit)
        errors[q] = pairs
        for pair in ("impl_vs_torch", "impl_vs_reference"):
            stats = pairs.get(pair)
            if stats and not stats["ok"] and not (case.intentional and pair == "impl_vs_torch"):
                failures.append(f"{q} {pair}: {describe(stats)}")
    return errors, closer, failures


def _waived(actual, truth: np.ndarray, dtype: str, kind: str, unit: float) -> dict:
    """compare() over the truth's finite positions; counts the waived non-finite ones."""
    finite = np.isfinite(truth)
    stats = compare(
        np.asarray(actual)[finite], truth[finite], dtype=dtype, quantity=kind + "_vs_float64",
        unit=unit,
    )  # fmt: skip
    stats["waived_positions"] = int(np.sum(~finite & (actual != truth)))
    return stats
