"""Property-based differential test: random shapes, options and values against torch."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxce import loss
from parity._compare import grad_unit
from parity._torch_side import torch_cross_entropy
from tests.conftest import x64_scope
from tests.tolerances import assert_close
from tests.vjp import value_and_vjp


@st.composite
def problems(draw):
    """One call: torch-layout logits and labels, options, the JAX class axis to test."""
    dtype = draw(st.sampled_from(["float32", "float64"]))
    num_classes = draw(st.integers(1, 6))
    batch = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    shape = (num_classes,) if not batch else (batch[0], num_classes, *batch[1:])
    class_dim = 0 if not batch else 1
    batch_shape = shape[:class_dim] + shape[class_dim + 1 :]
    finite = st.floats(-30, 30, allow_nan=False, width=32)
    logits = draw(hnp.arrays(np.float64, shape, elements=finite))
    soft = draw(st.booleans())
    options = {
        "reduction": draw(st.sampled_from(["none", "mean", "sum"])),
        "label_smoothing": draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
    }
    if soft:
        raw = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1, width=32)))
        labels = raw / np.maximum(raw.sum(axis=class_dim, keepdims=True), 1e-3)
    else:
        labels = draw(hnp.arrays(np.int64, batch_shape, elements=st.integers(0, num_classes - 1)))
        if draw(st.booleans()):
            options["ignore_index"] = draw(st.integers(0, num_classes - 1))
    weight = None
    if draw(st.booleans()):
        weight = draw(
            hnp.arrays(np.float64, (num_classes,), elements=st.floats(0.125, 3, width=32))
        )
    axis = class_dim if not batch else draw(st.sampled_from([class_dim, -1]))
    return dtype, logits, labels, weight, options, class_dim, axis


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(problems())
def test_random_problems_match_torch(problem):
    dtype, logits, labels, weight, options, class_dim, axis = problem
    soft = np.issubdtype(labels.dtype, np.floating)
    batch_shape = labels.shape if not soft else labels.shape[:class_dim] + labels.shape[2:]
    cotangent = np.linspace(-1, 1, int(np.prod(batch_shape))).reshape(batch_shape)
    if options["reduction"] != "none":
        cotangent = None
    expected = torch_cross_entropy(
        logits, labels, dtype=dtype, cotangent=cotangent, weight=weight,
        **options,
    )  # fmt: skip
    with x64_scope(dtype):
        x = jnp.moveaxis(jnp.asarray(logits, dtype), class_dim, axis)
        t = jnp.moveaxis(jnp.asarray(labels, dtype), class_dim, axis) if soft else labels
        w = None if weight is None else jnp.asarray(weight, dtype)
        out, grads = value_and_vjp(
            lambda a: loss.cross_entropy(a["x"], a["t"], axis=axis, weight=a["w"], **options),
            {"x": x},
            {"t": t, "w": w},
            1.0 if cotangent is None else cotangent,
        )
        grad = grads["x"]
    assert_close(out, expected.value, dtype=dtype, quantity="loss")
    grad = np.moveaxis(np.asarray(grad), axis, class_dim)
    unit = grad_unit(  # gradients that cancel to rounding noise are judged against their unit
        labels,
        class_axis=class_dim,
        weight=weight,
        cotangent=1.0 if cotangent is None else cotangent,
        reduction=options["reduction"],
        ignore_index=options.get("ignore_index", -100),
    )
    assert_close(grad, expected.grad_logits, dtype=dtype, quantity="grad", unit=unit)
