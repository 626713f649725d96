# ruff: noqa: E501  (one row per case reads best as one line: the call, the error, the words)
"""Bad input to the fused linear losses, mean_divisor and the NNX module: what the user sees.

As ``tests/test_bad_input_loss.py``: each case is a call and either the exception it raises
(type, and the words its message must hold: the argument, the value got, the fix) or the
documented value it returns. Everything is tiny.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxce import loss
from jaxce.nnx import LinearCrossEntropyLoss
from tests.bad_input import assert_documented, assert_raises_with_words

NAN, INF = float("nan"), float("inf")


def H():  # (4, 3) hidden
    return jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)


def K(*out):  # (3, 5, *out) kernel
    return jnp.asarray(np.random.default_rng(2).normal(size=(3, 5, *out)), jnp.float32)


def Y():
    return jnp.array([0, 1, 2, 4])


def PR():  # probabilities for H() @ K()
    return jnp.full((4, 5), 0.2, jnp.float32)


def lce(hidden=None, kernel=None, labels=None, **kw):
    h, k = H() if hidden is None else hidden, K() if kernel is None else kernel
    return loss.linear_cross_entropy(h, k, Y() if labels is None else labels, **kw)


def tlce(input=None, linear_weight=None, target=None, **kw):
    x = H() if input is None else input
    w = jnp.moveaxis(K(), 0, -1) if linear_weight is None else linear_weight
    return loss.torch_linear_cross_entropy(x, w, Y() if target is None else target, **kw)


def head(**kw):
    return LinearCrossEntropyLoss(3, 5, rngs=nnx.Rngs(0), **kw)


# id -> (call, exception, words the message must contain)
ERRORS = {
    # --- linear_cross_entropy: probabilities and the K-dimensional loss
    "lce-probs-shape": (lambda: lce(labels=jnp.full((4, 6), 0.2)), ValueError, ["labels", "(4, 5)", "(4, 6)", "class indices"]),
    "lce-probs-ignore-index": (lambda: lce(labels=PR(), ignore_index=0), ValueError, ["ignore_index=0", "probabilities", "where="]),
    "lce-probs-num-classes-shape": (lambda: lce(labels=jnp.full((4, 4), 0.25), num_classes=4), ValueError, ["labels", "(4, 5)", "(4, 4)"]),
    "lce-kdim-labels-shape": (lambda: lce(kernel=K(2), labels=Y()), ValueError, ["labels", "(4, 2)", "(4,)", "out_features"]),
    "lce-kdim-probs-shape": (lambda: lce(kernel=K(2), labels=PR()), ValueError, ["labels", "(4, 5, 2)", "(4, 5)"]),
    "lce-kdim-bias-shape": (lambda: lce(kernel=K(2), labels=jnp.zeros((4, 2), jnp.int32), bias=jnp.ones(5)), ValueError, ["bias", "(5, 2)", "(5,)"]),
    "lce-kdim-kernel-features": (lambda: lce(kernel=jnp.ones((4, 5, 2))), ValueError, ["kernel", "(3, num_classes, ...)", "(4, 5, 2)"]),
    "lce-kernel-1d": (lambda: lce(kernel=jnp.ones(3)), ValueError, ["kernel", "(3,)", "transpose"]),
    "lce-labels-complex": (lambda: lce(labels=jnp.ones(4, jnp.complex64)), TypeError, ["labels", "complex64"]),
    # --- sample_weight
    "lce-sample-weight-int": (lambda: lce(sample_weight=jnp.ones(4, jnp.int32)), TypeError, ["sample_weight", "int32", "astype"]),
    "lce-sample-weight-bool": (lambda: lce(sample_weight=jnp.ones(4, bool)), TypeError, ["sample_weight", "bool"]),
    "lce-sample-weight-shape": (lambda: lce(sample_weight=jnp.ones(3)), ValueError, ["sample_weight", "(4,)", "(3,)"]),
    "lce-sample-weight-kdim-shape": (lambda: lce(kernel=K(2), labels=jnp.zeros((4, 2), jnp.int32), sample_weight=jnp.ones((4, 3))), ValueError, ["sample_weight", "(4, 2)", "(4, 3)"]),
    "lce-sample-weight-nan": (lambda: lce(sample_weight=jnp.array([1.0, NAN, 1.0, 1.0])), ValueError, ["sample_weight must be finite", "nan", "(1,)"]),
    "lce-sample-weight-inf": (lambda: lce(sample_weight=jnp.array([1.0, 1.0, 1.0, INF])), ValueError, ["sample_weight", "inf", "(3,)"]),
    "lce-sample-weight-str": (lambda: lce(sample_weight="1"), TypeError, ["sample_weight", "str"]),
    # --- divisor
    "lce-divisor-sum": (lambda: lce(divisor=4.0, reduction="sum"), ValueError, ["divisor", "reduction='sum'", "'mean'"]),
    "lce-divisor-none": (lambda: lce(divisor=4.0, reduction="none"), ValueError, ["divisor", "reduction='none'"]),
    "lce-divisor-vector": (lambda: lce(divisor=jnp.ones(2)), ValueError, ["divisor", "scalar", "(2,)", "mean_divisor"]),
    "lce-divisor-zero": (lambda: lce(divisor=0.0), ValueError, ["divisor", "> 0", "0.0"]),
    "lce-divisor-negative": (lambda: lce(divisor=-3), ValueError, ["divisor", "-3.0"]),
    "lce-divisor-nan": (lambda: lce(divisor=NAN), ValueError, ["divisor", "nan"]),
    "lce-divisor-bool": (lambda: lce(divisor=True), TypeError, ["divisor", "bool"]),
    "lce-divisor-complex": (lambda: lce(divisor=jnp.complex64(1)), TypeError, ["divisor", "complex64"]),
    "lce-divisor-str": (lambda: lce(divisor="4"), TypeError, ["divisor", "str"]),
    # --- chunk sizes
    "lce-row-chunk-zero": (lambda: lce(row_chunk_size=0), ValueError, ["row_chunk_size", "got 0", "rows per chunk"]),
    "lce-row-chunk-float": (lambda: lce(row_chunk_size=2.5), TypeError, ["row_chunk_size", "2.5"]),
    "lce-row-chunk-bool": (lambda: lce(row_chunk_size=True), TypeError, ["row_chunk_size", "True"]),
    "lce-chunk-zero": (lambda: lce(chunk_size=0), ValueError, ["chunk_size", "got 0", "classes per matmul"]),
    # --- torch_linear_cross_entropy: torch's argument names and rules
    "tlce-input-int": (lambda: tlce(input=jnp.ones((4, 3), jnp.int32)), TypeError, ["input", "int32"]),
    "tlce-weight-features": (lambda: tlce(linear_weight=jnp.ones((5, 4))), ValueError, ["linear_weight", "(C, *out_features, D)", "(5, 4)", "last axis is D"]),
    "tlce-weight-1d": (lambda: tlce(linear_weight=jnp.ones(3)), ValueError, ["linear_weight", "(3,)"]),
    "tlce-bias-shape": (lambda: tlce(linear_bias=jnp.ones(4)), ValueError, ["linear_bias", "(5,)", "(4,)"]),
    "tlce-target-shape": (lambda: tlce(target=jnp.array([0, 1])), ValueError, ["target", "(4,)", "(2,)"]),
    "tlce-target-bool": (lambda: tlce(target=jnp.ones(4, bool)), TypeError, ["target", "bool"]),
    "tlce-kdim-unbatched": (lambda: tlce(input=jnp.ones(3), linear_weight=jnp.ones((5, 2, 3)), target=jnp.zeros(2, jnp.int32)), ValueError, ["K-dimensional", "batched", "(3,)", "input[None]"]),
    "tlce-probs-ignore-index-default-value": (lambda: tlce(target=PR(), ignore_index=-100), ValueError, ["ignore_index=-100", "probabilities", "as in torch", "None"]),
    "tlce-target-out-of-range": (lambda: tlce(target=jnp.array([0, 1, 2, 7])), ValueError, ["target must be class indices in [0, 5)", "got 7"]),
    "lce-sample-weight-0d-inf": (lambda: lce(sample_weight=jnp.float32(INF)), ValueError, ["sample_weight must be finite", "inf"]),
    "lce-sample-weight-float64-beyond-float32": (lambda: lce(sample_weight=np.full(4, 1e300)), ValueError, ["sample_weight must fit float32", "got 1e+300", "(0,)"]),
    "tlce-weight-shape": (lambda: tlce(weight=jnp.ones(4)), ValueError, ["weight", "(5,)", "(4,)"]),
    # --- mean_divisor
    "md-labels-bool": (lambda: loss.mean_divisor(jnp.ones(4, bool)), TypeError, ["labels", "bool"]),
    "md-weight-2d": (lambda: loss.mean_divisor(Y(), weight=jnp.ones((5, 1))), ValueError, ["weight", "(C,)", "(5, 1)"]),
    "md-label-out-of-range": (lambda: loss.mean_divisor(jnp.array([0, 7]), weight=jnp.ones(5)), ValueError, ["labels", "[0, 5)", "got 7"]),
    "md-probs-axis": (lambda: loss.mean_divisor(PR(), axis=2), ValueError, ["axis=2", "(4, 5)"]),
    # said "use an axis in [0, 0)"
    "md-probs-scalar": (lambda: loss.mean_divisor(jnp.float32(1.0)), ValueError, ["class axis", "scalar"]),
    "md-where-shape": (lambda: loss.mean_divisor(Y(), where=jnp.ones(3, bool)), ValueError, ["where", "(3,)"]),
    "md-sample-weight-shape": (lambda: loss.mean_divisor(Y(), sample_weight=jnp.ones(5)), ValueError, ["sample_weight", "(4,)", "(5,)"]),
    # --- the NNX module
    "nnx-in-features-negative": (lambda: LinearCrossEntropyLoss(-1, 5, rngs=nnx.Rngs(0)), ValueError, ["in_features", ">= 0", "-1"]),
    "nnx-num-classes-float": (lambda: LinearCrossEntropyLoss(3, 5.0, rngs=nnx.Rngs(0)), TypeError, ["num_classes", "5.0"]),
    "nnx-out-features-int": (lambda: head(out_features=3), TypeError, ["out_features", "tuple", "3"]),
    "nnx-out-features-zero": (lambda: head(out_features=(2, 0)), ValueError, ["out_features", ">= 1", "0"]),
    "nnx-reduction": (lambda: head(reduction="avg"), ValueError, ["reduction", "'avg'"]),
    "nnx-smoothing": (lambda: head(label_smoothing=2.0), ValueError, ["label_smoothing", "2.0"]),
    "nnx-weight-shape": (lambda: head(weight=jnp.ones(4)), ValueError, ["weight", "(5,)", "(4,)"]),
    "nnx-bias-str": (lambda: head(bias="yes"), TypeError, ["bias", "'yes'"]),
    "nnx-probs-with-ignore-index": (lambda: head(ignore_index=0)(H(), PR()), ValueError, ["ignore_index=0", "probabilities"]),
    "nnx-input-features": (lambda: head()(jnp.ones((4, 2)), Y()), ValueError, ["input", "in_features", "(..., 3)", "(4, 2)"]),
    "nnx-input-int": (lambda: head()(jnp.ones((4, 3), jnp.int32), Y()), TypeError, ["input", "int32"]),
    "nnx-chunk-zero": (lambda: head(chunk_size=0), ValueError, ["chunk_size", "got 0"]),
    "nnx-row-chunk-str": (lambda: head(row_chunk_size="8"), TypeError, ["row_chunk_size", "'8'"]),
    "nnx-dtype-int": (lambda: head(dtype=jnp.int32), TypeError, ["dtype", "floating", "int32"]),
    "nnx-dtype-unknown": (lambda: head(dtype="foo"), TypeError, ["dtype", "'foo'"]),
    "nnx-param-dtype-float8": (lambda: head(param_dtype=jnp.float8_e4m3fn), TypeError, ["param_dtype", "16 or more bits"]),
    "nnx-rngs-none": (lambda: LinearCrossEntropyLoss(3, 5, rngs=None), TypeError, ["rngs", "NoneType", "nnx.Rngs(0)"]),
    "nnx-kernel-init-int": (lambda: head(kernel_init=5), TypeError, ["kernel_init", "got 5", "init(key, shape, dtype)"]),
    "nnx-kernel-init-falsy": (lambda: head(kernel_init=0), TypeError, ["kernel_init", "got 0"]),
    "nnx-bias-init-two-args": (lambda: head(bias=True, bias_init=lambda k, s: 1.0), TypeError, ["bias_init", "(key, shape, dtype)", "too many"]),
    "nnx-load-not-a-mapping": (lambda: head().load_torch_state_dict([("linear.weight", 1)]), TypeError, ["state_dict", "list", "state_dict()"]),
    "nnx-load-weight-nan": (lambda: head(weight=jnp.ones(5)).load_torch_state_dict({"linear.weight": np.zeros((5, 3), np.float32), "weight": np.full(5, NAN, np.float32)}), ValueError, ["'weight'", "finite", "nan"]),
    "nnx-load-complex": (lambda: head().load_torch_state_dict({"linear.weight": np.zeros((5, 3), np.complex64)}), TypeError, ["'linear.weight'", "floating", "complex64"]),
    "nnx-load-beyond-float32": (lambda: head().load_torch_state_dict({"linear.weight": np.full((5, 3), 1e300)}), ValueError, ["'linear.weight'", "1e+300", "float32", "param_dtype"]),
    "nnx-load-str": (lambda: head().load_torch_state_dict({"linear.weight": "abc"}), TypeError, ["'linear.weight'", "floating", "str"]),
    "nnx-load-torch-meta": (lambda: head().load_torch_state_dict({"linear.weight": _torch().empty(5, 3, device="meta")}), ValueError, ["'linear.weight'", "meta device"]),
    "nnx-load-torch-sparse": (lambda: head().load_torch_state_dict({"linear.weight": _torch().zeros(5, 3).to_sparse()}), ValueError, ["'linear.weight'", "sparse", "to_dense()"]),
    "nnx-load-torch-float8": (lambda: head().load_torch_state_dict({"linear.weight": _torch().zeros(5, 3).to(_torch().float8_e4m3fn)}), TypeError, ["'linear.weight'", "float8_e4m3fn", "value.float()"]),
    # --- float options and dtypes the computation cannot hold
    "lce-kernel-float8": (lambda: lce(kernel=K().astype(jnp.float8_e4m3fn)), TypeError, ["kernel", "float8_e4m3fn", "bfloat16"]),
    "lce-probs-float8": (lambda: lce(labels=PR().astype(jnp.float8_e5m2)), TypeError, ["labels", "float8_e5m2"]),
    "lce-softcap-beyond-float32": (lambda: lce(softcap=1e39), ValueError, ["softcap=1e+39", "float32", "3.4e+38"]),
    "lce-softcap-below-float32-normal": (lambda: lce(softcap=1e-40), ValueError, ["softcap=1e-40", "1.18e-38"]),
    "lce-sample-weight-subnormal": (lambda: lce(sample_weight=jnp.array([1.0, 1e-40, 1.0, 1.0])), ValueError, ["sample_weight", "1.18e-38", "position 1", "flushes to 0"]),
    "lce-divisor-subnormal": (lambda: lce(divisor=1e-40), ValueError, ["divisor must be at least 1.18e-38", "1e-40"]),
    "lce-divisor-float8": (lambda: lce(divisor=jnp.float8_e4m3fn(2)), TypeError, ["divisor", "float8_e4m3fn"]),
    # --- mean_divisor: the losses' rules
    "md-probs-ignore-index": (lambda: loss.mean_divisor(PR(), ignore_index=1), ValueError, ["ignore_index=1", "probabilities", "where="]),
    "md-probs-weight-shape": (lambda: loss.mean_divisor(PR(), weight=jnp.array([NAN])), ValueError, ["weight", "(5,)", "(1,)"]),
    "md-axis-float": (lambda: loss.mean_divisor(Y(), axis=1.5), TypeError, ["axis", "1.5"]),
    "md-int64-label-beyond-int32": (lambda: loss.mean_divisor(np.array([0, 2**32 - 100])), ValueError, ["labels", "int32", "4294967196"]),
    "md-negative-label": (lambda: loss.mean_divisor(jnp.array([0, -7])), ValueError, ["labels", "got -7"]),
    "md-weight-float8": (lambda: loss.mean_divisor(Y(), weight=jnp.ones(5, jnp.float8_e5m2)), TypeError, ["weight", "float8_e5m2"]),
}  # fmt: skip


def _torch():
    import torch  # only these rows need it

    return torch


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_bad_input_raises_naming_argument_value_and_fix(case):
    assert_raises_with_words(*ERRORS[case])


def _sum(**kw):
    return lce(reduction="sum", **kw)


# id -> (call, check of the returned value): inputs with a documented meaning, not errors.
DOCUMENTED = {
    "lce-sample-weight-ones-is-plain": (lambda: (lce(sample_weight=jnp.ones(4)), lce()), "equal"),
    "lce-sample-weight-broadcasts": (lambda: (lce(sample_weight=jnp.float32(2.0), reduction="sum"), 2 * _sum()), "equal"),
    "lce-sample-weight-mean-is-weighted-mean": (lambda: (lce(sample_weight=jnp.array([1.0, 0.0, 0.0, 0.0])), lce(where=jnp.array([True, False, False, False]))), "equal"),
    "lce-sample-weight-zero-everywhere-mean-nan": (lambda: lce(sample_weight=jnp.zeros(4)), "nan"),
    "lce-divisor-int": (lambda: (lce(divisor=2), _sum() / 2), "equal"),
    "lce-divisor-numpy-scalar": (lambda: (lce(divisor=np.float64(2.0)), _sum() / 2), "equal"),
    "lce-jit-traced-zero-divisor-nan": (lambda: jax.jit(lambda d: lce(divisor=d))(jnp.float32(0.0)), "nan"),  # a mean over no weight (was inf)
    "lce-probs-padded-entries-ignored": (lambda: (lce(labels=PR().at[:, 4].set(7.0), num_classes=4, kernel=K()), lce(labels=PR().at[:, 4].set(0.0), num_classes=4)), "equal"),
    "lce-kdim-probs-zero-classes-mean-nan": (lambda: lce(kernel=jnp.ones((3, 0, 2)), labels=jnp.zeros((4, 0, 2))), "nan"),
    "lce-empty-batch-sum-zero": (lambda: (lce(hidden=jnp.zeros((0, 3)), labels=jnp.zeros(0, jnp.int32), reduction="sum"), jnp.float32(0)), "equal"),
    "md-probabilities-count": (lambda: (loss.mean_divisor(PR(), where=jnp.array([True, True, False, True])), jnp.float32(3)), "equal"),
    "md-ignore-2**40-matches-nothing": (lambda: (loss.mean_divisor(Y(), ignore_index=2**40), jnp.float32(4)), "equal"),
    "md-int64-ignore-2**40-exact": (lambda: (loss.mean_divisor(np.array([0, 2**40]), ignore_index=2**40), jnp.float32(1)), "equal"),
    "md-jit-label-out-of-range-nan": (lambda: jax.jit(lambda y: loss.mean_divisor(y, weight=jnp.ones(5)))(jnp.array([0, 7])), "nan"),
    "md-jit-negative-label-nan": (lambda: jax.jit(loss.mean_divisor)(jnp.array([0, -7])), "nan"),
    "lce-divisor-int-beyond-int32": (lambda: (lce(divisor=2**32 + 2), _sum() / float(2**32 + 2)), "equal"),
    "lce-divisor-numpy-int64": (lambda: (lce(divisor=np.int64(2**40)), _sum() / float(2**40)), "equal"),
    "tlce-ignore-none-is-minus-100": (lambda: (tlce(target=jnp.array([0, -100, 2, 4])), lce(labels=jnp.array([0, -100, 2, 4]))), "equal"),
    "tlce-unbatched-probs": (lambda: (tlce(input=H()[0], target=PR()[0]), tlce(input=H()[:1], target=PR()[:1])), "equal"),
    "nnx-ignore-none-indices": (lambda: (head()(H(), jnp.array([0, -100, 2, 4])), head()(H(), jnp.array([0, 2, 4]).take(jnp.array([0, 0, 1, 2])), where=jnp.array([True, False, True, True]))), "equal"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DOCUMENTED), ids=list(DOCUMENTED))
def test_documented_behaviour(case):
    assert_documented(*DOCUMENTED[case], context=case)
