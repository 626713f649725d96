"""Gradients whose parts could cancel or overflow: each part kept in float32, rounded once.

- float16/bfloat16 class weights under ``reduction="mean"``: the gradient is the loss's part
  minus the divisor's, nearly equal; each must stay float32 until they are added.
- ``custom_vjp=False`` with float16/bfloat16 logits: plain autodiff must accumulate in float32
  as the custom VJP does, and a dropped example's non-finite logits must not reach the gradient.
- Extreme weight scales: the mean's derivative w.r.t. its divisor must not square the divisor.

Each is compared with the float64 computation of the same rounded inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxce import loss
from tests.conftest import seeded_rng, x64_scope
from tests.tolerances import assert_close

N, C = 4096, 16
HALF = ["bfloat16", "float16"]


def _inputs(name: str, rows: int = N):
    """Standard normal logits (the kernel is the identity): every example's loss is near the
    mean, so the two parts of the weight gradient nearly cancel."""
    rng = seeded_rng("low-precision", name, rows)
    hidden = rng.normal(size=(rows, C)).astype(np.float32)
    kernel = np.eye(C, dtype=np.float32)
    labels = rng.integers(0, C, size=rows).astype(np.int32)
    weight = rng.uniform(0.5, 1.5, size=C)
    return hidden, kernel, labels, weight


def _weight_grad(fn, hidden, kernel, labels, weight):
    return jax.grad(lambda w: fn(hidden, kernel, labels, w))(weight)


def _parts_unit(fn, hidden, kernel, labels, weight) -> float:
    """The size of the two parts the weight gradient of a mean is the difference of: the
    loss's, sum of nll over class c's rows / W, and the divisor's, mean * n_c / W (W the
    summed label weight, n_c the rows of class c). Rounding scales with them, not with their
    difference (the tolerance rule's ``unit``)."""
    mean = float(fn(hidden, kernel, labels, weight))
    counts = np.bincount(labels, minlength=C)
    return abs(mean) * counts.max() / float(np.sum(np.asarray(weight, np.float64)[labels]))


LOSSES = {
    "cross_entropy": lambda h, k, y, w: loss.cross_entropy(h @ k, y, weight=w),
    "cross_entropy_plain": lambda h, k, y, w: loss.cross_entropy(
        h @ k, y, weight=w, custom_vjp=False
    ),
    "smoothed": lambda h, k, y, w: loss.cross_entropy(h @ k, y, weight=w, label_smoothing=0.1),
    "linear_cross_entropy": lambda h, k, y, w: loss.linear_cross_entropy(h, k, y, weight=w),
}


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", list(LOSSES))
def test_half_precision_class_weight_gradient_is_rounded_once(name, dtype):
    hidden, kernel, labels, weight = _inputs(name)
    rounded = np.asarray(jnp.asarray(weight, dtype), np.float64)  # the weights as given
    got = _weight_grad(LOSSES[name], hidden, kernel, labels, jnp.asarray(weight, dtype))
    assert got.dtype == jnp.dtype(dtype)
    with x64_scope("float64"):
        args = (hidden.astype(np.float64), kernel.astype(np.float64), labels, rounded)
        want = np.asarray(_weight_grad(LOSSES[name], *map(jnp.asarray, args)))
    # judged against the gradient itself: its float32 parts are far more accurate than the one
    # half-precision rounding of their difference (rounding each part, as before, was not)
    assert_close(got, want, dtype=dtype, quantity="grad", context=name)


@pytest.mark.parametrize("dtype", HALF)
def test_plain_autodiff_of_half_logits_accumulates_in_float32(dtype):
    """Confident rows: the target's gradient, -(1 - p_y), is small and must not round away."""
    logits = np.zeros((64, 4), np.float32)
    logits[:, 0] = np.linspace(4.0, 10.0, 64)  # p_y from 0.95 to 0.99986
    labels = jnp.zeros(64, jnp.int32)
    x = jnp.asarray(logits, dtype)
    grads = {
        custom: jax.grad(lambda x, c=custom: loss.cross_entropy(x, labels, custom_vjp=c))(x)
        for custom in (True, False)
    }
    with x64_scope("float64"):
        want = jax.grad(lambda x: loss.cross_entropy(x, labels))(
            jnp.asarray(np.asarray(x, np.float64))
        )
    for custom, got in grads.items():
        assert_close(got, np.asarray(want), dtype=dtype, quantity="grad", context=f"{custom=}")


@pytest.mark.parametrize("custom_vjp", [True, False], ids=["custom-vjp", "plain-autodiff"])
@pytest.mark.parametrize("dropped_by", ["ignore_index", "where", "where-probabilities"])
@pytest.mark.parametrize("row", ["-inf", "+inf", "nan", "huge-with-z-loss"])
def test_a_dropped_example_gets_zero_gradient_whatever_its_logits(row, dropped_by, custom_vjp):
    bad = {
        "-inf": [-np.inf] * 3,
        "+inf": [np.inf, 0.0, 1.0],
        "nan": [np.nan, 0.0, 1.0],
        "huge-with-z-loss": [3e38, -3e38, 0.0],
    }[row]
    logits = jnp.array([[0.0, 1.0, 2.0], bad], jnp.float32)
    options = dict(custom_vjp=custom_vjp, label_smoothing=0.1, z_loss=1e-3)
    weight = jnp.array([1.0, 2.0, 0.5])
    if dropped_by == "where-probabilities":
        labels = jnp.array([[0.2, 0.3, 0.5], [np.nan, 0.5, 0.5]])
        options.update(where=jnp.array([True, False]))
    else:
        labels = jnp.array([0, -100 if dropped_by == "ignore_index" else 1])
        if dropped_by == "where":
            options.update(where=jnp.array([True, False]))

    def f(x, t, w):
        return loss.cross_entropy(x, t, weight=w, **options)

    soft = labels.dtype != jnp.int32
    argnums = (0, 1, 2) if soft else (0, 2)
    value, grads = jax.value_and_grad(f, argnums=argnums)(logits, labels, weight)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in grads), grads
    np.testing.assert_array_equal(grads[0][1], 0.0)
    kept = loss.cross_entropy(logits[:1], labels[:1], weight=weight, **{
        **options, **({"where": jnp.array([True])} if "where" in options else {})
    })  # fmt: skip
    assert_close(value, kept, dtype="float32", quantity="loss", context="the kept row alone")


@pytest.mark.parametrize("scale", [1e18, 1e-21], ids=["1e18", "1e-21"])
@pytest.mark.parametrize("name", ["cross_entropy", "linear_cross_entropy"])
def test_mean_weight_gradient_at_extreme_weight_scales(name, scale):
    """d mean / d w ~ 1 / scale, as accurate in float32 as at scale 1: no divisor squared on the
    way (which flushed to 0 or overflowed: a wrong sign, or inf)."""
    hidden, kernel, labels, weight = _inputs(name, rows=64)
    scaled = jnp.asarray(weight * scale, jnp.float32)
    got = _weight_grad(LOSSES[name], hidden, kernel, labels, scaled)
    with x64_scope("float64"):
        args = (hidden.astype(np.float64), kernel.astype(np.float64), labels)
        rounded = jnp.asarray(np.asarray(scaled, np.float64))
        want = np.asarray(_weight_grad(LOSSES[name], *map(jnp.asarray, args), rounded))
        # in float32 the parts' own rounding is of the result's precision: judged against them
        unit = _parts_unit(LOSSES[name], *map(jnp.asarray, args), rounded)
    assert_close(got, want, dtype="float32", quantity="grad", context=f"{scale=}", unit=unit)
