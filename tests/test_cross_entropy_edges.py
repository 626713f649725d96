"""Edge cases: empty and all-ignored batches, -inf and huge logits, one class, low precision."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxce import loss
from parity._torch_side import torch_cross_entropy
from tests.batch import result, run_together, shared_groups
from tests.conftest import seeded_rng, x64_scope
from tests.reference import reference_cross_entropy
from tests.tolerances import assert_close

REDUCTIONS = ["mean", "sum", "none"]


def _value_and_grad(logits, labels, **options):
    """The loss and its VJP for a cotangent of ones, compiled as one program."""

    @jax.jit
    def run(x):
        out, vjp = jax.vjp(lambda x: loss.cross_entropy(x, labels, **options), x)
        return out, vjp(jnp.ones_like(out))[0]

    return run(logits)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
def test_all_ignored_batch_matches_torch(reduction, weighted):
    logits = seeded_rng("all-ignored").normal(size=(4, 3))
    labels = np.full((4,), -100)
    weight = np.array([0.5, 1.0, 2.0]) if weighted else None
    expected = torch_cross_entropy(
        logits, labels, dtype="float32", weight=weight, reduction=reduction
    )
    w = None if weight is None else jnp.asarray(weight, jnp.float32)
    out, grad = _value_and_grad(
        jnp.asarray(logits, jnp.float32), jnp.asarray(labels), weight=w, reduction=reduction
    )
    assert np.isnan(out) if reduction == "mean" else not np.isnan(out).any()
    assert_close(out, expected.value, dtype="float32", quantity="loss")
    assert_close(grad, expected.grad_logits, dtype="float32", quantity="grad")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target", ["index", "probs"])
def test_empty_batch_matches_torch(reduction, target):
    logits = np.zeros((0, 3))
    labels = np.zeros((0,), np.int64) if target == "index" else np.zeros((0, 3))
    expected = torch_cross_entropy(logits, labels, dtype="float32", reduction=reduction)
    jl = jnp.asarray(labels, jnp.int32 if target == "index" else jnp.float32)
    out, grad = _value_and_grad(jnp.zeros((0, 3), jnp.float32), jl, reduction=reduction)
    assert out.shape == expected.value.shape
    assert_close(out, expected.value, dtype="float32", quantity="loss")
    assert grad.shape == (0, 3)


INF = -np.inf
INF_CASES = {
    # name: (logits row, label or probabilities, options)
    "masked-class-index": ([0.0, INF, 1.0], 0, {}),
    "masked-class-index-smoothing": ([0.0, INF, 1.0], 0, {"label_smoothing": 0.1}),
    "target-is-masked": ([0.0, INF, 1.0], 1, {}),
    "masked-class-weighted": ([0.0, INF, 1.0, 2.0], 3, {"weight": [1.0, 0.0, 2.0, 0.5]}),
}


@pytest.mark.parametrize("case", list(INF_CASES), ids=list(INF_CASES))
def test_neg_inf_logits_with_indices_match_torch(case):
    row, label, options = INF_CASES[case]
    logits, labels = np.array([row, [0.5] * len(row)]), np.array([label, 0])
    options = dict(options)
    weight = options.pop("weight", None)
    expected = torch_cross_entropy(
        logits,
        labels,
        dtype="float32",
        weight=None if weight is None else np.array(weight),
        **options,
    )
    w = None if weight is None else jnp.asarray(weight, jnp.float32)
    out, grad = _value_and_grad(
        jnp.asarray(logits, jnp.float32), jnp.asarray(labels), weight=w, **options
    )
    assert np.isfinite(grad).all(), "gradients stay finite with -inf logits"
    assert_close(out, expected.value, dtype="float32", quantity="loss")
    assert_close(grad, expected.grad_logits, dtype="float32", quantity="grad")


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
def test_neg_inf_logits_with_probabilities_are_finite_where_torch_is_nan(smoothing, weighted):
    """A deliberate difference: torch computes 0 * -inf = NaN, jaxce uses 0 * log 0 = 0."""
    logits = np.array([[0.0, INF, 1.0], [INF, 2.0, INF]])
    probs = np.array([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
    weight = np.array([1.0, 3.0, 0.5]) if weighted else None
    torch_out = torch_cross_entropy(logits, probs, dtype="float64", weight=weight)
    assert np.isnan(torch_out.value), "torch's behaviour this difference is documented against"
    w = None if weight is None else jnp.asarray(weight, jnp.float32)
    x, t = jnp.asarray(logits, jnp.float32), jnp.asarray(probs, jnp.float32)
    f = lambda x, t: loss.cross_entropy(x, t, weight=w, label_smoothing=smoothing)
    value, (gx, gt) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, t)
    ref_f = lambda x, t: reference_cross_entropy(x, t, weight=w, label_smoothing=smoothing)
    ref_value, (ref_gx, ref_gt) = jax.jit(jax.value_and_grad(ref_f, argnums=(0, 1)))(x, t)
    if smoothing:  # smoothing puts mass on the masked classes: the loss is +inf, as the math says
        assert value == np.inf and ref_value == np.inf
    else:
        assert np.isfinite(value)
        assert_close(value, ref_value, dtype="float32", quantity="loss")
    assert np.isfinite(gx).all()
    assert_close(gx, ref_gx, dtype="float32", quantity="grad", context="logits")
    assert_close(gt, ref_gt, dtype="float32", quantity="grad", context="labels")


@pytest.mark.parametrize("scale", [1e3, 3e4])
@pytest.mark.parametrize("target", ["index", "probs"])
def test_large_logits_stay_accurate_in_float32(scale, target):
    rng = seeded_rng("large", scale, target)
    logits = (rng.uniform(-1, 1, size=(16, 50)) * scale).astype(np.float32)
    if target == "index":
        labels = rng.integers(0, 50, size=16)
    else:
        labels = rng.dirichlet(np.ones(50), size=16).astype(np.float32)
    truth = torch_cross_entropy(
        logits.astype(np.float64), labels, dtype="float64", reduction="none"
    )
    jl = jnp.asarray(labels)
    out = loss.cross_entropy(jnp.asarray(logits), jl, reduction="none")
    grad = jax.jit(jax.grad(lambda x: loss.cross_entropy(x, jl, reduction="sum")))(
        jnp.asarray(logits)
    )
    assert np.isfinite(out).all() and np.isfinite(grad).all()
    assert_close(out, truth.value, dtype="float32", quantity="loss")
    assert_close(grad, truth.grad_logits, dtype="float32", quantity="grad")


@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4])
@pytest.mark.parametrize("custom_vjp", [True, False], ids=["custom_vjp", "autodiff"])
def test_label_smoothing_stays_accurate_under_a_common_offset(offset, custom_vjp):
    """The smoothing term sums ``x - max``: logits sharing a large offset lose nothing (an
    unshifted ``sum(x)`` is off by about 2e-5 relative at offset 1e4, beyond the row)."""
    rng = seeded_rng("offset", offset)
    logits = (2 * rng.normal(size=(64, 4096)) + offset).astype(np.float32)
    labels = rng.integers(0, 4096, size=64)
    with x64_scope(np.float64):
        want = reference_cross_entropy(
            jnp.asarray(logits, jnp.float64),
            jnp.asarray(labels),
            label_smoothing=0.1,
            reduction="none",
        )
    got = loss.cross_entropy(
        jnp.asarray(logits),
        jnp.asarray(labels),
        label_smoothing=0.1,
        reduction="none",
        custom_vjp=custom_vjp,
    )
    assert_close(got, np.asarray(want), dtype="float32", quantity="loss_vs_float64")


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_single_class_has_zero_loss_and_gradient(smoothing):
    logits = jnp.asarray(seeded_rng("one-class").normal(size=(5, 1)), jnp.float32)
    out, grad = _value_and_grad(logits, jnp.zeros(5, jnp.int32), label_smoothing=smoothing)
    expected = torch_cross_entropy(
        np.asarray(logits),
        np.zeros(5, np.int64),
        dtype="float32",
        label_smoothing=smoothing,
    )
    assert_close(out, expected.value, dtype="float32", quantity="loss")
    assert_close(grad, expected.grad_logits, dtype="float32", quantity="grad")


def _low_precision_inputs(dtype, reduction, target):
    """Logits and labels rounded to ``dtype`` (as float64 numpy), as both sides receive them."""
    rng = seeded_rng("lowp", dtype, reduction, target)
    logits = np.asarray(jnp.asarray(rng.normal(scale=2.0, size=(32, 7)), dtype), np.float64)
    if target == "index":
        labels = rng.integers(0, 7, size=32)
    else:
        labels = np.asarray(jnp.asarray(rng.dirichlet(np.ones(7), size=32), dtype), np.float64)
    return logits, labels


def _low_precision_program(dtype, reduction, target):
    """(program, args): jaxce's loss and its VJP for a cotangent of ones, in ``dtype``."""
    logits, labels = _low_precision_inputs(dtype, reduction, target)
    jl = jnp.asarray(labels, dtype) if target == "probs" else jnp.asarray(labels)

    def program(x, y):
        out, vjp = jax.vjp(lambda x: loss.cross_entropy(x, y, reduction=reduction), x)
        return out, vjp(jnp.ones_like(out))[0]

    return program, (jnp.asarray(logits, dtype), jl)


LOW_PRECISION = list(itertools.product(["float16", "bfloat16"], REDUCTIONS, ["index", "probs"]))


@pytest.fixture(scope="module")
def low_precision_results(tmp_path_factory):
    """Every low-precision case as one program (see tests/batch.py)."""

    def compute(_):
        return run_together({repr(c): _low_precision_program(*c) for c in LOW_PRECISION})

    return shared_groups(tmp_path_factory, "edges-low-precision", compute)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target", ["index", "probs"])
def test_low_precision_matches_torch_on_the_same_rounded_inputs(
    dtype, reduction, target, low_precision_results
):
    logits, labels = _low_precision_inputs(dtype, reduction, target)
    expected = torch_cross_entropy(
        logits,
        labels,
        dtype=dtype,
        reduction=reduction,
        cotangent=np.ones(32) if reduction == "none" else None,
    )
    out, grad = result(low_precision_results(), repr((dtype, reduction, target)))
    assert out.dtype == jnp.dtype(dtype) and grad.dtype == jnp.dtype(dtype)
    assert_close(out, expected.value, dtype=dtype, quantity="loss")
    assert_close(grad, expected.grad_logits, dtype=dtype, quantity="grad")


def test_float16_mean_over_many_rows_accumulates_in_float32():
    """torch on CPU returns NaN here (it accumulates in float16); jaxce returns the mean."""
    rng = seeded_rng("fp16-70k")
    logits = rng.normal(size=(70_000, 10))
    labels = rng.integers(0, 10, size=70_000)
    rounded = np.asarray(jnp.asarray(logits, jnp.float16), np.float64)
    truth = torch_cross_entropy(rounded, labels, dtype="float64").value
    torch_fp16 = torch_cross_entropy(rounded, labels, dtype="float16").value
    out = loss.cross_entropy(jnp.asarray(logits, jnp.float16), jnp.asarray(labels))
    assert out.dtype == jnp.float16
    assert not np.isfinite(torch_fp16), "torch's behaviour this difference is documented against"
    assert_close(out, truth, dtype="float16", quantity="loss")


@pytest.mark.parametrize("label_dtype", ["int8", "uint8", "int16", "int32"])
def test_any_integer_label_dtype(label_dtype):
    logits = jnp.asarray(seeded_rng("int-dtypes").normal(size=(6, 4)), jnp.float32)
    labels = np.array([0, 1, 2, 3, 1, 0])
    expected = loss.cross_entropy(logits, jnp.asarray(labels, jnp.int32))
    assert_close(
        loss.cross_entropy(logits, jnp.asarray(labels, label_dtype)),
        expected,
        dtype="float32",
        quantity="loss",
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target", ["index", "probs"])
def test_where_equals_dropping_the_examples(reduction, target):
    rng = seeded_rng("where", reduction, target)
    logits = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
    if target == "index":
        labels = jnp.asarray(rng.integers(0, 5, size=8))
    else:
        labels = jnp.asarray(rng.dirichlet(np.ones(5), size=8), jnp.float32)
    keep = np.array([True, False, True, True, False, True, False, True])
    weight = jnp.asarray(rng.uniform(0.5, 2, size=5), jnp.float32)
    out = loss.cross_entropy(logits, labels, weight=weight, reduction=reduction, where=keep)
    kept = loss.cross_entropy(logits[keep], labels[keep], weight=weight, reduction=reduction)
    if reduction == "none":
        assert np.all(np.asarray(out)[~keep] == 0)
        out = np.asarray(out)[keep]
    assert_close(out, kept, dtype="float32", quantity="loss")


def extension_program(z_loss, softcap, target, dtype):
    """(program, args): value and gradient of jaxce's loss and of the reference, for one case
    of the z-loss and softcap test (in its dtype's scope; `run_together` compiles many)."""
    rng = seeded_rng("extensions", z_loss, softcap, target)
    logits = jnp.asarray(rng.normal(scale=4.0, size=(2, 6, 3)), dtype)
    if target == "index":
        labels = jnp.asarray(rng.integers(0, 6, size=(2, 3)))
    else:
        labels = jnp.asarray(np.moveaxis(rng.dirichlet(np.ones(6), size=(2, 3)), -1, 1), dtype)
    options = dict(
        axis=1,
        z_loss=z_loss,
        softcap=softcap,
        label_smoothing=0.1,
        weight=jnp.asarray(rng.uniform(0.5, 2, size=6), dtype),
    )
    got = jax.value_and_grad(lambda x: loss.cross_entropy(x, labels, **options))
    want = jax.value_and_grad(lambda x: reference_cross_entropy(x, labels, **options))
    return (lambda x: (got(x), want(x))), (logits,)


EXTENSIONS = list(itertools.product([0.0, 1e-2], [None, 5.0], ["index", "probs"]))


@pytest.fixture(scope="module")
def extension_results(tmp_path_factory):
    """dtype -> {case: results}: each dtype's z-loss and softcap cases as one program."""

    def compute(dtype):
        with x64_scope(dtype):
            return run_together({repr(c): extension_program(*c, dtype) for c in EXTENSIONS})

    return shared_groups(tmp_path_factory, "edges-extensions", compute)


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
@pytest.mark.parametrize("softcap", [None, 5.0], ids=["nocap", "cap5"])
@pytest.mark.parametrize("target", ["index", "probs"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_z_loss_and_softcap_match_the_reference(z_loss, softcap, target, dtype, extension_results):
    (value, grad), (ref_value, ref_grad) = result(
        extension_results(dtype), repr((z_loss, softcap, target))
    )
    assert value.dtype == grad.dtype == dtype
    assert_close(value, ref_value, dtype=dtype, quantity="loss")
    assert_close(grad, ref_grad, dtype=dtype, quantity="grad")


@pytest.mark.parametrize("custom_vjp", [True, False], ids=["custom-vjp", "plain-autodiff"])
@pytest.mark.parametrize("target", ["index", "probs"])
def test_full_smoothing_with_a_masked_class_has_no_nan_gradient(custom_vjp, target):
    """At label_smoothing=1 the label term is absent: no 0 * inf in the loss or the gradients."""
    logits = jnp.array([[0.0, -jnp.inf, 1.0], [0.5, 0.2, -1.0]])
    labels = jnp.array([1, 0]) if target == "index" else jnp.array([[0.5, 0, 0.5], [0, 1, 0.0]])
    f = lambda x, t: loss.cross_entropy(x, t, label_smoothing=1.0, custom_vjp=custom_vjp)
    argnums = (0, 1) if target == "probs" else (0,)
    value, grads = jax.jit(jax.value_and_grad(f, argnums=argnums))(logits, labels)
    assert value == np.inf  # the uniform target puts mass on the masked class
    assert all(np.isfinite(g).all() for g in grads)
    if target == "probs":
        assert np.all(np.asarray(grads[1]) == 0), "the loss does not depend on the labels"


ZERO_WEIGHT_CASES = {
    # name: (logits, labels, class weight, label smoothing): torch's value and gradients are NaN
    "nan-logit-zero-weight-label": ([[np.nan, 1.0, 2.0], [1.0, 2.0, 3.0]], [0, 1], [0, 1, 1], 0.0),
    "inf-logit-zero-weight-label": ([[np.inf, 1.0, 2.0], [1.0, 2.0, 3.0]], [0, 1], [0, 1, 1], 0.0),
    "no-weight-to-divide-by": ([[1.0, 2.0, 3.0], [0.5, 0.1, -1.0]], [0, 0], [0, 1, 1], 0.0),
    "no-weight-to-divide-by-smoothing": (
        [[1.0, 2.0, 3.0], [0.5, 0.1, -1.0]],
        [0, 0],
        [0, 1, 1],
        0.2,
    ),
}


@pytest.mark.parametrize("custom_vjp", [True, False], ids=["custom-vjp", "plain-autodiff"])
@pytest.mark.parametrize("case", list(ZERO_WEIGHT_CASES), ids=list(ZERO_WEIGHT_CASES))
def test_zero_label_weights_hide_no_nan_and_divide_nothing_as_torch(case, custom_vjp):
    """A zero label weight drops an infinite -log p but not a NaN (the loss was finite while its
    gradient was NaN); a mean over zero weight is NaN, with label smoothing too (it was inf)."""
    logits, labels, weight, smoothing = ZERO_WEIGHT_CASES[case]
    logits, labels, weight = np.array(logits), np.array(labels), np.array(weight, float)
    expected = torch_cross_entropy(
        logits, labels, dtype="float32", weight=weight, label_smoothing=smoothing
    )
    assert np.isnan(expected.value) and np.isnan(expected.grad_logits[0]).all()
    out, grad = _value_and_grad(
        jnp.asarray(logits, jnp.float32),
        jnp.asarray(labels),
        weight=jnp.asarray(weight, jnp.float32),
        label_smoothing=smoothing,
        custom_vjp=custom_vjp,
    )
    assert_close(out, expected.value, dtype="float32", quantity="loss")
    assert_close(grad[0], expected.grad_logits[0], dtype="float32", quantity="grad")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weight_gradient_without_z_loss_survives_huge_logits(dtype, smoothing):
    """The z-loss term of the weight gradient is absent at z_loss = 0: 0 times its overflowed
    square made the custom VJP's weight gradient NaN where plain autodiff's is finite."""
    scale = {"float32": 1e20, "float64": 1e160}[dtype]
    with x64_scope(dtype):
        x = jnp.asarray([[0.1, 1.0, -0.5], [0.3, -0.2, 0.0]], dtype) * scale
        y, w = jnp.asarray([1, 0]), jnp.asarray([1.0, 2.0, 0.5], dtype)
        grads = [
            jax.grad(
                lambda w, c=custom: loss.cross_entropy(
                    x, y, weight=w, label_smoothing=smoothing, custom_vjp=c
                )
            )(w)
            for custom in (True, False)
        ]
    assert np.isfinite(grads[0]).all()
    assert_close(grads[0], grads[1], dtype=dtype, quantity="grad")
