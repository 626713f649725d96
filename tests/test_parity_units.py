"""The parity package's own parts: the float64 reference, the comparison rule, the matrix."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from parity._cases import LAYOUTS, build_matrix, make_case, make_inputs
from parity._compare import QUANTITIES
from parity._jax_side import Runner
from parity._matrix import GROUP_SIZE, groups
from parity._reference import cross_entropy as reference
from parity._tolerances import DTYPES, TOLERANCES, compare, describe, round_to, subnormal_floor
from parity._torch_side import torch_cross_entropy

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
    assert compare(ref.value, value, dtype="float64", quantity="loss")["ok"]
    assert compare(ref.grad_logits, grad_x, dtype="float64", quantity="grad")["ok"]
    if soft:
        assert compare(ref.grad_target, grad_t, dtype="float64", quantity="grad")["ok"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(3, 0), (0, 0), (0,), (2, 0, 4)], ids=str)
def test_reference_follows_torch_with_zero_classes(shape, reduction):
    """torch 2.13: each row an empty sum, the mean of probabilities NaN (numel / C = 0 / 0)."""
    x, t = np.zeros(shape), np.zeros(shape)
    options = dict(reduction=reduction, label_smoothing=0.1, weight=np.zeros(0))
    got = torch_cross_entropy(x, t, dtype="float64", **options)
    ref = reference(x, t, **options)
    assert compare(ref.value, got.value, dtype="float64", quantity="loss")["ok"]
    assert ref.grad_logits.shape == ref.grad_target.shape == got.grad_logits.shape == shape
    assert math.isnan(float(ref.value)) if reduction == "mean" else not np.isnan(ref.value).any()


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
    assert compare(a, a.copy(), dtype="float32", quantity="loss")["ok"]
    swapped = compare(a, np.array([1.0, np.inf, np.inf]), dtype="float32", quantity="loss")
    assert swapped["nonfinite_mismatch"] == 1 and not swapped["ok"]
    assert "different positions" in describe(swapped)
    assert not compare(a, np.array([1.0, np.nan, -np.inf]), dtype="float32", quantity="loss")["ok"]
    assert not compare(a, np.array([1.0, np.nan, 3.0]), dtype="float32", quantity="loss")["ok"]
    assert not compare(np.ones(2), np.ones(3), dtype="float32", quantity="loss")["ok"]


def test_a_scalar_nan_mismatch_is_described_by_its_values():
    # it said "non-finite actual at [[]]"
    stats = compare(np.float32(np.nan), np.float32(1.5), dtype="float32", quantity="loss")
    assert not stats["ok"]
    assert describe(stats) == "loss (float32): nan, expected 1.5 (NaN and inf must match)"
    assert json.dumps(stats, allow_nan=False)  # the report's JSON takes it as it is


def test_compare_is_the_one_rule():
    """|a - e| <= rtol |e| + atol max(max|e|, unit) + 2 subnormals, per element."""
    tol = TOLERANCES["float32", "grad"]
    expected = np.array([1.0, -0.5, 1e-9])
    bound = tol.rtol * np.abs(expected) + tol.atol * 1.0 + subnormal_floor("float32")
    inside = compare(expected + 0.99 * bound, expected, dtype="float32", quantity="grad")
    outside = compare(expected + 1.01 * bound, expected, dtype="float32", quantity="grad")
    assert inside["ok"] and inside["ratio"] <= 1 and not outside["ok"]
    tiny = np.array([1e-6, -2e-6])  # all tiny: the unit, when given, sets the scale
    assert not compare(tiny + 1e-7, tiny, dtype="float32", quantity="grad")["ok"]
    assert compare(tiny + 1e-7, tiny, dtype="float32", quantity="grad", unit=1.0)["ok"]
    zeros = np.zeros(3)  # nothing to scale by: only the floor (2 subnormals) is allowed
    assert compare(zeros + 1e-45, zeros, dtype="float32", quantity="grad")["ok"]
    assert not compare(zeros + 1e-30, zeros, dtype="float32", quantity="grad")["ok"]


def test_every_tolerance_row_has_a_reason():
    for dtype in DTYPES:
        for kind in set(QUANTITIES.values()):
            for key in ((dtype, kind), (dtype, kind + "_vs_float64")):
                assert TOLERANCES[key].reason, key
    assert all(t.reason and t.rtol >= 0 and t.atol >= 0 for t in TOLERANCES.values())


def test_assert_close_keeps_the_tests_quantities():
    from tests.tolerances import assert_close

    for dtype, quantity in [
        (np.float32, "loss"),
        ("float32", "grad"),
        (np.dtype("float64"), "second_order"),
        ("float32", "data_parallel_loss"),
        ("float32", "data_parallel_accuracy"),
    ]:
        assert_close(np.ones(3), np.ones(3), dtype=dtype, quantity=quantity)
    with pytest.raises(AssertionError, match=r"loss \(float32\).*\[ctx\]"):
        assert_close(np.ones(3), np.full(3, 2.0), dtype="float32", quantity="loss", context="ctx")
    with pytest.raises(KeyError, match="no tolerance row"):
        assert_close(np.ones(3), np.ones(3), dtype="float32", quantity="nonsense")


def _plain_ce(logits, labels, *, axis=-1, weight=None, ignore_index=-100, reduction="mean",
              label_smoothing=0.0):  # fmt: skip
    """A small cross-entropy (no weight, ignore_index or smoothing) for the runner's tests."""
    import jax
    import jax.numpy as jnp

    if weight is not None or label_smoothing or ignore_index != -100:
        raise ValueError("_plain_ce supports no options")
    logp = jax.nn.log_softmax(logits, axis=axis)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        per = -jnp.take_along_axis(logp, jnp.expand_dims(labels, axis), axis=axis).squeeze(axis)
    else:
        per = -jnp.sum(labels * logp, axis=axis)
    return {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]


def test_runner_shares_one_body_per_signature_and_isolates_rejected_cases():
    cases = [
        make_case("unit", "float32", "NC", (4, 3), "index", tag="a"),
        make_case("unit", "float32", "NC", (4, 3), "index", tag="b"),  # same signature as "a"
        make_case("unit", "float32", "NC", (4, 3), "index", weight=True, tag="c"),  # rejected
        make_case("unit", "float64", "NC", (4, 3), "prob", reduction="sum", tag="d"),
    ]
    items = [(c, make_inputs(c)) for c in cases]
    out = Runner(_plain_ce).run_group(items)
    assert isinstance(out[2], ValueError) and "no options" in str(out[2])
    for (case, inputs), result in zip(items, out, strict=True):
        if case.weight:
            continue
        ref = reference(inputs.logits, inputs.labels, reduction=case.reduction,
                        cotangent=inputs.cotangent)  # fmt: skip
        assert compare(result.value, ref.value, dtype=case.dtype, quantity="loss")["ok"]
        assert compare(result.grad_logits, ref.grad_logits, dtype=case.dtype, quantity="grad",
                       unit=1.0)["ok"]  # fmt: skip
    assert out[3].value.dtype == np.float64 and out[0].grad_target is None
    assert not np.array_equal(out[0].value, out[1].value)  # two inputs, one traced body


def test_groups_put_equal_signatures_together_and_cover_every_case():
    cases = build_matrix(quick=False, seed=0)
    found = groups(cases)
    assert sorted(i for g in found for i in g) == list(range(len(cases)))
    for g in found:
        assert len({(cases[i].dtype, cases[i].shape, cases[i].reduction) for i in g}) <= GROUP_SIZE
        assert len({cases[i].dtype == "float64" for i in g}) == 1


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
    assert any(c.shape[c.class_axis] == 0 for c in quick), "zero classes (torch 2.13)"


def test_inputs_are_seeded_and_exact_in_their_dtype():
    case = next(c for c in build_matrix(quick=True, seed=0) if c.dtype == "bfloat16")
    a, b = make_inputs(case), make_inputs(case)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(round_to(a.logits, "bfloat16"), a.logits)
    other = build_matrix(quick=True, seed=1)
    assert next(c for c in other if c.id == case.id).seed != case.seed
