"""The row statistics behind every kernel: the CPU split into parts against the textbook form.

On CPU, rows of more than 32768 classes are reduced in equal parts (``jaxce._xla_cpu``, chosen
by ``jaxce._reductions``). These tests pin the part counts, compare the split with the plain two
reductions and a float64 log-sum-exp on awkward rows (-inf entries, a part of only -inf, a row of
only -inf, |x| up to 3e4), and check the loss and gradient of ``cross_entropy`` on such rows
against autodiff of the independent reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxce import _xla_cpu, loss
from jaxce._reductions import (
    CPU_FORMS_VARIABLE,
    guarded_target_sum,
    row_stats,
    target_sum,
    textbook_row_stats,
)
from jaxce._xla_cpu import CPU_ROW_LIMIT, num_parts
from tests.batch import result, run_together, shared_groups
from tests.conftest import seeded_rng, x64_scope
from tests.reference import reference_cross_entropy
from tests.tolerances import assert_close


@pytest.mark.parametrize(
    ("num_classes", "parts"),
    [
        pytest.param(10, 1, id="10"),
        pytest.param(CPU_ROW_LIMIT, 1, id="32768-fits"),
        pytest.param(CPU_ROW_LIMIT + 2, 2, id="32770-halves"),
        pytest.param(50257, 29, id="gpt2-50257"),
        pytest.param(128256, 4, id="llama3-128256"),
        pytest.param(131072, 4, id="131072"),
        pytest.param(256000, 8, id="gemma-256000"),
        pytest.param(65537, 1, id="prime-65537-unsplit"),
    ],
)
def test_num_parts(num_classes, parts):
    assert num_parts(num_classes) == parts
    if parts > 1:
        assert num_classes % parts == 0 and num_classes // parts <= CPU_ROW_LIMIT


def _awkward_rows(rng, shape, axis):
    """Normal logits scaled to |x| ~ 3e4 in one row, with -inf patterns in others."""
    x = rng.normal(size=shape).astype(np.float32)
    x = np.moveaxis(x, axis, -1)  # edit rows with the classes last, then move back
    part = x.shape[-1] // num_parts(x.shape[-1])
    x[0] = -np.inf  # a row of only -inf
    x[1, ..., :part] = -np.inf  # a whole part of -inf
    x[2, ..., ::7] = -np.inf  # scattered -inf
    x[3] *= 1e4  # |x| up to ~4e4
    return jnp.asarray(np.moveaxis(x, -1, axis))


@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        pytest.param((5, 70000), 1, id="N70000-classes-last"),
        pytest.param((5, 65536, 2), 1, id="NCd-65536-classes-middle"),
        pytest.param((4, 2, 50257), 2, id="gpt2-vocab"),
    ],
)
def test_split_matches_plain_and_float64(rng, shape, axis):
    x = _awkward_rows(rng, shape, axis)
    m, lse0 = jax.jit(_xla_cpu.split, static_argnums=1)(x, axis)
    m_plain, lse0_plain = jax.jit(textbook_row_stats, static_argnums=1)(x, axis)
    np.testing.assert_array_equal(np.asarray(m), np.asarray(m_plain))
    assert_close(lse0, lse0_plain, dtype="float32", quantity="loss", context="split vs plain")
    with np.errstate(divide="ignore", invalid="ignore"):
        x64 = np.asarray(x, np.float64)
        top = np.max(x64, axis=axis, keepdims=True)
        top = np.where(np.isneginf(top), 0, top)
        expected = np.log(np.sum(np.exp(x64 - top), axis=axis, keepdims=True)) + top
    assert_close(lse0 + m, expected, dtype="float32", quantity="loss", context="split vs f64")


@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        pytest.param((5, 70000), 1, id="N70000-four-parts"),
        pytest.param((5, 1000, 3), 1, id="NCd-1000-two-halves"),
        pytest.param((5, 999), 1, id="odd-999-one-part"),
    ],
)
def test_shifted_sum_matches_float64(rng, shape, axis):
    """The label-smoothing sum ``sum(xs - m)`` in parts, -inf rows and parts included."""
    x = _awkward_rows(rng, shape, axis)
    m, _ = jax.jit(textbook_row_stats, static_argnums=1)(x, axis)
    got = jax.jit(_xla_cpu.shifted_sum, static_argnums=2)(x, m, axis)
    with np.errstate(invalid="ignore"):
        want = np.sum(np.asarray(x, np.float64) - np.asarray(m, np.float64), axis)
    assert_close(got, want, dtype="float32", quantity="loss")


@pytest.mark.parametrize("case", ["no-inf", "zero-target-on-inf", "mass-on-inf"], ids=lambda c: c)
@pytest.mark.parametrize("batched", [False, True], ids=["jit", "vmap"])
def test_target_sum_fast_path_and_guard(rng, case, batched):
    """The unguarded CPU sum, its NaN fallback to the guarded one, and vmap (cond -> select)."""
    x = rng.normal(size=(4, 3000)).astype(np.float32)
    q = rng.dirichlet(np.ones(3000), size=4).astype(np.float32)
    if case != "no-inf":
        x[1, :100] = -np.inf
        q[1, :100] = 0.0
    if case == "mass-on-inf":
        q[2, 7], x[2, 7] = 0.25, -np.inf
    x, q = jnp.asarray(x), jnp.asarray(q)
    m, _ = textbook_row_stats(x, 1)
    guarded = functools.partial(guarded_target_sum, axis=1)
    fn = functools.partial(_xla_cpu.target_sum, axis=1, guarded=guarded)
    if batched:
        got = jax.jit(jax.vmap(lambda q, x, m: fn(q[None], x[None], m[None])[0]))(q, x, m)
    else:
        got = jax.jit(fn)(q, x, m)
    want = guarded_target_sum(q, x, m, 1)
    assert_close(got, want, dtype="float32", quantity="loss")
    assert np.isneginf(np.asarray(got)[2, 0]) == (case == "mass-on-inf")
    assert np.isfinite(np.asarray(got)[1, 0])


@pytest.mark.parametrize(
    "case",
    ["no-inf", "zero-target-on-inf", "mass-on-inf", "row-of-only-inf", "split-rows"],
    ids=lambda c: c,
)
@pytest.mark.parametrize("batched", [False, True], ids=["jit", "vmap"])
def test_target_value_one_pass_and_its_fallback(rng, case, batched):
    """The one-pass CPU loss value of probability targets, its fallback (NaN rows, rows beyond
    the row limit) and vmap (cond -> select), against float64."""
    classes = CPU_ROW_LIMIT + 2 if case == "split-rows" else 3000
    x = rng.normal(size=(4, classes)).astype(np.float32) * 4
    q = rng.dirichlet(np.ones(classes), size=4).astype(np.float32)
    if case != "no-inf":
        x[1, :100] = -np.inf
        q[1, :100] = 0.0
    if case == "mass-on-inf":
        q[2, 7], x[2, 7] = 0.25, -np.inf
    if case == "row-of-only-inf":
        x[3] = -np.inf
    calls = []

    def fallback(q, x):  # the loss's own: row statistics, then the target sum
        calls.append(1)  # traced: the form is in the program
        m, lse0 = row_stats(x, 1)
        return (lse0 * jnp.sum(q, 1, keepdims=True) - target_sum(q, x, m, 1))[:, 0]

    fn = functools.partial(_xla_cpu.target_value, axis=1, cap=lambda x: x, fallback=fallback)
    if batched:
        got = jax.jit(jax.vmap(lambda q, x: fn(q[None], x[None])[0]))(q, x)
    else:
        got = jax.jit(fn)(q, x)
    assert calls, "the fallback is part of the program"
    got = np.asarray(got)
    with x64_scope(np.float64):  # sum_c q_c (lse - x_c) per row, 0 where q_c is 0
        want = reference_cross_entropy(
            jnp.asarray(x, jnp.float64), jnp.asarray(q, jnp.float64), reduction="none"
        )
    assert_close(got, np.asarray(want), dtype="float32", quantity="loss")
    assert np.isposinf(got[2]) == (case == "mass-on-inf")
    assert np.isfinite(got[1]) and np.isfinite(got[0])
    assert np.isnan(got[3]) == (case == "row-of-only-inf")


def test_row_max_of_a_row_of_only_neg_inf_is_finite():
    """The row maximum's floor: xs - m stays -inf (not NaN) on a row of only -inf."""
    x = jnp.asarray([[-np.inf, -np.inf], [-np.inf, 2.0]], jnp.float32)
    m, lse0 = jax.jit(lambda x: textbook_row_stats(x, 1))(x)
    assert np.asarray(m)[0, 0] == np.finfo(np.float32).min and np.asarray(m)[1, 0] == 2.0
    assert np.isneginf(np.asarray(lse0)[0, 0]) and np.asarray(lse0)[1, 0] == 0.0
    assert np.isneginf(np.asarray(x - m)[0]).all()


SPLIT_CLASSES = {"C4096-one-part": 4096, "C70000-four-parts": 70000}
SPLIT_OPTIONS = {
    "plain": {},
    "smoothing-zloss": {"label_smoothing": 0.1, "z_loss": 1e-3},
    "softcap-sum": {"softcap": 30.0, "reduction": "sum"},
}


def _split_rows_program(classes_id, options_id):
    """(program, args): value and logits gradient of jaxce's loss and of the reference."""
    num_classes, options = SPLIT_CLASSES[classes_id], SPLIT_OPTIONS[options_id]
    rng = seeded_rng("split-rows", classes_id, options_id)
    part = num_classes // max(num_parts(num_classes), 2)  # a part, or half the row
    x = jnp.asarray(rng.normal(size=(6, num_classes)).astype(np.float32) * 5)
    x = x.at[1, :part].set(-jnp.inf)  # the first part of a row (its label lies beyond)
    labels = jnp.asarray([3, num_classes - 1, -100, part, num_classes // 2 + 1, 0])
    got = jax.value_and_grad(lambda x: loss.cross_entropy(x, labels, **options))
    want = jax.value_and_grad(lambda x: reference_cross_entropy(x, labels, **options))
    return (lambda x: (got(x), want(x))), (x,)


@pytest.fixture(scope="module")
def split_rows_results(tmp_path_factory):
    """Every split-rows case as one program (see tests/batch.py)."""

    def compute(_):
        cases = [(c, o) for c in SPLIT_CLASSES for o in SPLIT_OPTIONS]
        return run_together({f"{c}-{o}": _split_rows_program(c, o) for c, o in cases})

    return shared_groups(tmp_path_factory, "row-stats-split", compute)


@pytest.mark.parametrize("classes_id", list(SPLIT_CLASSES))
@pytest.mark.parametrize("options_id", list(SPLIT_OPTIONS))
def test_cross_entropy_on_split_rows(classes_id, options_id, split_rows_results):
    """Loss and logits gradient with the CPU split (4 parts of 17500, or a reshape to 1 part)."""
    (got, grad), (want, want_grad) = result(split_rows_results(), f"{classes_id}-{options_id}")
    assert_close(got, want, dtype="float32", quantity="loss")
    assert_close(grad, want_grad, dtype="float32", quantity="grad")


def test_the_cpu_forms_switch(monkeypatch):
    """JAXCE_XLA_CPU_FORMS=0 traces the textbook forms; 1 (the default) the CPU ones."""
    x = jnp.zeros((2, 5000))
    monkeypatch.setenv(CPU_FORMS_VARIABLE, "0")
    assert "platform_index" not in str(jax.make_jaxpr(lambda x: row_stats(x, 1))(x))
    monkeypatch.setenv(CPU_FORMS_VARIABLE, "1")
    assert "platform_index" in str(jax.make_jaxpr(lambda x: row_stats(x, 1))(x))
    monkeypatch.setenv(CPU_FORMS_VARIABLE, "yes")
    with pytest.raises(ValueError, match=r"JAXCE_XLA_CPU_FORMS must be 1 .* or 0 .*; got 'yes'"):
        jax.make_jaxpr(lambda x: row_stats(x, 1))(x)


@pytest.mark.parametrize("custom_vjp", [True, False], ids=["custom-vjp", "autodiff"])
def test_textbook_forms_give_the_cpu_forms_loss_and_gradient(monkeypatch, rng, custom_vjp):
    """The same loss either way (row counts differ, so each setting is traced afresh)."""
    x = rng.normal(size=(4, 40001)).astype(np.float32) * 3
    labels = jnp.asarray([5, 40000, -100, 17])
    options = dict(label_smoothing=0.1, z_loss=1e-3, custom_vjp=custom_vjp, reduction="none")
    f = lambda x: loss.cross_entropy(x, labels[: x.shape[0]], **options)
    results = {}
    for setting, rows in (("0", 3), ("1", 4)):
        monkeypatch.setenv(CPU_FORMS_VARIABLE, setting)
        out, vjp = jax.vjp(f, jnp.asarray(x[:rows]))
        results[setting] = (out[:3], vjp(jnp.ones_like(out))[0][:3])
    assert_close(results["0"][0], results["1"][0], dtype="float32", quantity="loss")
    assert_close(results["0"][1], results["1"][1], dtype="float32", quantity="grad")
