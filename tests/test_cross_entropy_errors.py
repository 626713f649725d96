"""Every bad input gets a clear error naming the argument, the value got and the fix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from jaxce import loss

LOGITS = jnp.zeros((4, 3), jnp.float32)
LABELS = jnp.array([0, 1, 2, 0])
PROBS = jnp.full((4, 3), 1 / 3, jnp.float32)

STATIC_ERRORS = {
    # id: (logits, labels, options, exception, message pattern)
    "int-logits": (jnp.zeros((4, 3), jnp.int32), LABELS, {}, TypeError, "logits must have a floating dtype; got int32"),
    "scalar-logits": (jnp.float32(1.0), jnp.int32(0), {}, ValueError, "at least one dimension"),
    "ragged-list": (LOGITS, [[0], [1, 2]], {}, TypeError, "labels must be"),
    "not-an-array": (LOGITS, object(), {}, TypeError, "labels must be a jax.Array or numpy array; got object"),
    "bool-labels": (LOGITS, jnp.ones(4, bool), {}, TypeError, "labels must be integer class indices or floating probabilities; got dtype bool"),
    "index-shape": (LOGITS, jnp.zeros((4, 1), jnp.int32), {}, ValueError, r"must have the shape of logits without the class axis, \(4,\); got \(4, 1\)"),
    "probs-shape": (LOGITS, jnp.zeros((4, 2)), {}, ValueError, r"probabilities and must have the shape of logits, \(4, 3\); got \(4, 2\)"),
    "axis-range": (LOGITS, LABELS, {"axis": 2}, ValueError, r"axis=2 is out of range for logits of shape \(4, 3\)"),
    "axis-type": (LOGITS, LABELS, {"axis": 1.0}, TypeError, "axis must be a Python int; got 1.0"),
    "zero-classes": (jnp.zeros((4, 0)), LABELS, {}, ValueError, "0 classes"),
    "reduction": (LOGITS, LABELS, {"reduction": "avg"}, ValueError, "reduction must be one of 'none', 'mean', 'sum'; got 'avg'"),
    "smoothing-high": (LOGITS, LABELS, {"label_smoothing": 1.5}, ValueError, r"label_smoothing must be in \[0.0, 1.0\]; got 1.5"),
    "smoothing-negative": (LOGITS, LABELS, {"label_smoothing": -0.1}, ValueError, "label_smoothing must be in"),
    "smoothing-array": (LOGITS, LABELS, {"label_smoothing": jnp.float32(0.1)}, TypeError, "label_smoothing must be a Python float"),
    "smoothing-nan": (LOGITS, LABELS, {"label_smoothing": float("nan")}, ValueError, "label_smoothing must be in"),
    "z-loss-negative": (LOGITS, LABELS, {"z_loss": -1.0}, ValueError, "z_loss must be in"),
    "softcap-zero": (LOGITS, LABELS, {"softcap": 0.0}, ValueError, r"softcap must be in \(0.0, inf\); got 0.0\. .*None turns the cap off"),
    "softcap-negative": (LOGITS, LABELS, {"softcap": -2.0}, ValueError, "softcap must be in"),
    "weight-length": (LOGITS, LABELS, {"weight": jnp.ones(4)}, ValueError, r"weight must have shape \(num_classes,\) = \(3,\); got \(4,\)"),
    "weight-dtype": (LOGITS, LABELS, {"weight": jnp.ones(3, jnp.int32)}, TypeError, "weight must have a floating dtype; got int32"),
    "ignore-index-type": (LOGITS, LABELS, {"ignore_index": 1.0}, TypeError, "ignore_index must be a Python int; got 1.0"),
    "ignore-index-with-probs": (LOGITS, PROBS, {"ignore_index": 0}, ValueError, "ignore_index=0 applies to class indices only"),
    "where-dtype": (LOGITS, LABELS, {"where": jnp.ones(4)}, TypeError, "where must be a boolean mask of examples; got dtype float32"),
    "where-shape": (LOGITS, LABELS, {"where": jnp.ones(3, bool)}, ValueError, r"where must broadcast to the examples' shape \(4,\) .*; got \(3,\)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(STATIC_ERRORS), ids=list(STATIC_ERRORS))
def test_static_errors_name_argument_value_and_fix(case):
    logits, labels, options, exception, pattern = STATIC_ERRORS[case]
    with pytest.raises(exception, match=pattern):
        loss.cross_entropy(logits, labels, **options)


@pytest.mark.parametrize("case", ["reduction", "smoothing-high", "ignore-index-type"])
def test_static_errors_are_raised_at_trace_time_under_jit(case):
    logits, labels, options, exception, pattern = STATIC_ERRORS[case]
    with pytest.raises(exception, match=pattern):
        jax.jit(lambda x, y: loss.cross_entropy(x, y, **options))(logits, labels)


@pytest.mark.parametrize(
    ("options", "exception", "pattern"),
    [
        pytest.param({"reduction": "avg"}, ValueError, "reduction must be one of", id="reduction"),
        pytest.param({"label_smoothing": 2.0}, ValueError, "label_smoothing", id="smoothing"),
        pytest.param({"weight": jnp.ones((2, 2))}, ValueError, "weight must have", id="weight"),
    ],
)
def test_module_checks_options_at_construction(options, exception, pattern):
    with pytest.raises(exception, match=pattern):
        loss.CrossEntropyLoss(**options)


@pytest.mark.parametrize(
    ("labels", "bad"),
    [
        pytest.param([0, 3, 1, 0], r"got 3 at position \(1,\)", id="too-large"),
        pytest.param([0, -1, 1, 0], r"got -1 at position \(1,\)", id="negative"),
        pytest.param([0, -100, 1, 7], r"got 7 at position \(3,\)", id="past-an-ignored-one"),
    ],
)
def test_out_of_range_labels_raise_in_eager_calls(labels, bad):
    with pytest.raises(
        ValueError, match=r"labels must be class indices in \[0, 3\) or ignore_index=-100; " + bad
    ):
        loss.cross_entropy(LOGITS, jnp.array(labels))


def test_out_of_range_labels_are_caught_under_jit_with_checkify():
    f = jax.jit(lambda x, y: loss.cross_entropy(x, y, check_labels=True))
    checked = checkify.checkify(f, errors=checkify.user_checks)
    error, _ = checked(LOGITS, jnp.array([0, 1, 5, 0]))
    with pytest.raises(checkify.JaxRuntimeError, match=r"in \[0, 3\) or ignore_index=-100; got 5"):
        error.throw()
    error, value = checked(LOGITS, LABELS)
    assert error.get() is None and np.isfinite(value)


def test_out_of_range_labels_under_jit_without_the_check_give_nan_not_a_wrong_number():
    labels = jnp.array([0, 1, 5, 0])
    per_example = jax.jit(lambda x, y: loss.cross_entropy(x, y, reduction="none"))(LOGITS, labels)
    assert np.isnan(per_example[2]) and np.isfinite(np.delete(np.asarray(per_example), 2)).all()
    grad = jax.jit(jax.grad(lambda x, y: loss.cross_entropy(x, y)))(LOGITS, labels)
    assert np.isnan(grad[2]).all() and np.isfinite(np.delete(np.asarray(grad), 2, axis=0)).all()


def test_check_labels_without_checkify_under_jit_is_the_documented_nan():
    """Without checkify no check can stop a jitted program: it runs, a bad label gives NaN."""
    f = jax.jit(lambda x, y: loss.cross_entropy(x, y, check_labels=True, reduction="none"))
    assert np.isfinite(f(LOGITS, LABELS)).all()
    per_example = f(LOGITS, jnp.array([0, 1, 5, 0]))
    assert np.isnan(per_example[2]) and np.isfinite(np.delete(np.asarray(per_example), 2)).all()
