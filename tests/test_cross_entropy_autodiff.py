"""The custom VJP against autodiff of a plain reference; higher order; jit and vmap."""

from __future__ import annotations

import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from jax.test_util import check_grads

from jaxce import loss
from tests.batch import result, run_together, shared_groups
from tests.conftest import seeded_rng
from tests.reference import reference_cross_entropy
from tests.tolerances import assert_close

OPTION_SETS = {
    "plain": {},
    "weight": {"weight": True},
    "smoothing": {"label_smoothing": 0.2},
    "weight-smoothing": {"weight": True, "label_smoothing": 0.2},
    "ignore-class-2": {"ignore_index": 2},
    "z-loss": {"z_loss": 0.05, "weight": True},
    "softcap": {"softcap": 3.0, "label_smoothing": 0.1},
    "where": {"where": True, "weight": True},
    "everything": {"weight": True, "label_smoothing": 0.3, "z_loss": 0.01, "softcap": 4.0,
                   "where": True},
}  # fmt: skip


def make_problem(target, option_set, *, shape=(4, 6, 3), axis=1):
    """Float64 logits, labels and resolved options for one case (call under enable_x64)."""
    rng = seeded_rng(target, option_set, shape)
    class_axis = axis % len(shape)
    num_classes = shape[class_axis]
    batch_shape = shape[:class_axis] + shape[class_axis + 1 :]
    logits = jnp.asarray(rng.normal(scale=2.0, size=shape))
    if target == "index":
        labels = jnp.asarray(rng.integers(0, num_classes, size=batch_shape))
    else:
        probs = rng.dirichlet(np.ones(num_classes), size=batch_shape)
        labels = jnp.asarray(np.moveaxis(probs, -1, class_axis))
    options = dict(OPTION_SETS[option_set], axis=axis)
    if options.pop("weight", False):
        options["weight"] = jnp.asarray(rng.uniform(0.5, 2.0, size=num_classes))
    if options.pop("where", False):
        keep = rng.uniform(size=batch_shape) < 0.7
        keep.flat[0] = True  # at least one example, so the mean is defined
        options["where"] = jnp.asarray(keep)
    if target == "probs":
        options.pop("ignore_index", None)
    return logits, labels, options


CASES = [
    pytest.param(t, o, r, id=f"{t}-{o}-{r}")
    for t, o, r in itertools.product(("index", "probs"), OPTION_SETS, ("mean", "sum", "none"))
]


def _gradients(target, option_set, reduction):
    """(fn, args): the custom VJP's gradients and autodiff's of the reference, for one case."""
    logits, labels, options = make_problem(target, option_set)
    weight = options.pop("weight", None)
    if weight is None:
        weight = jnp.ones(logits.shape[1])  # differentiate w.r.t. an all-ones weight
    cot = jnp.asarray(seeded_rng("cot").normal(size=(4, 3))) if reduction == "none" else 1.0

    def wrap(fn):
        return lambda x, t, w: jnp.sum(cot * fn(x, t, weight=w, reduction=reduction, **options))

    argnums = (0, 1, 2) if target == "probs" else (0, 2)
    got = jax.grad(wrap(loss.cross_entropy), argnums)
    want = jax.grad(wrap(reference_cross_entropy), argnums)
    return (lambda *args: (got(*args), want(*args))), (logits, labels, weight)


@pytest.fixture(scope="module")
def custom_vjp_gradients(tmp_path_factory):
    """Every case of CASES as one float64 program (see tests/batch.py), by test id."""

    def compute(_):
        with jax.enable_x64(True):
            return run_together({p.id: _gradients(*p.values) for p in CASES})

    return shared_groups(tmp_path_factory, "autodiff", compute)


@pytest.mark.parametrize(("target", "option_set", "reduction"), CASES)
def test_custom_vjp_matches_autodiff_of_the_reference(
    target, option_set, reduction, custom_vjp_gradients
):
    got, want = result(custom_vjp_gradients(), f"{target}-{option_set}-{reduction}")
    for name, g, w in zip(("logits", "labels", "weight")[: len(got)], got, want, strict=True):
        assert_close(g, w, dtype="float64", quantity="grad", context=name)


@pytest.mark.parametrize("target", ["index", "probs"])
@pytest.mark.parametrize("option_set", ["plain", "everything"])
def test_check_grads_reverse_mode_to_second_order(target, option_set):
    with jax.enable_x64(True):
        logits, labels, options = make_problem(target, option_set, shape=(3, 4), axis=-1)
        f = functools.partial(loss.cross_entropy, **options)
        if target == "probs":
            check_grads(jax.jit(f), (logits, labels), order=2, modes=["rev"])
        else:
            check_grads(jax.jit(lambda x: f(x, labels)), (logits,), order=2, modes=["rev"])


@pytest.mark.parametrize("target", ["index", "probs"])
@pytest.mark.parametrize("option_set", ["plain", "everything"])
def test_hessian_by_reverse_over_reverse_matches_the_reference(target, option_set):
    with jax.enable_x64(True):
        logits, labels, options = make_problem(target, option_set, shape=(2, 5), axis=-1)
        got = jax.jit(jax.jacrev(jax.jacrev(lambda x: loss.cross_entropy(x, labels, **options))))(
            logits
        )
        want = jax.jit(jax.hessian(lambda x: reference_cross_entropy(x, labels, **options)))(logits)
    assert_close(got, want, dtype="float64", quantity="second_order")


@pytest.mark.parametrize("target", ["index", "probs"])
def test_forward_mode_through_custom_vjp_false(target):
    with jax.enable_x64(True):
        logits, labels, options = make_problem(target, "everything", shape=(2, 5), axis=-1)
        f = lambda x: loss.cross_entropy(x, labels, custom_vjp=False, **options)
        ref = lambda x: reference_cross_entropy(x, labels, **options)
        tangent = jnp.asarray(seeded_rng("tangent").normal(size=logits.shape))

        def derivatives(f, ref, x):
            return (
                jax.jvp(f, (x,), (tangent,)),
                jax.jvp(ref, (x,), (tangent,)),
                (jax.hessian(f)(x), jax.hessian(ref)(x)),
                (jax.jacfwd(f)(x), jax.jit(jax.grad(ref))(x)),
            )

        (value, jvp), (ref_value, ref_jvp), (hess, ref_hess), (jacfwd, ref_grad) = jax.jit(
            derivatives, static_argnums=(0, 1)
        )(f, ref, logits)
    assert_close(value, ref_value, dtype="float64", quantity="loss")
    assert_close(jvp, ref_jvp, dtype="float64", quantity="grad")
    assert_close(jacfwd, ref_grad, dtype="float64", quantity="grad")
    assert_close(hess, ref_hess, dtype="float64", quantity="second_order")


@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "jit-jvp"])
def test_forward_mode_on_the_custom_vjp_raises_a_clear_error(transform):
    """The documented reason custom_vjp=False exists: the error names it.

    Under an outer jit JAX raises its own TypeError when it compiles the program, after the
    wrapper has returned (documented in the docstring's Raises).
    """
    logits, labels = jnp.ones((2, 3)), jnp.zeros(2, jnp.int32)
    f = lambda x: loss.cross_entropy(x, labels)
    calls = {
        "jvp": lambda: jax.jvp(f, (logits,), (logits,)),
        "jacfwd": lambda: jax.jacfwd(f)(logits),
        "jit-jvp": lambda: jax.jit(lambda x: jax.jvp(f, (x,), (x,)))(logits),
    }
    with pytest.raises(TypeError, match="forward-mode") as info:
        calls[transform]()
    if transform != "jit-jvp":
        assert "cross_entropy has a custom VJP" in str(info.value)
        assert "custom_vjp=False" in str(info.value)


@pytest.mark.parametrize("target", ["index", "probs"])
def test_hessian_through_the_custom_vjp_matches_the_reference(target):
    """jax.hessian is forward over reverse: it works with the default custom VJP."""
    with jax.enable_x64(True):
        logits, labels, options = make_problem(target, "everything", shape=(2, 5), axis=-1)
        got = jax.jit(jax.hessian(lambda x: loss.cross_entropy(x, labels, **options)))(logits)
        want = jax.jit(jax.hessian(lambda x: reference_cross_entropy(x, labels, **options)))(logits)
    assert_close(got, want, dtype="float64", quantity="second_order")


def _saved_shapes(fn, *args, capsys):
    print_saved_residuals(fn, *args)
    lines = capsys.readouterr().out.splitlines()
    shapes = [re.match(r"\w+\[([\d,]*)\]", line).group(1) for line in lines]
    return [(tuple(int(d) for d in s.split(",")) if s else ()) for s in shapes], lines


@pytest.mark.parametrize("target", ["index", "probs"])
def test_custom_vjp_saves_only_the_inputs_and_per_row_residuals(target, capsys):
    n, c = 64, 1000
    logits = jnp.ones((n, c))
    labels = jnp.zeros(n, jnp.int32) if target == "index" else jnp.full((n, c), 1.0 / c)
    options = dict(weight=jnp.ones(c), label_smoothing=0.1, z_loss=1e-3)
    shapes, lines = _saved_shapes(
        lambda x: loss.cross_entropy(x, labels, **options), logits, capsys=capsys
    )
    big = [line for s, line in zip(shapes, lines, strict=True) if np.prod(s) >= n * c]
    # The only [N, C] residuals are arguments (the logits, and the probabilities for soft labels).
    assert big and all("from the argument" in line or "constant" in line for line in big), lines
    plain, plain_lines = _saved_shapes(
        lambda x: loss.cross_entropy(x, labels, custom_vjp=False, **options), logits, capsys=capsys
    )
    # Plain autodiff saves [N, C] arrays it computed (the softmax), beyond the inputs.
    computed = [
        line
        for s, line in zip(plain, plain_lines, strict=True)
        if np.prod(s) >= n * c and "from the argument" not in line and "constant" not in line
    ]
    assert computed, plain_lines


def test_jit_vmap_and_grad_compose():
    rng = seeded_rng("compose")
    logits = jnp.asarray(rng.normal(size=(3, 8, 5)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, size=(3, 8)))
    per_batch = jax.vmap(lambda x, y: loss.cross_entropy(x, y, label_smoothing=0.1))
    expected = loss.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none").mean(-1)
    assert_close(jax.jit(per_batch)(logits, labels), expected, dtype="float32", quantity="loss")
    grads = jax.jit(jax.vmap(jax.grad(lambda x, y: loss.cross_entropy(x, y))))(logits, labels)
    want = jax.grad(lambda x: loss.cross_entropy(x, labels, reduction="none").mean(-1).sum())
    assert_close(grads, want(logits), dtype="float32", quantity="grad")


@pytest.mark.parametrize("custom_vjp", [True, False], ids=["custom-vjp", "plain-autodiff"])
def test_gradients_are_finite_with_masked_classes_in_both_paths(custom_vjp):
    logits = jnp.array([[0.0, -jnp.inf, 1.0], [-jnp.inf, -jnp.inf, 0.0]])
    labels = jnp.array([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])
    f = lambda x, t: loss.cross_entropy(x, t, custom_vjp=custom_vjp)
    value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(logits, labels)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    "options",
    [{}, {"softcap": 3.0}, {"weight": jnp.array([1.0, 2.0, 0.5])}, {"z_loss": 0.01}],
    ids=["plain", "softcap", "weight", "z-loss"],
)
def test_a_zero_target_at_a_masked_class_has_the_same_gradient_in_both_paths(options):
    # plain autodiff gave the row's log-sum-exp (0.47 here), the custom VJP 0: a finite loss
    # whose target gradient depended on custom_vjp
    logits = jnp.array([[1.0, -jnp.inf, 0.5], [0.0, 2.0, -jnp.inf]])
    labels = jnp.array([[0.5, 0.0, 0.5], [0.25, 0.75, 0.0]])
    got = {}
    for custom_vjp in (True, False):
        f = lambda t, custom_vjp=custom_vjp: loss.cross_entropy(
            logits, t, custom_vjp=custom_vjp, **options
        )
        got[custom_vjp] = jax.jit(jax.value_and_grad(f))(labels)
    assert np.isfinite(got[True][0])
    assert_close(got[False][0], got[True][0], dtype="float32", quantity="loss")
    assert_close(got[False][1], got[True][1], dtype="float32", quantity="grad")
    assert got[False][1][0, 1] == 0 and got[False][1][1, 2] == 0
