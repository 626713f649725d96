"""The parity package's own parts: the float64 reference, the comparison rule, the matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from parity._cases import LAYOUTS, build_matrix, make_inputs
from parity._reference import cross_entropy as reference
from parity._tolerances import DTYPES, QUANTITIES, TOLERANCES, compare, round_to

INF = -np.inf


def _torch64(logits, labels, **kw):
    x = torch.tensor(logits, requires_grad=True)
    soft = np.issubdtype(np.asarray(labels).dtype, np.floating)
    t = torch.tensor(labels, requires_grad=soft)
    w = kw.pop("weight", None)
    out = F.cross_entropy(x, t, weight=None if w is None else torch.tensor(w), **kw)
    out.backward(torch.ones_like(out))
    return out.detach().numpy(), x.grad.numpy(), t.grad.numpy() if soft else None


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="plain"),
        pytest.param({"weight": np.array([0.5, 2.0, 1.0, 1.5])}, id="weight"),
        pytest.param({"label_smoothing": 0.3, "reduction": "sum"}, id="smoothing-sum"),
        pytest.param({"ignore_index": 2, "reduction": "none"}, id="ignore-class-2"),
    ],
)
@pytest.mark.parametrize("soft", [False, True], ids=["index", "prob"])
def test_reference_matches_torch_in_float64(options, soft):
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(5, 4, 3))
    if soft:
        options = {k: v for k, v in options.items() if k != "ignore_index"}
        labels = rng.dirichlet(np.ones(4), size=(5, 3)).transpose(0, 2, 1)
    else:
        labels = rng.integers(0, 4, size=(5, 3))
    value, grad_x, grad_t = _torch64(logits, labels, **options)
    ref = reference(logits, labels, **options, cotangent=np.ones_like(value))
    assert compare(ref.value, value, "float64", "value_ref")["ok"]
    assert compare(ref.grad_logits, grad_x, "float64", "grad_logits_ref")["ok"]
    if soft:
        assert compare(ref.grad_target, grad_t, "float64", "grad_target_ref")["ok"]


def test_reference_masked_class_with_probabilities_is_finite_where_torch_is_nan():
    logits = np.array([[0.0, INF, 1.0]])
    probs = np.array([[0.5, 0.0, 0.5]])
    ref = reference(logits, probs)
    assert math.isnan(float(_torch64(logits, probs)[0]))
    assert ref.value == pytest.approx(math.log1p(math.e) - 0.5)  # lse - mean of finite logits
    assert np.all(np.isfinite(ref.grad_logits))
    assert ref.grad_target[0, 1] == np.inf  # d/dt of -t log p at p = 0, as torch says


def test_reference_all_ignored_mean_is_nan_with_zero_gradient():
    ref = reference(np.ones((3, 4)), np.full(3, -100), label_smoothing=0.1)
    assert math.isnan(float(ref.value))
    assert np.all(ref.grad_logits == 0)


def test_compare_requires_nan_and_inf_at_the_same_positions():
    a = np.array([1.0, np.nan, np.inf])
    assert compare(a, a.copy(), "float32", "value")["ok"]
    assert compare(a, np.array([1.0, np.inf, np.inf]), "float32", "value")["nonfinite_mismatch"]
    assert not compare(a, np.array([1.0, np.nan, -np.inf]), "float32", "value")["ok"]
    assert not compare(a, np.array([1.0, np.nan, 3.0]), "float32", "value")["ok"]


def test_compare_uses_the_table_row():
    tol = TOLERANCES["float32", "grad_logits"]
    expected = np.array([1.0, -0.5, 1e-9])
    inside = expected + 0.9 * (tol.rtol * np.abs(expected) + tol.atol)
    outside = expected + np.array([0.0, 0.0, 1.1 * (tol.atol + tol.rtol * 1e-9)])
    assert compare(inside, expected, "float32", "grad_logits")["ratio"] <= 1
    assert compare(outside, expected, "float32", "grad_logits")["ratio"] > 1


def test_every_tolerance_row_exists_with_a_reason():
    for dtype in DTYPES:
        for q in QUANTITIES:
            for key in ((dtype, q), (dtype, q + "_ref")):
                assert TOLERANCES[key].reason, key


def test_quick_matrix_is_a_covering_subset_of_the_full_one():
    quick = build_matrix(quick=True, seed=0)
    full = build_matrix(quick=False, seed=0)
    assert len({c.id for c in full}) == len(full)
    assert {c.id for c in quick} <= {c.id for c in full}
    for attribute, values in [
        ("dtype", DTYPES),
        ("layout", LAYOUTS),
        ("reduction", ("none", "mean", "sum")),
        ("target", ("index", "prob")),
    ]:
        assert {getattr(c, attribute) for c in quick} == set(values), attribute
    assert any(c.weight and c.smoothing and c.ignore == "some" for c in quick)


def test_inputs_are_seeded_and_exact_in_their_dtype():
    case = next(c for c in build_matrix(quick=True, seed=0) if c.dtype == "bfloat16")
    a, b = make_inputs(case), make_inputs(case)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(round_to(a.logits, "bfloat16"), a.logits)
    other = build_matrix(quick=True, seed=1)
    assert next(c for c in other if c.id == case.id).seed != case.seed
