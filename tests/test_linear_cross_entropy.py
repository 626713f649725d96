"""jaxce.loss.linear_cross_entropy against the unfused cross_entropy(hidden @ kernel + bias)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxce import loss
from tests.batch import result, run_together, shared_groups
from tests.conftest import seeded_rng, x64_scope
from tests.tolerances import assert_close
from tests.vjp import value_and_vjp, vjp_programs

ROWS, FEATURES, CLASSES = 10, 6, 23

# Each option set is applied on top of seeded inputs; "ignored" marks every third label -100.
OPTIONS = {
    "plain": dict(),
    "bias": dict(bias=True),
    "weight": dict(weight=True, bias=True),
    "ignore_weight": dict(weight=True, ignored=True),
    "custom_ignore_index": dict(ignore_index=4, bias=True),
    "smoothing": dict(label_smoothing=0.2, bias=True),
    "smoothing_weight": dict(label_smoothing=0.3, weight=True, ignored=True),
    "full_smoothing": dict(label_smoothing=1.0, weight=True, bias=True),
    "z_loss": dict(z_loss=1e-2, bias=True),
    "softcap": dict(softcap=2.0, bias=True),
    "where": dict(where=True, weight=True),
    "everything": dict(
        bias=True,
        weight=True,
        ignored=True,
        where=True,
        label_smoothing=0.1,
        z_loss=1e-3,
        softcap=5.0,
    ),
}
LOSS_KEYS = ("ignore_index", "reduction", "label_smoothing", "z_loss", "softcap")


def make_inputs(key, options: dict, *, batch=(ROWS,), classes=CLASSES, dtype="float64"):
    rng = seeded_rng("linear", key)
    hidden = rng.normal(size=(*batch, FEATURES))
    arrays = {
        "hidden": hidden,
        "kernel": rng.normal(size=(FEATURES, classes)) * 0.8,
        "labels": rng.integers(0, classes, size=batch),
    }
    if options.get("bias"):
        arrays["bias"] = rng.normal(size=classes) * 0.5
    if options.get("weight"):
        arrays["weight"] = rng.uniform(0.2, 2.0, size=classes)
    if options.get("where"):
        arrays["where"] = rng.random(size=batch) > 0.3
    if options.get("ignored"):
        arrays["labels"].reshape(-1)[::3] = -100
    if "ignore_index" in options:  # make sure some rows carry the ignored class
        arrays["labels"].reshape(-1)[::4] = options["ignore_index"]
    cotangent = rng.normal(size=batch)
    out = {}
    for name, value in arrays.items():
        if value.dtype.kind == "f":
            out[name] = jnp.asarray(value, dtype)
        else:
            out[name] = jnp.asarray(value)
    return out, cotangent


def _split(arrays):
    diff = {k: v for k, v in arrays.items() if k in ("hidden", "kernel", "bias", "weight")}
    rest = {k: v for k, v in arrays.items() if k not in diff}
    return diff, rest


def fused(arrays, options, chunk_size=None):
    kw = {k: v for k, v in options.items() if k in LOSS_KEYS}
    return loss.linear_cross_entropy(
        arrays["hidden"], arrays["kernel"], arrays["labels"], bias=arrays.get("bias"),
        weight=arrays.get("weight"), where=arrays.get("where"), chunk_size=chunk_size, **kw,
    )  # fmt: skip


def unfused(arrays, options):
    kw = {k: v for k, v in options.items() if k in LOSS_KEYS}
    logits = arrays["hidden"] @ arrays["kernel"]
    if "bias" in arrays:
        logits = logits + arrays["bias"]
    return loss.cross_entropy(
        logits, arrays["labels"], weight=arrays.get("weight"), where=arrays.get("where"), **kw
    )


def value_and_grads(fn, arrays, cotangent):
    return value_and_vjp(fn, *_split(arrays), cotangent)


def parity_program(arrays, options, cotangent, chunk_size=None):
    """(program, args): the fused loss's value and gradients and the unfused loss's, for
    `check_parity` (one case; `tests.batch.run_together` compiles many together)."""
    fns = (lambda a: fused(a, options, chunk_size), lambda a: unfused(a, options))
    return vjp_programs(fns, *_split(arrays), cotangent)


def check_parity(arrays, results, *, dtype, context=""):
    got, expected = results
    assert_close(got[0], expected[0], dtype=dtype, quantity="loss", context=context)
    assert set(got[1]) == set(expected[1])
    for name in expected[1]:
        assert got[1][name].dtype == arrays[name].dtype
        assert_close(
            got[1][name], expected[1][name], dtype=dtype, quantity="grad", context=f"d{name}"
        )


def assert_parity(arrays, options, cotangent, *, dtype, chunk_size=None, context=""):
    program, args = parity_program(arrays, options, cotangent, chunk_size)
    check_parity(arrays, jax.jit(program)(*args), dtype=dtype, context=context)


# Every option set with "mean" (whose divisor depends on weights, ignore_index and where), and
# the other reductions on the sets that exercise them most.
FLOAT64_CASES = [(name, "mean") for name in OPTIONS] + [
    (name, reduction)
    for name in ("weight", "smoothing_weight", "everything")
    for reduction in ("sum", "none")
]


CHUNK_CASES = {
    "divides": (24, 8),
    "remainder": (23, 5),
    "one_class_chunks": (23, 1),
    "one_chunk": (23, 23),
    "larger_than_classes": (23, 1000),
    "default": (23, None),
    "chunk_of_the_remainder_only": (3, 2),
}
FLOAT32_CASES = ["plain", "weight", "smoothing_weight", "everything"]


# group: (its case keys, its dtype); each group compiles as one program
GROUPS = {
    "float64": ([f"{n}-{r}" for n, r in FLOAT64_CASES], "float64"),
    "chunks": (list(CHUNK_CASES), "float64"),
    "float32": (FLOAT32_CASES, "float32"),
}


def case_inputs(group, key):
    """(arrays, options, cotangent, chunk_size) of a case of a group (in its dtype's scope)."""
    if group == "float64":
        name, reduction = key.rsplit("-", 1)
        options = {**OPTIONS[name], "reduction": reduction}
        arrays, cotangent = make_inputs((name, reduction), options)
        return arrays, options, cotangent, 5
    if group == "chunks":
        options = {**OPTIONS["everything"], "reduction": "mean"}
        classes, chunk_size = CHUNK_CASES[key]
        arrays, cotangent = make_inputs(("chunks", classes), options, classes=classes)
        return arrays, options, cotangent, chunk_size
    options = {**OPTIONS[key], "reduction": "mean"}
    arrays, cotangent = make_inputs(key, options, dtype="float32")
    return arrays, options, cotangent, 8


@pytest.fixture(scope="module")
def parity_results(tmp_path_factory):
    """Each group's cases as one program (see tests/batch.py): group -> {case: results}."""

    def compute(group):
        keys, dtype = GROUPS[group]
        with x64_scope(dtype):
            return run_together({key: parity_program(*case_inputs(group, key)) for key in keys})

    return shared_groups(tmp_path_factory, "linear-unfused", compute)


def check_case(group, key, parity_results, context=""):
    dtype = GROUPS[group][1]
    with x64_scope(dtype):
        arrays = case_inputs(group, key)[0]
    check_parity(arrays, result(parity_results(group), key), dtype=dtype, context=context)


@pytest.mark.parametrize("key", GROUPS["float64"][0])
def test_matches_unfused_float64(key, parity_results):
    check_case("float64", key, parity_results, context=key)


@pytest.mark.parametrize("name", FLOAT32_CASES)
def test_matches_unfused_float32(name, parity_results):
    check_case("float32", name, parity_results, context=name)


@pytest.mark.parametrize("key", list(CHUNK_CASES))
def test_chunk_sizes(key, parity_results):
    """Chunk sizes that divide the class count, leave a remainder, or exceed it (float64)."""
    check_case("chunks", key, parity_results)


def test_check_grads_float64():
    options = dict(label_smoothing=0.2, z_loss=1e-2, softcap=3.0, reduction="mean")
    with x64_scope("float64"):
        arrays, _ = make_inputs("check_grads", {"bias": True, "weight": True, "ignored": True})
        labels = arrays["labels"]

        def f(hidden, kernel, bias, weight):
            return loss.linear_cross_entropy(
                hidden, kernel, labels, bias=bias, weight=weight, chunk_size=7, **options
            )

        args = (arrays["hidden"], arrays["kernel"], arrays["bias"], arrays["weight"])
        check_grads(jax.jit(f), args, order=1, modes=["rev"])


def test_batched_hidden_and_where():
    options = dict(weight=True, bias=True, where=True, reduction="none")
    with x64_scope("float64"):
        arrays, cotangent = make_inputs("batched", options, batch=(2, 3, 4))
        out = fused(arrays, options, chunk_size=6)
        assert out.shape == (2, 3, 4)
        assert_parity(arrays, options, cotangent, dtype="float64", chunk_size=6)


def test_jit_and_vmap():
    options = dict(label_smoothing=0.1, reduction="mean")
    arrays, _ = make_inputs("vmap", {"bias": True}, batch=(3, ROWS), dtype="float32")
    kernel, bias = arrays["kernel"], arrays["bias"]

    def per_sequence(fn):
        def one(h, y):
            return fn({"hidden": h, "kernel": kernel, "bias": bias, "labels": y}, options)

        return jax.jit(jax.vmap(jax.value_and_grad(one)))(arrays["hidden"], arrays["labels"])

    got = per_sequence(lambda a, o: fused(a, o, chunk_size=4))
    expected = per_sequence(unfused)
    assert_close(got[0], expected[0], dtype="float32", quantity="loss")
    assert_close(got[1], expected[1], dtype="float32", quantity="grad")


def test_out_of_range_label_under_jit_is_nan_like_unfused():
    options = dict(reduction="none")
    arrays, cotangent = make_inputs("oob", {"bias": True}, dtype="float32")
    arrays["labels"] = arrays["labels"].at[2].set(CLASSES + 3)
    got = jax.jit(lambda a: value_and_grads(lambda b: fused(b, options, 4), a, cotangent))(arrays)
    expected = jax.jit(lambda a: value_and_grads(lambda b: unfused(b, options), a, cotangent))(
        arrays
    )
    assert np.isnan(got[0][2]) and not np.isnan(np.delete(np.asarray(got[0]), 2)).any()
    assert_close(got[0], expected[0], dtype="float32", quantity="loss")
    for name in ("hidden", "kernel", "bias"):
        assert_close(got[1][name], expected[1][name], dtype="float32", quantity="grad")


def test_all_ignored_mean_is_nan_like_unfused():
    options = dict(reduction="mean")
    arrays, cotangent = make_inputs("all_ignored", {"bias": True}, dtype="float32")
    arrays["labels"] = jnp.full_like(arrays["labels"], -100)
    got = value_and_grads(lambda a: fused(a, options, 4), arrays, cotangent)
    expected = value_and_grads(lambda a: unfused(a, options), arrays, cotangent)
    assert np.isnan(got[0])
    for name in ("hidden", "kernel", "bias"):
        assert_close(got[1][name], expected[1][name], dtype="float32", quantity="grad")


@pytest.mark.parametrize("rows", [ROWS, 40], ids=["class_chunks", "row_chunks"])
def test_mean_over_zero_class_weights_is_nan_with_nan_gradients(rows):
    """All class weights 0 with label smoothing: the mean divides by 0, so the loss and every
    gradient are NaN, as the unfused loss's (the weight gradient was inf for the classes no
    label named: the smoothing term times 1 / 0)."""
    options = dict(reduction="mean", label_smoothing=0.3)
    arrays, cotangent = make_inputs(("zero_weights", rows), {"weight": True}, batch=(rows,),
                                    dtype="float32")  # fmt: skip
    arrays["weight"] = jnp.zeros_like(arrays["weight"])
    got = value_and_grads(lambda a: fused(a, options, 4), arrays, cotangent)
    expected = value_and_grads(lambda a: unfused(a, options), arrays, cotangent)
    assert np.isnan(got[0]) and np.isnan(expected[0])
    for name in ("hidden", "kernel", "weight"):
        assert np.isnan(np.asarray(got[1][name])).all(), name
        assert_close(got[1][name], expected[1][name], dtype="float32", quantity="grad")


@pytest.mark.parametrize(
    "options",
    [
        dict(weight=jnp.array([0.0, 1.0, 1.0]), label_smoothing=0.1),
        dict(sample_weight=jnp.array([1.0, -1.0])),
        dict(divisor=jnp.float32(0)),  # traced (a concrete 0 is refused)
    ],
    ids=["zero-label-weights-smoothed", "sample-weights-summing-to-0", "divisor-0"],
)
def test_an_undifferentiated_mean_over_no_weight_is_nan_as_a_differentiated_one(options):
    # the value alone divided plainly (+-inf where the total is not 0); under value_and_grad NaN
    h = jnp.array([[1.0, 0.5], [-0.3, 2.0]])
    k = jnp.array([[1.0, -1.0, 0.5], [0.2, 0.3, -0.4]])
    y = jnp.array([0, 0])
    arrays = {n: v for n, v in options.items() if isinstance(v, jax.Array)}
    static = {n: v for n, v in options.items() if n not in arrays}

    def value(h, arrays):
        return loss.linear_cross_entropy(h, k, y, **arrays, **static)

    def torch_layout(h, arrays):
        return loss.torch_linear_cross_entropy(h, k.T, y, **arrays, **static)

    assert np.isnan(jax.jit(value)(h, arrays))
    assert np.isnan(jax.jit(torch_layout)(h, arrays))
    assert np.isnan(jax.jit(jax.value_and_grad(value))(h, arrays)[0])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_accumulates_in_float32(dtype):
    """Inputs in bf16/fp16: the loss equals the float32 computation on the same rounded values,
    to the output dtype's rounding (the unfused path would round the logits first)."""
    options = dict(label_smoothing=0.1, reduction="mean")
    arrays, cotangent = make_inputs(("low", dtype), {"bias": True}, dtype=dtype)
    as32 = {k: v.astype(jnp.float32) if v.dtype == dtype else v for k, v in arrays.items()}
    got = value_and_grads(lambda a: fused(a, options, 8), arrays, cotangent)
    expected = value_and_grads(lambda a: unfused(a, options), as32, cotangent)
    assert got[0].dtype == dtype
    assert_close(got[0], expected[0], dtype=dtype, quantity="loss")
    for name in ("hidden", "kernel", "bias"):
        assert got[1][name].dtype == dtype
        assert_close(got[1][name], expected[1][name], dtype=dtype, quantity="grad")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_second_order_through_a_half_precision_kernel_gradient(dtype):
    """On CPU the class sweep writes a 16-bit kernel's gradient as its bits; a derivative of
    that gradient (grad of grad) must still see it: it was silently 0. Judged against the
    unfused loss in float32 on the same rounded inputs, to the gradient's dtype."""
    rng = seeded_rng("second-order-half", dtype)
    rows, classes = 4, 16  # fewer rows than classes: the class sweep
    h = jnp.asarray(rng.normal(size=(rows, FEATURES)), dtype)
    k = jnp.asarray(rng.normal(size=(FEATURES, classes)) / 3, dtype)
    y = jnp.asarray(rng.integers(0, classes, rows))
    v = jnp.asarray(rng.normal(size=(FEATURES, classes)), jnp.float32)

    def second(fn, h, k):  # d/dh <d loss/d kernel, v>
        inner = lambda h: jnp.vdot(jax.grad(fn, argnums=1)(h, k).astype(jnp.float32), v)
        return jax.jit(jax.grad(inner))(h)

    got = second(lambda h, k: loss.linear_cross_entropy(h, k, y, chunk_size=5), h, k)
    as32 = lambda a: a.astype(jnp.float32)
    want = second(lambda h, k: loss.cross_entropy(h @ k, y), as32(h), as32(k))
    assert got.dtype == jnp.dtype(dtype)
    assert_close(got, want, dtype=dtype, quantity="grad")


@pytest.mark.parametrize(
    "rows, classes, chunks",
    [
        pytest.param(256, 8192, dict(chunk_size=256), id="class_chunks"),
        pytest.param(8192, 256, dict(row_chunk_size=16), id="row_chunks"),
    ],
)
def test_compiled_temporaries_stay_below_the_full_logits(rows, classes, chunks):
    """The whole point: no (N, C) buffer in the compiled forward+backward, whether the sweep
    holds chunks of classes (no more rows than classes) or of rows."""
    h = jax.ShapeDtypeStruct((rows, 16), jnp.float32)
    k = jax.ShapeDtypeStruct((16, classes), jnp.float32)
    y = jax.ShapeDtypeStruct((rows,), jnp.int32)
    step = jax.jit(
        jax.grad(lambda h, k, y: loss.linear_cross_entropy(h, k, y, **chunks), argnums=(0, 1))
    )
    analysis = step.lower(h, k, y).compile().memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    full_logits = rows * classes * 4
    assert analysis.temp_size_in_bytes < full_logits / 4, analysis


@pytest.mark.parametrize(
    "rows, out_features, limit",
    [
        # the class sweep writes each class's gradient once, in the kernel's dtype: the kernel
        # gradient's bits plus small chunks, less than one float32 copy of the kernel
        pytest.param(32, (), 1.0, id="class_chunks"),
        # the row sweep accumulates a float32 kernel gradient (1.04 copies; 1.50 with
        # JAXCE_XLA_CPU_FORMS=0), but converts no whole kernel (one more copy)
        pytest.param(32, (2,), 1.75, id="row_chunks"),
    ],
)
def test_bfloat16_kernel_has_no_float32_copy(rows, out_features, limit):
    """XLA:CPU slices a 16-bit array in float32 and would hoist the conversion of the whole
    kernel out of the sweep's loop (a float32 copy of it alive throughout)."""
    features, classes = 64, 8192
    h = jax.ShapeDtypeStruct((rows, features), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((features, classes, *out_features), jnp.bfloat16)
    y = jax.ShapeDtypeStruct((rows, *out_features), jnp.int32)
    step = jax.jit(
        jax.grad(lambda h, k, y: loss.linear_cross_entropy(h, k, y, chunk_size=256), argnums=1)
    )
    analysis = step.lower(h, k, y).compile().memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    float32_kernel = features * classes * max(1, math.prod(out_features)) * 4
    assert analysis.temp_size_in_bytes < limit * float32_kernel, analysis.temp_size_in_bytes


def _base(**extra):
    arrays = {
        "hidden": jnp.ones((4, 3)),
        "kernel": jnp.ones((3, 5)),
        "labels": jnp.array([0, 1, 2, 3]),
    }
    arrays.update(extra)
    return arrays


@pytest.mark.parametrize(
    "arrays, kwargs, error, words",
    [
        pytest.param(_base(hidden=jnp.ones((4, 3), jnp.int32)), {}, TypeError,
                     ["hidden", "int32"], id="int_hidden"),
        pytest.param(_base(kernel=jnp.ones((5, 3))), {}, ValueError,
                     ["kernel", "(5, 3)", "transpose"], id="kernel_shape"),
        pytest.param(_base(labels=jnp.ones((4, 6))), {}, ValueError,
                     ["labels", "(4, 5)", "(4, 6)"], id="probabilities_shape"),
        pytest.param(_base(labels=jnp.array([0, 1])), {}, ValueError,
                     ["labels", "(4,)", "(2,)"], id="labels_shape"),
        pytest.param(_base(), dict(bias=jnp.ones(4)), ValueError, ["bias", "(5,)"], id="bias"),
        pytest.param(_base(), dict(bias=jnp.ones(5, jnp.int32)), TypeError, ["bias"],
                     id="int_bias"),
        pytest.param(_base(), dict(weight=jnp.ones(3)), ValueError, ["weight"], id="weight"),
        pytest.param(_base(), dict(chunk_size=0), ValueError, ["chunk_size", "0"], id="chunk0"),
        pytest.param(_base(), dict(chunk_size=2.5), TypeError, ["chunk_size", "2.5"],
                     id="chunk_float"),
        pytest.param(_base(), dict(reduction="avg"), ValueError, ["reduction", "'avg'"],
                     id="reduction"),
        pytest.param(_base(), dict(z_loss=-1.0), ValueError, ["z_loss"], id="z_loss"),
        pytest.param(_base(labels=jnp.array([0, 1, 7, 3])), {}, ValueError,
                     ["labels", "[0, 5)", "7"], id="label_value"),
        pytest.param(_base(), dict(where=jnp.ones(3, bool)), ValueError, ["where"], id="where"),
    ],
)  # fmt: skip
def test_errors_name_the_argument(arrays, kwargs, error, words):
    with pytest.raises(error) as info:
        loss.linear_cross_entropy(arrays["hidden"], arrays["kernel"], arrays["labels"], **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("target", ["index", "probs"])
def test_hessian_through_the_fused_loss_matches_the_dense_one(target, reduction):
    # jax.hessian is forward over reverse; with reduction="none" the fused loss's forward pass
    # called the dense custom VJP's primal, which forward mode cannot see through
    with jax.enable_x64(True):
        rng = seeded_rng(f"linear-hessian-{target}-{reduction}")
        h, k = jnp.asarray(rng.standard_normal((4, 3))), jnp.asarray(rng.standard_normal((3, 5)))
        if target == "index":
            labels, options = jnp.asarray([0, 1, 4, 2]), {"z_loss": 1e-2, "softcap": 5.0}
        else:
            labels = jax.nn.softmax(jnp.asarray(rng.standard_normal((4, 5))))
            options = {"label_smoothing": 0.1}
        options["reduction"] = reduction
        for argnum in (0, 1):  # hidden, kernel
            fused = lambda h, k: jnp.sum(
                loss.linear_cross_entropy(h, k, labels, row_chunk_size=3, **options)
            )
            dense = lambda h, k: jnp.sum(
                loss.cross_entropy(h @ k, labels, custom_vjp=False, **options)
            )
            got = jax.hessian(fused, argnums=argnum)(h, k)
            want = jax.hessian(dense, argnums=argnum)(h, k)
            assert_close(got, want, dtype="float64", quantity="second_order")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradients_for_other_inputs_after_remat(reduction):
    # After jax.grad(jax.checkpoint(f)) for some inputs, jax.grad(f) for others failed inside
    # JAX ("foreach() argument 2 is shorter than argument 1"): the forward rule's residual
    # count followed which inputs were differentiated.
    rng = seeded_rng(f"remat-{reduction}")
    x, k = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((4, 8), (8, 5)))
    b, w, y = jnp.zeros(5), jnp.arange(1.0, 6.0), jnp.asarray([0, 1, 2, 3])

    def fused(x, k, b, w):
        return jnp.sum(loss.linear_cross_entropy(x, k, y, bias=b, weight=w, reduction=reduction))

    def dense(x, k, b, w):
        return jnp.sum(loss.cross_entropy(x @ k + b, y, weight=w, reduction=reduction))

    for step, argnums in enumerate([(1,), (1, 2), (1,), (0, 1, 2, 3), (2, 3), (3,)]):
        fn = jax.checkpoint(fused) if step % 2 == 0 else fused
        got = jax.grad(fn, argnums=argnums)(x, k, b, w)
        want = jax.grad(dense, argnums=argnums)(x, k, b, w)
        for g, v in zip(got, want, strict=True):
            assert_close(g, v, dtype="float32", quantity="grad")


@pytest.mark.parametrize("target", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradients_through_jit_after_eager_gradients_of_other_inputs(reduction, target):
    # With reduction="none", after eager gradients w.r.t. two different inputs, a gradient
    # through jax.jit(f) came back all zeros: the forward rule's residuals kept, as static
    # metadata, which gradients an earlier trace had asked for.
    rng = seeded_rng(f"jit-after-eager-{reduction}-{target}")
    x, k = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((4, 8), (8, 5)))
    if target == "index":
        y = jnp.asarray([0, 1, 2, 4])
    else:
        y = jax.nn.softmax(jnp.asarray(rng.standard_normal((4, 5)), jnp.float32))

    def fused(x, k, y):
        return jnp.sum(loss.linear_cross_entropy(x, k, y, reduction=reduction))

    def dense(x, k, y):
        return jnp.sum(loss.cross_entropy(x @ k, y, reduction=reduction))

    argnum_sets = [(0,), (1,)] + ([(2,)] if target == "probs" else [])
    for fn in (fused, jax.jit(fused)):
        for argnums in argnum_sets + argnum_sets[::-1]:
            got = jax.grad(fn, argnums=argnums)(x, k, y)
            want = jax.grad(dense, argnums=argnums)(x, k, y)
            for g, v in zip(got, want, strict=True):
                assert_close(g, v, dtype="float32", quantity="grad")
