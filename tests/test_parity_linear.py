"""The fused linear part of `python -m parity`: its cases, reference, torch runner and verdicts.

The quick matrix' linear slice itself runs in tests/test_parity.py (one subprocess, every case
asserted by id); here: the float64 reference against torch's own fused loss, the case grid,
the chunked path's guard, the units, and a planted wrong gradient that the run must catch.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

import jaxce
from parity._cases import build_matrix
from parity._compare import FAILED, LINEAR_QUANTITIES, linear_units
from parity._linear_cases import (
    _QUICK,
    LINEAR_DTYPES,
    build_linear,
    chunked_takes,
    make_linear_case,
    make_linear_inputs,
    torch_linear_options,
)
from parity._linear_jax import LinearRunner
from parity._matrix import run_matrix
from parity._reference import linear_cross_entropy as reference
from parity._torch_side import torch_linear_cross_entropy
from tests.tolerances import assert_close

REFERENCE_CASES = {
    "index-bias-weight-ignore-mean": dict(target="index", bias=True, weight=True, ignore="some"),
    "index-smoothing-sum": dict(target="index", smoothing=0.2, reduction="sum"),
    "prob-bias-none": dict(target="prob", bias=True, reduction="none", smoothing=0.1),
    "kdim-index-weight": dict(target="index", weight=True, bias=True, out_features=(3,)),
    "kdim-prob-sum": dict(target="prob", reduction="sum", out_features=(3,)),
}


@pytest.mark.parametrize("options", REFERENCE_CASES.values(), ids=list(REFERENCE_CASES))
def test_reference_matches_torch_linear_cross_entropy_in_float64(options):
    """The numpy reference against autograd of torch's own fused loss (reference path)."""
    case = make_linear_case("float64", "torch", "reference", tag="unit", **options)
    inputs = make_linear_inputs(case)
    ref = reference(inputs.hidden, inputs.linear_weight, inputs.labels,
                    **torch_linear_options(case, inputs))  # fmt: skip
    got = torch_linear_cross_entropy(
        inputs.hidden, inputs.linear_weight, inputs.labels, dtype="float64", chunked=False,
        **torch_linear_options(case, inputs),
    )  # fmt: skip
    for q in LINEAR_QUANTITIES:
        expected = getattr(ref, q)
        assert (getattr(got, q) is None) == (expected is None), q
        if expected is not None:
            kind = "loss" if q == "value" else "grad"
            assert_close(getattr(got, q), expected, dtype="float64", quantity=kind, context=q)


def test_chunked_path_never_falls_back_silently():
    """torch warns and runs its reference path for smoothing: the runner raises instead."""
    case = make_linear_case("float32", "torch", "chunked", "index", tag="unit")
    inputs = make_linear_inputs(case)
    options = {**torch_linear_options(case, inputs), "label_smoothing": 0.1}
    with warnings.catch_warnings(), pytest.raises(UserWarning, match=r"``options`` ignored"):
        warnings.simplefilter("ignore")  # the filter the runner sets must win over this one
        torch_linear_cross_entropy(
            inputs.hidden, inputs.linear_weight, inputs.labels, dtype="float32", chunked=True,
            **options,
        )  # fmt: skip


def test_linear_grid_covers_the_options_and_quick_is_a_subset():
    full = build_linear(quick=False, seed=0)
    quick = build_linear(quick=True, seed=0)
    assert len({c.id for c in full}) == len(full)
    assert {c.id for c in quick} == _QUICK, "every quick id names a case of the grid"
    assert [c.id for c in build_matrix(quick=True, seed=0)][-len(quick) :] == [c.id for c in quick]
    for cases in (full, quick):
        assert {c.dtype for c in cases} == set(LINEAR_DTYPES)
        assert {(c.api, c.path) for c in cases} == {
            (a, p) for a in ("torch", "jax") for p in ("reference", "chunked")
        }
        assert {c.target for c in cases} == {"index", "prob"}
        assert {c.reduction for c in cases} == {"none", "mean", "sum"}
        assert {c.ignore for c in cases} == {"none", "some", "all"}
        assert any(c.out_features for c in cases) and any(c.bias for c in cases)
        assert any(c.weight and c.smoothing for c in cases)
    assert all(chunked_takes(c.target, c.smoothing, c.out_features)
               for c in full if c.path == "chunked")  # fmt: skip
    intentional = {c.id for c in full if c.intentional}
    assert intentional == {
        c.id for c in full if c.path == "chunked" and c.ignore == "all" and c.reduction == "mean"
    }


def test_linear_units_bound_the_reference_gradients():
    case = make_linear_case("float32", "torch", "reference", "index", bias=True, tag="unit",
                            reduction="none")  # fmt: skip
    inputs = make_linear_inputs(case)
    ref = reference(inputs.hidden, inputs.linear_weight, inputs.labels,
                    **torch_linear_options(case, inputs))  # fmt: skip
    units = linear_units(inputs, ref)
    for q in ("grad_input", "grad_weight", "grad_bias"):
        assert 0 < np.max(np.abs(getattr(ref, q))) <= units[q] * (1 + 1e-12), q
    assert units["value"] == 1.0 and units["grad_target"] == 0.0


def _bias_gradient_halved(input, linear_weight, target, *, linear_bias=None, **kwargs):
    """jaxce's torch-layout fused loss, except that d loss / d linear_bias is halved."""
    if linear_bias is not None:
        half = 0.5 * linear_bias
        linear_bias = half + jax.lax.stop_gradient(half)  # same value, half the gradient
    return jaxce.torch_linear_cross_entropy(
        input, linear_weight, target, linear_bias=linear_bias, **kwargs
    )


def test_planted_wrong_bias_gradient_fails_exactly_the_cases_it_breaks():
    """A wrong gradient (values untouched) fails the torch-layout cases with a bias, naming
    the bias gradient; the JAX-layout cases, run by the correct function, still pass."""
    chosen = {
        "linear/float32/torch-chunked/index/weight/bias/ignore-100-some/mean",
        "linear/float32/torch-reference/prob/weight/none",  # no bias: nothing to break
        "linear/float32/jax-reference/prob/bias/mean/ls0.1",  # the correct JAX-layout function
        "linear/float32/torch-reference/index/weight/bias/ignore-100-some/mean/out3",
    }
    cases = [c for c in build_linear(quick=True, seed=0) if c.id in chosen]
    assert len(cases) == len(chosen)
    runner = LinearRunner(_bias_gradient_halved, jaxce.linear_cross_entropy)
    records = run_matrix(cases, jaxce.cross_entropy, linear_runner=runner)
    expected = {c.id for c in cases if c.api == "torch" and c.bias}
    assert expected and len(expected) < len(cases)
    assert {r["id"] for r in records if r["status"] == FAILED} == expected
    for r in records:
        if r["id"] in expected:
            assert r["errors"]["value"]["impl_vs_torch"]["ok"], r["id"]
            assert all(f.startswith("grad_bias ") for f in r["failures"]), r["failures"]
            assert not r["errors"]["grad_bias"]["impl_vs_torch"]["ok"]
            assert not r["errors"]["grad_bias"]["impl_vs_reference"]["ok"]
