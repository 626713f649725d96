# ruff: noqa: E501  (one row per case reads best as one line: the call, the error, the words)
"""A corpus of bad input to the four public losses: each case asserts what the user sees.

Every case is a call and either the exception it raises (type, and the words its message must
hold: the argument, the value got, the fix) or the documented value it returns. The sharded
loss runs inside ``jax.shard_map`` on a one-device mesh, in process; everything is tiny, so the
whole corpus runs in seconds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxce import loss
from tests.bad_input import assert_documented, assert_raises_with_words

NAN, INF = float("nan"), float("inf")


def L():  # (4, 3) logits
    return jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)


def Y():  # class indices for L()
    return jnp.array([0, 1, 2, 0])


def PR():  # probabilities for L()
    return jnp.full((4, 3), 1 / 3, jnp.float32)


def ce(logits=None, labels=None, **kw):
    return loss.cross_entropy(
        L() if logits is None else logits, Y() if labels is None else labels, **kw
    )


def H():  # (4, 3) hidden
    return jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)


def K():  # (3, 5) kernel
    return jnp.asarray(np.random.default_rng(2).normal(size=(3, 5)), jnp.float32)


def lce(hidden=None, kernel=None, labels=None, **kw):
    h, k = H() if hidden is None else hidden, K() if kernel is None else kernel
    return loss.linear_cross_entropy(h, k, Y() if labels is None else labels, **kw)


def sce(logits=None, labels=None, *, in_specs=None, **kw):
    """sharded_cross_entropy inside shard_map over a one-device mesh with axis "model"."""
    kw.setdefault("mesh_axis", "model")
    mesh = jax.make_mesh((1,), ("model",), (AxisType.Auto,))
    x, y = L() if logits is None else logits, Y() if labels is None else labels
    specs = in_specs or (P(None, "model"), P())
    fn = jax.shard_map(
        lambda x, y: loss.sharded_cross_entropy(x, y, **kw),
        mesh=mesh, in_specs=specs, out_specs=P(),
    )  # fmt: skip
    return jax.jit(fn)(x, y)


def _sce_jvp():
    mesh = jax.make_mesh((1,), ("model",), (AxisType.Auto,))
    fn = jax.shard_map(
        lambda x: loss.sharded_cross_entropy(x, Y(), mesh_axis="model"),
        mesh=mesh, in_specs=(P(None, "model"),), out_specs=P(),
    )  # fmt: skip
    return jax.jvp(fn, (L(),), (L(),))


def _x64(call):
    """``call()`` with float64 enabled (float32 logits: the loss still computes in float32)."""
    with jax.enable_x64(True):
        return call()


def module(*args, **kw):
    return loss.CrossEntropyLoss(*args, **kw)


# id -> (call, exception, words the message must contain)
ERRORS = {
    # --- cross_entropy: arrays that are not arrays of numbers
    "ce-logits-None": (lambda: loss.cross_entropy(None, Y()), TypeError, ["logits", "NoneType", "jnp.asarray"]),
    "ce-logits-str": (lambda: ce(logits="abc"), TypeError, ["logits", "str"]),
    "ce-logits-dict": (lambda: ce(logits={"a": 1}), TypeError, ["logits", "dict"]),
    "ce-logits-object-array": (lambda: ce(logits=np.array([object(), object()])), TypeError, ["logits", "object"]),
    "ce-logits-str-array": (lambda: ce(logits=np.array(["a", "b", "c"])), TypeError, ["logits", "<U1"]),
    "ce-logits-datetime": (lambda: ce(logits=np.zeros((4, 3), "datetime64[D]")), TypeError, ["logits", "datetime64[D]"]),
    "ce-logits-structured": (lambda: ce(logits=np.zeros((4, 3), [("a", "f4")])), TypeError, ["logits", "('a', '<f4')"]),
    "ce-logits-ragged-list": (lambda: ce(logits=[[1.0, 2.0], [3.0]]), TypeError, ["logits", "list", "rectangular"]),
    "ce-logits-bool": (lambda: ce(logits=jnp.ones((4, 3), bool)), TypeError, ["logits", "floating", "bool"]),
    "ce-logits-complex": (lambda: ce(logits=jnp.ones((4, 3), jnp.complex64)), TypeError, ["logits", "floating", "complex64"]),
    "ce-logits-int": (lambda: ce(logits=jnp.ones((4, 3), jnp.int32)), TypeError, ["logits", "int32", "astype"]),
    "ce-logits-0d": (lambda: ce(logits=jnp.float32(1.0), labels=jnp.int32(0)), ValueError, ["logits", "scalar"]),
    "ce-logits-torch-tensor": (lambda: ce(logits=_torch_zeros()), TypeError, ["logits", "Tensor", "jnp.asarray"]),
    # --- cross_entropy: labels
    "ce-labels-None": (lambda: loss.cross_entropy(L(), None), TypeError, ["labels", "NoneType"]),
    "ce-labels-str": (lambda: ce(labels="0123"), TypeError, ["labels", "str"]),
    "ce-labels-bool": (lambda: ce(labels=jnp.ones(4, bool)), TypeError, ["labels", "bool", "astype(jnp.int32)"]),
    "ce-labels-complex": (lambda: ce(labels=jnp.ones(4, jnp.complex64)), TypeError, ["labels", "complex64"]),
    "ce-labels-object": (lambda: ce(labels=np.array([None, 1, 2, 0])), TypeError, ["labels", "object"]),
    "ce-labels-python-bigint": (lambda: ce(labels=[2**70, 0, 1, 2]), TypeError, ["labels", "object"]),
    "ce-labels-index-shape": (lambda: ce(labels=jnp.zeros((4, 1), jnp.int32)), ValueError, ["labels", "(4,)", "(4, 1)"]),
    "ce-labels-index-too-few": (lambda: ce(labels=jnp.zeros(3, jnp.int32)), ValueError, ["labels", "(4,)", "(3,)"]),
    "ce-labels-probs-shape": (lambda: ce(labels=jnp.zeros((4, 2))), ValueError, ["labels", "(4, 3)", "(4, 2)"]),
    "ce-labels-too-large": (lambda: ce(labels=jnp.array([0, 3, 1, 0])), ValueError, ["labels", "[0, 3)", "got 3 at position (1,)"]),
    "ce-labels-negative": (lambda: ce(labels=jnp.array([0, 1, -1, 0])), ValueError, ["labels", "got -1 at position (2,)"]),
    "ce-labels-int64-2**32+1": (lambda: ce(labels=np.array([2**32 + 1, 0, 1, 2])), ValueError, ["labels", "got 4294967297 at position (0,)"]),
    "ce-labels-uint64-2**63": (lambda: ce(labels=np.array([0, 2**63, 1, 2], np.uint64)), ValueError, ["labels", "got 9223372036854775808 at position (1,)"]),
    "ce-labels-int64-minus-2**40": (lambda: ce(labels=np.array([0, 1, -(2**40), 2])), ValueError, ["labels", "got -1099511627776"]),
    "ce-labels-uint8-cannot-ignore": (lambda: ce(labels=np.array([0, 200, 1, 2], np.uint8)), ValueError, ["got 200", "uint8 labels cannot hold ignore_index=-100"]),
    "ce-labels-2d-wrong-position": (lambda: loss.cross_entropy(jnp.zeros((2, 2, 3)), jnp.array([[0, 1], [2, 9]])), ValueError, ["got 9 at position (1, 1)"]),
    "ce-labels-zero-classes": (lambda: ce(logits=jnp.zeros((4, 0))), ValueError, ["0 classes", "ignore_index"]),
    # --- cross_entropy: axis
    "ce-axis-float": (lambda: ce(axis=1.0), TypeError, ["axis", "1.0", "int"]),
    "ce-axis-bool": (lambda: ce(axis=True), TypeError, ["axis", "True"]),
    "ce-axis-None": (lambda: ce(axis=None), TypeError, ["axis", "None"]),
    "ce-axis-str": (lambda: ce(axis="1"), TypeError, ["axis", "'1'"]),
    "ce-axis-too-large": (lambda: ce(axis=2), ValueError, ["axis=2", "(4, 3)", "[-2, 2)"]),
    "ce-axis-too-small": (lambda: ce(axis=-3), ValueError, ["axis=-3"]),
    "ce-axis-labels-mismatch": (lambda: ce(axis=0), ValueError, ["labels", "(3,)", "(4,)"]),
    # --- cross_entropy: weight
    "ce-weight-length": (lambda: ce(weight=jnp.ones(4)), ValueError, ["weight", "(3,)", "(4,)"]),
    "ce-weight-2d": (lambda: ce(weight=jnp.ones((3, 1))), ValueError, ["weight", "(3, 1)"]),
    "ce-weight-0d": (lambda: ce(weight=jnp.float32(1.0)), ValueError, ["weight", "()"]),
    "ce-weight-int": (lambda: ce(weight=jnp.ones(3, jnp.int32)), TypeError, ["weight", "int32", "astype"]),
    "ce-weight-bool": (lambda: ce(weight=jnp.ones(3, bool)), TypeError, ["weight", "bool"]),
    "ce-weight-complex": (lambda: ce(weight=jnp.ones(3, jnp.complex64)), TypeError, ["weight", "complex64"]),
    "ce-weight-str": (lambda: ce(weight="abc"), TypeError, ["weight", "str"]),
    "ce-weight-nan": (lambda: ce(weight=jnp.array([1.0, NAN, 1.0])), ValueError, ["weight must be finite", "nan at position 1"]),
    "ce-weight-inf": (lambda: ce(weight=np.array([1.0, 1.0, INF])), ValueError, ["weight must be finite", "inf at position 2"]),
    # --- cross_entropy: ignore_index
    "ce-ignore-index-float": (lambda: ce(ignore_index=1.0), TypeError, ["ignore_index", "1.0", "int"]),
    "ce-ignore-index-bool": (lambda: ce(ignore_index=True), TypeError, ["ignore_index", "True"]),
    "ce-ignore-index-None": (lambda: ce(ignore_index=None), TypeError, ["ignore_index", "None"]),
    "ce-ignore-index-array": (lambda: ce(ignore_index=jnp.int32(0)), TypeError, ["ignore_index", "int(x)"]),
    "ce-ignore-index-str": (lambda: ce(ignore_index="-100"), TypeError, ["ignore_index", "'-100'"]),
    "ce-ignore-index-probs": (lambda: ce(labels=PR(), ignore_index=0), ValueError, ["ignore_index=0", "probabilities", "where="]),
    "ce-ignore-index-probs-negative": (lambda: ce(labels=PR(), ignore_index=-1), ValueError, ["ignore_index=-1", "where="]),
    # --- cross_entropy: reduction
    "ce-reduction-avg": (lambda: ce(reduction="avg"), ValueError, ["reduction", "'avg'", "'mean'"]),
    "ce-reduction-upper": (lambda: ce(reduction="MEAN"), ValueError, ["reduction", "'MEAN'"]),
    "ce-reduction-None": (lambda: ce(reduction=None), ValueError, ["reduction", "None"]),
    "ce-reduction-int": (lambda: ce(reduction=1), ValueError, ["reduction", "got 1"]),
    "ce-reduction-bytes": (lambda: ce(reduction=b"mean"), ValueError, ["reduction", "b'mean'"]),
    # --- cross_entropy: real options, one rule
    "ce-smoothing-high": (lambda: ce(label_smoothing=1.5), ValueError, ["label_smoothing must be in [0.0, 1.0]; got 1.5", "uniform"]),
    "ce-smoothing-negative": (lambda: ce(label_smoothing=-0.1), ValueError, ["label_smoothing must be in [0.0, 1.0]; got -0.1"]),
    "ce-smoothing-nan": (lambda: ce(label_smoothing=NAN), ValueError, ["label_smoothing", "got nan"]),
    "ce-smoothing-inf": (lambda: ce(label_smoothing=INF), ValueError, ["label_smoothing", "got inf"]),
    "ce-smoothing-bool": (lambda: ce(label_smoothing=True), TypeError, ["label_smoothing", "True", "bool"]),
    "ce-smoothing-str": (lambda: ce(label_smoothing="0.1"), TypeError, ["label_smoothing", "'0.1'"]),
    "ce-smoothing-array": (lambda: ce(label_smoothing=jnp.float32(0.1)), TypeError, ["label_smoothing", "float(x)"]),
    "ce-smoothing-None": (lambda: ce(label_smoothing=None), TypeError, ["label_smoothing", "None"]),
    "ce-z-loss-negative": (lambda: ce(z_loss=-1.0), ValueError, ["z_loss must be in [0.0, inf); got -1.0", "turns the z-loss off"]),
    "ce-z-loss-inf": (lambda: ce(z_loss=INF), ValueError, ["z_loss must be in [0.0, inf); got inf"]),
    "ce-z-loss-nan": (lambda: ce(z_loss=NAN), ValueError, ["z_loss", "got nan"]),
    "ce-z-loss-None": (lambda: ce(z_loss=None), TypeError, ["z_loss", "None"]),
    "ce-z-loss-array": (lambda: ce(z_loss=jnp.ones(())), TypeError, ["z_loss", "static"]),
    "ce-softcap-zero": (lambda: ce(softcap=0.0), ValueError, ["softcap must be in (0.0, inf); got 0.0", "None turns the cap off"]),
    "ce-softcap-negative": (lambda: ce(softcap=-2.0), ValueError, ["softcap must be in (0.0, inf); got -2.0"]),
    "ce-softcap-inf": (lambda: ce(softcap=INF), ValueError, ["softcap must be in (0.0, inf); got inf"]),
    "ce-softcap-nan": (lambda: ce(softcap=NAN), ValueError, ["softcap", "got nan"]),
    "ce-softcap-bool": (lambda: ce(softcap=True), TypeError, ["softcap", "True"]),
    "ce-softcap-str": (lambda: ce(softcap="30"), TypeError, ["softcap", "'30'"]),
    "ce-softcap-beyond-float32": (lambda: ce(softcap=1e39), ValueError, ["softcap=1e+39", "does not fit float32", "3.4e+38"]),
    "ce-softcap-below-float32-normal": (lambda: ce(softcap=1e-40), ValueError, ["softcap=1e-40", "float32", "1.18e-38"]),
    "ce-z-loss-beyond-float32": (lambda: ce(z_loss=1e39), ValueError, ["z_loss=1e+39", "float32"]),
    "ce-smoothing-int-beyond-float": (lambda: ce(label_smoothing=10**400), ValueError, ["label_smoothing must be in [0.0, 1.0]", "got inf"]),
    "sce-softcap-beyond-float32": (lambda: sce(softcap=1e39), ValueError, ["softcap=1e+39", "float32"]),
    "ce-logits-float8": (lambda: ce(logits=L().astype(jnp.float8_e4m3fn)), TypeError, ["logits", "float8_e4m3fn", "8-bit and 4-bit", "astype(jnp.bfloat16)"]),
    "ce-logits-float4": (lambda: ce(logits=L().astype(jnp.float4_e2m1fn)), TypeError, ["logits", "float4_e2m1fn"]),
    "ce-probs-float8": (lambda: ce(labels=PR().astype(jnp.float8_e5m2)), TypeError, ["labels", "float8_e5m2"]),
    "ce-unbatched-label-out-of-range": (lambda: ce(logits=jnp.zeros(3), labels=jnp.array(7)), ValueError, ["labels must be class indices in [0, 3)", "got 7"]),
    "ce-x64-float64-weight-beyond-float32": (lambda: _x64(lambda: ce(weight=jnp.full(3, 1e300))), ValueError, ["weight must fit float32", "1e+300"]),
    # without x64 a float64 weight is held as float32: 1e300 was reported as "got inf"
    "ce-numpy-float64-weight-beyond-float32": (lambda: ce(weight=np.full(3, 1e300)), ValueError, ["weight must fit float32, as JAX holds it", "got 1e+300"]),
    "module-numpy-float64-weight-beyond-float32": (lambda: module(weight=np.full(2, 1e300)), ValueError, ["weight must fit float32", "got 1e+300"]),
    "ce-x64-float64-weight-below-float32-normal": (lambda: _x64(lambda: ce(weight=jnp.full(3, 1e-39))), ValueError, ["weight must be 0 or at least 1.18e-38"]),
    "ce-weight-subnormal": (lambda: ce(weight=jnp.array([1.0, 1e-40, 1.0])), ValueError, ["weight must be 0 or at least 1.18e-38", "position 1", "flushes to 0"]),
    "ce-weight-float8": (lambda: ce(weight=jnp.ones(3, jnp.float8_e4m3fn)), TypeError, ["weight", "float8_e4m3fn"]),
    # --- cross_entropy: where, num_classes, flags
    "ce-where-float": (lambda: ce(where=jnp.ones(4)), TypeError, ["where", "float32", "astype(bool)"]),
    "ce-where-int": (lambda: ce(where=np.ones(4, np.int64)), TypeError, ["where", "int"]),
    "ce-where-shape": (lambda: ce(where=jnp.ones(3, bool)), ValueError, ["where", "(4,)", "(3,)"]),
    "ce-where-too-many-dims": (lambda: ce(where=jnp.ones((2, 4), bool)), ValueError, ["where", "(2, 4)"]),
    "ce-where-int-under-jit": (lambda: jax.jit(lambda w: ce(where=w))(jnp.array([1, 0, 1, 1])), TypeError, ["where", "int32", "astype(bool)"]),
    "ce-where-str": (lambda: ce(where="all"), TypeError, ["where", "str"]),
    "ce-num-classes-too-large": (lambda: ce(num_classes=4), ValueError, ["num_classes", "[0, 3]", "got 4"]),
    "ce-num-classes-negative": (lambda: ce(num_classes=-1), ValueError, ["num_classes", "got -1"]),
    "ce-num-classes-float": (lambda: ce(num_classes=2.0), TypeError, ["num_classes", "2.0"]),
    "ce-num-classes-bool": (lambda: ce(num_classes=True), TypeError, ["num_classes", "True"]),
    "ce-num-classes-label-in-padding": (lambda: ce(labels=jnp.array([0, 1, 2, 0]), num_classes=2), ValueError, ["[0, 2)", "got 2 at position (2,)"]),
    "ce-check-labels-int": (lambda: ce(check_labels=1), TypeError, ["check_labels", "True or False", "got 1"]),
    "ce-check-labels-str": (lambda: ce(check_labels="yes"), TypeError, ["check_labels", "'yes'"]),
    "ce-custom-vjp-None": (lambda: ce(custom_vjp=None), TypeError, ["custom_vjp", "None"]),
    "ce-custom-vjp-int": (lambda: ce(custom_vjp=0), TypeError, ["custom_vjp", "got 0"]),
    "ce-unknown-keyword": (lambda: ce(dim=1), TypeError, ["dim"]),
    "ce-positional-option": (lambda: loss.cross_entropy(L(), Y(), -1), TypeError, ["positional"]),
    # --- cross_entropy under transformations: static errors at trace time
    "ce-jit-reduction": (lambda: jax.jit(lambda x, y: loss.cross_entropy(x, y, reduction="avg"))(L(), Y()), ValueError, ["reduction", "'avg'"]),
    "ce-jit-smoothing": (lambda: jax.jit(lambda x, y: loss.cross_entropy(x, y, label_smoothing=2.0))(L(), Y()), ValueError, ["label_smoothing", "2.0"]),
    "ce-jit-traced-option": (lambda: jax.jit(lambda x, y, e: loss.cross_entropy(x, y, label_smoothing=e))(L(), Y(), 0.1), TypeError, ["label_smoothing", "static_argnames"]),
    # the fix named float(x) / int(x), which fail on a traced value
    "ce-jit-traced-ignore-index": (lambda: jax.jit(lambda x, y, i: loss.cross_entropy(x, y, ignore_index=i))(L(), Y(), 1), TypeError, ["ignore_index", "static_argnames"]),
    "ce-jit-traced-check-labels": (lambda: jax.jit(lambda x, y, c: loss.cross_entropy(x, y, check_labels=c))(L(), Y(), True), TypeError, ["check_labels", "static_argnames"]),
    "ce-vmap-weight": (lambda: jax.vmap(lambda x, y: loss.cross_entropy(x, y, weight=jnp.ones(4)))(L(), Y()), ValueError, ["weight", "(3,)", "(4,)"]),
    "ce-grad-axis": (lambda: jax.grad(lambda x: loss.cross_entropy(x, Y(), axis=3))(L()), ValueError, ["axis=3"]),
    "ce-grad-int-logits": (lambda: jax.grad(lambda x: ce(logits=x.astype(jnp.int32)))(L()), TypeError, ["logits", "int32"]),
    "ce-jvp-custom-vjp": (lambda: jax.jvp(lambda x: ce(logits=x), (L(),), (L(),)), TypeError, ["forward-mode", "custom_vjp=False"]),
    "ce-jacfwd-custom-vjp": (lambda: jax.jacfwd(lambda x: ce(logits=x))(L()), TypeError, ["forward-mode", "custom_vjp=False"]),
    # --- CrossEntropyLoss
    "module-size-average-positional": (lambda: module(None, False), TypeError, ["only positional", "size_average", "ignore_index=0"]),
    "module-three-positional": (lambda: module(jnp.ones(3), None, 0), TypeError, ["2 more", "size_average"]),
    "module-size-average-keyword": (lambda: module(size_average=False), TypeError, ["size_average"]),
    "module-weight-2d": (lambda: module(weight=jnp.ones((2, 2))), ValueError, ["weight", "(2, 2)"]),
    "module-weight-int": (lambda: module(weight=jnp.ones(3, jnp.int32)), TypeError, ["weight", "int32"]),
    "module-weight-nan": (lambda: module(weight=[1.0, NAN]), ValueError, ["weight must be finite", "nan"]),
    "module-weight-str": (lambda: module(weight="w"), TypeError, ["weight", "str"]),
    "module-reduction": (lambda: module(reduction="avg"), ValueError, ["reduction", "'avg'"]),
    "module-smoothing": (lambda: module(label_smoothing=2.0), ValueError, ["label_smoothing", "2.0"]),
    "module-ignore-index": (lambda: module(ignore_index=0.5), TypeError, ["ignore_index", "0.5"]),
    "module-call-scalar": (lambda: module()(jnp.float32(1.0), jnp.int32(0)), ValueError, ["input", "scalar"]),
    "module-call-str": (lambda: module()("x", jnp.int32(0)), TypeError, ["input", "str"]),
    "module-call-target-shape": (lambda: module()(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)), ValueError, ["target", "shape of input", "(2, 4)", "(2, 3)"]),
    "module-call-weight-length": (lambda: module(weight=jnp.ones(4))(L(), Y()), ValueError, ["weight", "(3,)"]),
    "module-call-label-value": (lambda: module()(L(), jnp.array([0, 1, 7, 0])), ValueError, ["target must be class indices in [0, 3)", "got 7"]),
    "module-call-input-int": (lambda: module()(jnp.zeros((4, 3), jnp.int32), Y()), TypeError, ["input must have a floating dtype", "int32", "input.astype"]),
    "module-call-target-bool": (lambda: module()(L(), jnp.ones(4, bool)), TypeError, ["target", "bool"]),
    "module-call-probs-ignore-index": (lambda: module(ignore_index=1)(L(), PR()), ValueError, ["ignore_index=1", "target are probabilities"]),
    # --- linear_cross_entropy
    "lce-hidden-int": (lambda: lce(hidden=jnp.ones((4, 3), jnp.int32)), TypeError, ["hidden", "int32"]),
    "lce-hidden-None": (lambda: loss.linear_cross_entropy(None, K(), Y()), TypeError, ["hidden", "NoneType"]),
    "lce-hidden-0d": (lambda: lce(hidden=jnp.float32(1.0), labels=jnp.int32(0)), ValueError, ["hidden", "scalar"]),
    "lce-kernel-transposed": (lambda: lce(kernel=jnp.ones((5, 3))), ValueError, ["kernel", "(5, 3)", "transpose"]),
    "lce-kernel-1d": (lambda: lce(kernel=jnp.ones(3)), ValueError, ["kernel", "(3,)"]),
    "lce-kernel-int": (lambda: lce(kernel=jnp.ones((3, 5), jnp.int32)), TypeError, ["kernel", "int32"]),
    "lce-kernel-str": (lambda: lce(kernel="k"), TypeError, ["kernel", "str"]),
    "lce-labels-probs-shape": (lambda: lce(labels=jnp.full((4, 6), 0.2)), ValueError, ["labels", "(4, 5)", "(4, 6)"]),
    "lce-labels-bool": (lambda: lce(labels=jnp.ones(4, bool)), TypeError, ["labels", "bool"]),
    "lce-labels-shape": (lambda: lce(labels=jnp.array([0, 1])), ValueError, ["labels", "(4,)", "(2,)"]),
    "lce-labels-value": (lambda: lce(labels=jnp.array([0, 1, 7, 3])), ValueError, ["labels", "[0, 5)", "got 7"]),
    "lce-labels-int64-2**32+1": (lambda: lce(labels=np.array([0, 1, 2**32 + 1, 3])), ValueError, ["got 4294967297 at position (2,)"]),
    "lce-bias-shape": (lambda: lce(bias=jnp.ones(4)), ValueError, ["bias", "(5,)", "(4,)"]),
    "lce-bias-int": (lambda: lce(bias=jnp.ones(5, jnp.int32)), TypeError, ["bias", "int32"]),
    "lce-weight-shape": (lambda: lce(weight=jnp.ones(3)), ValueError, ["weight", "(5,)"]),
    "lce-weight-nan": (lambda: lce(weight=jnp.array([1.0, 1.0, NAN, 1.0, 1.0])), ValueError, ["weight must be finite"]),
    "lce-chunk-zero": (lambda: lce(chunk_size=0), ValueError, ["chunk_size", "got 0"]),
    "lce-chunk-negative": (lambda: lce(chunk_size=-4), ValueError, ["chunk_size", "got -4"]),
    "lce-chunk-float": (lambda: lce(chunk_size=2.5), TypeError, ["chunk_size", "2.5"]),
    "lce-chunk-bool": (lambda: lce(chunk_size=True), TypeError, ["chunk_size", "True"]),
    "lce-chunk-str": (lambda: lce(chunk_size="8"), TypeError, ["chunk_size", "'8'"]),
    "lce-chunk-array": (lambda: lce(chunk_size=jnp.int32(2)), TypeError, ["chunk_size"]),
    "lce-reduction": (lambda: lce(reduction="avg"), ValueError, ["reduction", "'avg'"]),
    "lce-smoothing": (lambda: lce(label_smoothing=-1.0), ValueError, ["label_smoothing", "-1.0"]),
    "lce-z-loss": (lambda: lce(z_loss=-1.0), ValueError, ["z_loss", "-1.0"]),
    "lce-softcap": (lambda: lce(softcap=0.0), ValueError, ["softcap", "0.0"]),
    "lce-where-dtype": (lambda: lce(where=jnp.ones(4)), TypeError, ["where", "float32"]),
    "lce-where-shape": (lambda: lce(where=jnp.ones(3, bool)), ValueError, ["where", "(3,)"]),
    "lce-num-classes": (lambda: lce(num_classes=6), ValueError, ["num_classes", "[0, 5]", "got 6"]),
    "lce-ignore-index-float": (lambda: lce(ignore_index=-100.0), TypeError, ["ignore_index", "-100.0"]),
    "lce-zero-classes-label": (lambda: lce(kernel=jnp.ones((3, 0))), ValueError, ["0 classes"]),
    "lce-jvp": (lambda: jax.jvp(lambda h: lce(hidden=h), (H(),), (H(),)), TypeError, ["forward-mode", "custom_vjp=False"]),
    # --- sharded_cross_entropy (one-device mesh)
    "sce-mesh-axis-int": (lambda: sce(mesh_axis=3), TypeError, ["mesh_axis", "3"]),
    "sce-mesh-axis-empty-tuple": (lambda: sce(mesh_axis=()), TypeError, ["mesh_axis", "()"]),
    "sce-mesh-axis-tuple-of-int": (lambda: sce(mesh_axis=("model", 1)), TypeError, ["mesh_axis"]),
    "sce-mesh-axis-unknown": (lambda: sce(mesh_axis="data"), ValueError, ["shard_map", "'data'"]),
    "sce-outside-shard-map": (lambda: loss.sharded_cross_entropy(L(), Y(), mesh_axis="model"), ValueError, ["inside jax.shard_map", "cross_entropy"]),
    "sce-replicated-logits": (lambda: sce(in_specs=(P(), P())), ValueError, ["logits_shard", "vary", "check_vma"]),
    # eager jvp of the shard_map: "unhashable type: 'Unhashable'" from inside JAX
    "sce-jvp": (lambda: _sce_jvp(), TypeError, ["forward-mode", "custom VJP"]),
    "sce-probabilities": (lambda: sce(labels=PR(), in_specs=(P(None, "model"), P(None, "model"))), TypeError, ["class indices", "probabilities"]),
    "sce-logits-int": (lambda: sce(logits=jnp.ones((4, 3), jnp.int32)), TypeError, ["logits", "int32"]),
    "sce-labels-shape": (lambda: sce(labels=jnp.array([0, 1])), ValueError, ["labels", "(4,)", "(2,)"]),
    "sce-weight-global": (lambda: sce(weight=jnp.ones(7)), ValueError, ["weight", "(3,)", "shard"]),
    "sce-weight-int": (lambda: sce(weight=jnp.ones(3, jnp.int32)), TypeError, ["weight", "int32"]),
    "sce-reduction": (lambda: sce(reduction="avg"), ValueError, ["reduction", "'avg'"]),
    "sce-smoothing": (lambda: sce(label_smoothing=1.5), ValueError, ["label_smoothing", "1.5"]),
    "sce-softcap": (lambda: sce(softcap=-1.0), ValueError, ["softcap", "-1.0"]),
    "sce-where": (lambda: sce(where=jnp.ones(4)), TypeError, ["where", "float32"]),
    "sce-num-classes": (lambda: sce(num_classes=4), ValueError, ["num_classes", "[0, 3]", "got 4"]),
    "sce-num-classes-float": (lambda: sce(num_classes=2.5), TypeError, ["num_classes", "2.5"]),
    "sce-ignore-index-bool": (lambda: sce(ignore_index=False), TypeError, ["ignore_index", "False"]),
}  # fmt: skip


def _torch_zeros():
    torch = pytest.importorskip("torch")
    return torch.zeros(4, 3)


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_bad_input_raises_naming_argument_value_and_fix(case):
    assert_raises_with_words(*ERRORS[case])


# id -> (call, check of the returned value): inputs with a documented meaning, not errors.
DOCUMENTED = {
    "ce-axis-numpy-int": (lambda: (ce(axis=np.int64(1)), ce(axis=1)), "equal"),
    "ce-ignore-index-numpy-int": (lambda: (ce(ignore_index=np.int64(0)), ce(ignore_index=0)), "equal"),
    "ce-ignore-index-2**40-matches-nothing": (lambda: (ce(ignore_index=2**40), ce()), "equal"),
    "ce-smoothing-numpy-float": (lambda: (ce(label_smoothing=np.float64(0.25)), ce(label_smoothing=0.25)), "equal"),
    "ce-smoothing-int-1-is-uniform": (lambda: (ce(label_smoothing=1), ce(labels=PR())), "equal"),
    "ce-weight-list": (lambda: (ce(weight=[1.0, 2.0, 0.5]), ce(weight=jnp.array([1.0, 2.0, 0.5]))), "equal"),
    "ce-where-python-true": (lambda: (ce(where=True), ce()), "equal"),
    "ce-logits-list": (lambda: (ce(logits=np.asarray(L()).tolist()), ce()), "equal"),
    "ce-logits-float64-numpy-x64-off": (lambda: (ce(logits=np.asarray(L(), np.float64)), ce()), "equal"),
    "ce-logits-numpy-bfloat16": (lambda: (ce(logits=np.asarray(L().astype(jnp.bfloat16))), ce(logits=L().astype(jnp.bfloat16))), "equal"),
    "ce-labels-int4": (lambda: (ce(labels=jnp.array([0, 1, 2, 0], jnp.int4)), ce()), "equal"),
    "ce-labels-numpy-uint4": (lambda: (ce(labels=np.asarray(jnp.array([0, 1, 2, 0], jnp.uint4))), ce()), "equal"),
    "ce-labels-python-list": (lambda: (ce(labels=[0, 1, 2, 0]), ce()), "equal"),
    "ce-labels-uint8": (lambda: (ce(labels=np.array([0, 1, 2, 0], np.uint8)), ce()), "equal"),
    "ce-labels-int64-numpy": (lambda: (ce(labels=np.array([0, 1, 2, 0], np.int64)), ce()), "equal"),
    "ce-labels-int64-ignore-2**40": (lambda: (ce(labels=np.array([0, 1, 2**40, 0]), ignore_index=2**40), ce(labels=jnp.array([0, 1, -100, 0]))), "equal"),
    "ce-unbatched-0d-label": (lambda: (loss.cross_entropy(L()[0], 1), ce(labels=jnp.array([1, 0, 0, 0]), reduction="none")[0]), "equal"),
    "ce-empty-batch-mean-nan": (lambda: loss.cross_entropy(jnp.zeros((0, 3)), jnp.zeros(0, jnp.int32)), "nan"),
    "ce-all-ignored-mean-nan": (lambda: ce(labels=jnp.full(4, -100)), "nan"),
    "ce-all-ignored-sum-zero": (lambda: (ce(labels=jnp.full(4, -100), reduction="sum"), jnp.float32(0)), "equal"),
    "ce-zero-classes-probs-mean-nan": (lambda: loss.cross_entropy(jnp.zeros((4, 0)), jnp.zeros((4, 0))), "nan"),
    "ce-zero-classes-probs-none-zeros": (lambda: (loss.cross_entropy(jnp.zeros((4, 0)), jnp.zeros((4, 0)), reduction="none"), jnp.zeros(4)), "equal"),
    "ce-zero-classes-empty-weight-nan": (lambda: loss.cross_entropy(jnp.zeros((2, 0)), jnp.full(2, -100), weight=jnp.zeros(0)), "nan"),
    "ce-probability-inf-gives-inf-as-torch": (lambda: ce(labels=PR().at[0, 0].set(INF), reduction="none")[0], "inf"),
    "lce-empty-batch-mean-nan": (lambda: lce(hidden=jnp.zeros((0, 3)), labels=jnp.zeros(0, jnp.int32)), "nan"),
    "sce-empty-batch-mean-nan": (lambda: sce(logits=jnp.zeros((0, 3)), labels=jnp.zeros(0, jnp.int32)), "nan"),
    "ce-zero-classes-all-ignored-mean-nan": (lambda: loss.cross_entropy(jnp.zeros((4, 0)), jnp.full(4, -100)), "nan"),
    "ce-nan-logit-gives-nan": (lambda: ce(logits=L().at[1, 2].set(NAN), reduction="none")[1], "nan"),
    "ce-posinf-logit-gives-nan": (lambda: ce(logits=L().at[1, 2].set(INF), reduction="none")[1], "nan"),
    "ce-nan-probability-gives-nan": (lambda: ce(labels=PR().at[2, 0].set(NAN), reduction="none")[2], "nan"),
    "ce-jit-out-of-range-label-nan": (lambda: jax.jit(lambda x, y: loss.cross_entropy(x, y, reduction="none"))(L(), jnp.array([0, 9, 1, 2]))[1], "nan"),
    "ce-jit-check-labels-without-checkify-nan": (lambda: jax.jit(lambda x, y: loss.cross_entropy(x, y, check_labels=True, reduction="none"))(L(), jnp.array([0, 9, 1, 2]))[1], "nan"),
    "ce-jit-traced-weight-nan-propagates": (lambda: jax.jit(lambda x, y, w: loss.cross_entropy(x, y, weight=w))(L(), Y(), jnp.array([1.0, NAN, 1.0])), "nan"),
    "ce-hessian-through-custom-vjp": (lambda: jax.hessian(lambda x: ce(logits=x))(L()).sum(), "finite"),
    "ce-custom-vjp-numpy-bool": (lambda: (ce(custom_vjp=np.bool_(False)), ce()), "equal"),
    "ce-big-endian-labels-and-probabilities": (lambda: (ce(labels=np.asarray(Y()).astype(">i4")) + ce(labels=np.asarray(PR()).astype(">f4")), ce() + ce(labels=PR())), "equal"),
    "module-unbatched": (lambda: (module()(L()[0], 1), loss.cross_entropy(L()[0], 1)), "equal"),
    "lce-chunk-huge": (lambda: (lce(chunk_size=10**9), lce(chunk_size=5)), "equal"),
    "lce-chunk-numpy-int": (lambda: (lce(chunk_size=np.int64(2)), lce(chunk_size=2)), "equal"),
    "lce-labels-uint8-class-keeps": (lambda: (lce(labels=np.array([0, 1, 2, 3], np.uint8)), lce(labels=jnp.array([0, 1, 2, 3]))), "equal"),
    "lce-zero-classes-all-ignored-nan": (lambda: lce(kernel=jnp.ones((3, 0)), labels=jnp.full(4, -100)), "nan"),
    "lce-zero-features": (lambda: (lce(hidden=jnp.zeros((4, 0)), kernel=jnp.zeros((0, 5))), ce(logits=jnp.zeros((4, 5)))), "equal"),
    "lce-ignore-index-2**40": (lambda: (lce(ignore_index=2**40), lce()), "equal"),
    "sce-zero-classes-all-ignored-nan": (lambda: sce(logits=jnp.zeros((4, 0)), labels=jnp.full(4, -100)), "nan"),
    "sce-num-classes-zero-all-ignored-nan": (lambda: sce(labels=jnp.full(4, -100), num_classes=0), "nan"),
    "sce-matches-dense": (lambda: (sce(label_smoothing=0.1), ce(label_smoothing=0.1)), "equal"),
    "sce-uint8-labels": (lambda: (sce(labels=jnp.array([0, 1, 2, 0], jnp.uint8)), ce()), "equal"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DOCUMENTED), ids=list(DOCUMENTED))
def test_documented_behaviour(case):
    assert_documented(*DOCUMENTED[case], context=case)


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is float64 here")
def test_long_double_logits_are_refused_naming_the_dtype():
    logits = np.zeros((4, 3), np.longdouble)
    words = ["logits", str(logits.dtype), "JAX does not support", "astype(np.float32)"]
    assert_raises_with_words(lambda: ce(logits=logits), TypeError, words)
