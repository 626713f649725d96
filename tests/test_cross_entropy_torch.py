"""Differential tests: jaxce.loss against torch.nn.functional.cross_entropy, values and gradients.

The grid covers every layout torch accepts ((C), (N, C), (N, C, d1..dk)) and JAX's class-last
layout, float32 and float64, each reduction, class weights, ignore_index (the default -100 and a
valid class index), label smoothing, and class-index and probability targets.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxce import loss
from tests.conftest import seeded_rng, x64_scope
from tests.tolerances import assert_close
from tests.torch_side import torch_cross_entropy

# name: (shape in torch's layout, torch's class dim, JAX axis the test passes to jaxce)
LAYOUTS = {
    "C": ((5,), 0, 0),
    "NC": ((6, 5), 1, 1),
    "NCd": ((3, 5, 4), 1, 1),
    "NCdd": ((2, 5, 3, 2), 1, 1),
    "NdC-class-last": ((3, 5, 4), 1, -1),
}
IGNORE = {"no-ignore": None, "ignore-default": -100, "ignore-class-1": 1}


def _cases():
    for layout, dtype, reduction, target, weighted, smoothing in itertools.product(
        LAYOUTS,
        ("float32", "float64"),
        ("mean", "sum", "none"),
        ("index", "probs"),
        (False, True),
        (0.0, 0.25),
    ):
        for ignore in IGNORE if target == "index" else ("no-ignore",):
            case_id = (
                f"{layout}-{dtype}-{reduction}-{target}-{'weight' if weighted else 'noweight'}"
                f"-ls{smoothing}-{ignore}"
            )
            yield pytest.param(
                layout, dtype, reduction, target, weighted, smoothing, ignore, id=case_id
            )


def make_case(layout, target, weighted, ignore, key):
    """Draws seeded logits (torch layout), labels, weight and the ignore_index to use."""
    shape, class_dim, _ = LAYOUTS[layout]
    rng = seeded_rng(key)
    num_classes = shape[class_dim]
    batch_shape = shape[:class_dim] + shape[class_dim + 1 :]
    logits = rng.normal(scale=3.0, size=shape)
    if target == "index":
        labels = rng.integers(0, num_classes, size=batch_shape)
        if IGNORE[ignore] == -100 and labels.size > 1:
            labels.flat[:: max(labels.size // 3, 1)] = -100
        elif IGNORE[ignore] == 1:
            labels.flat[0] = 1  # at least one ignored example
        labels = np.asarray(labels, np.int64)
    else:
        probs = rng.dirichlet(np.ones(num_classes), size=batch_shape)
        labels = np.moveaxis(probs, -1, class_dim)
    weight = rng.uniform(0.2, 2.0, size=num_classes) if weighted else None
    ignore_index = -100 if IGNORE[ignore] is None else IGNORE[ignore]
    return logits, labels, weight, ignore_index


def jaxce_values_and_grads(logits, labels, *, dtype, layout, cotangent, weight, **options):
    """Runs jaxce in the test's layout; returns torch-layout float64 results like torch_side."""
    _, class_dim, axis = LAYOUTS[layout]
    soft = np.issubdtype(labels.dtype, np.floating)
    x = jnp.asarray(logits, dtype)
    t = jnp.asarray(labels, dtype) if soft else jnp.asarray(labels, jnp.int32)
    if axis != class_dim:
        x, t = jnp.moveaxis(x, class_dim, axis), (jnp.moveaxis(t, class_dim, axis) if soft else t)
    w = None if weight is None else jnp.asarray(weight, dtype)

    def f(x, t):
        return loss.cross_entropy(x, t, axis=axis, weight=w, **options)

    if soft:
        out, vjp = jax.vjp(f, x, t)
    else:
        out, vjp = jax.vjp(lambda x: f(x, t), x)
    ct = jnp.ones_like(out) if cotangent is None else jnp.asarray(cotangent, out.dtype)
    grads = vjp(ct)
    back = lambda a: np.moveaxis(np.asarray(a, np.float64), axis, class_dim)
    result = {"loss": np.asarray(out, np.float64), "grad": back(grads[0])}
    if soft:
        result["grad_labels"] = back(grads[1])
    return result


@pytest.mark.parametrize(
    ("layout", "dtype", "reduction", "target", "weighted", "smoothing", "ignore"), list(_cases())
)
def test_matches_torch(layout, dtype, reduction, target, weighted, smoothing, ignore):
    logits, labels, weight, ignore_index = make_case(layout, target, weighted, ignore, layout)
    shape, class_dim, _ = LAYOUTS[layout]
    batch_shape = shape[:class_dim] + shape[class_dim + 1 :]
    cotangent = None
    if reduction == "none":
        cotangent = seeded_rng(layout, "cotangent").normal(size=batch_shape)
    options = dict(reduction=reduction, label_smoothing=smoothing)
    if target == "index":
        options["ignore_index"] = ignore_index
    expected = torch_cross_entropy(
        logits,
        labels,
        dtype=dtype,
        class_dim=class_dim,
        cotangent=cotangent,
        weight=weight,
        **options,
    )
    with x64_scope(dtype):
        actual = jaxce_values_and_grads(
            logits,
            labels,
            dtype=dtype,
            layout=layout,
            cotangent=cotangent,
            weight=weight,
            **options,
        )
    assert set(actual) == set(expected)
    for quantity, value in expected.items():
        kind = "loss" if quantity == "loss" else "grad"
        assert_close(actual[quantity], value, dtype=dtype, quantity=kind, context=quantity)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_module_matches_torch_module(dtype, reduction):
    """CrossEntropyLoss takes torch's layout and options and returns torch's module output."""
    import torch

    logits, labels, weight, _ = make_case("NCd", "index", True, "ignore-class-1", "module")
    expected = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weight), ignore_index=1, reduction=reduction, label_smoothing=0.1
    )(torch.tensor(logits), torch.tensor(labels))
    with x64_scope(dtype):
        criterion = loss.CrossEntropyLoss(
            weight=jnp.asarray(weight, dtype),
            ignore_index=1,
            reduction=reduction,
            label_smoothing=0.1,
        )
        actual = criterion(jnp.asarray(logits, dtype), jnp.asarray(labels))
        assert actual.dtype == jnp.dtype(dtype)
    assert_close(actual, expected.numpy(), dtype=dtype, quantity="loss")


def test_top_level_exports_are_the_loss_functions():
    import jaxce

    assert jaxce.cross_entropy is loss.cross_entropy
    assert jaxce.CrossEntropyLoss is loss.CrossEntropyLoss
    assert set(jaxce.__all__) >= {"cross_entropy", "CrossEntropyLoss", "loss"}
