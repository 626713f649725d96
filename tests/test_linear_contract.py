"""The fused linear loss's whole contract against autodiff of an independent plain reference.

The reference materialises the logits (``tensordot(hidden, kernel)``, classes after the batch
axes, then torch's K-dimensional positions), applies ``tests.reference``'s plain cross-entropy
per example, then the sample weights and the divisor by hand. Every case compares the value
and every gradient (hidden, kernel, bias, class weight, probability targets, sample weights,
divisor) in float64; padding columns must get gradient 0 (the reference never sees them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxce import loss
from tests.batch import result, run_together, shared_groups
from tests.conftest import seeded_rng, x64_scope
from tests.reference import reference_cross_entropy
from tests.tolerances import assert_close
from tests.vjp import vjp_programs

ROWS, FEATURES, CLASSES = 9, 5, 7
DIFF = ("hidden", "kernel", "bias", "weight", "labels", "sample_weight", "divisor")
LOSS_KEYS = ("ignore_index", "reduction", "label_smoothing", "z_loss", "softcap")


def make(key, *, probs=False, out=(), batch=(ROWS,), classes=CLASSES, padding=0, dtype="float64",
         bias=True, weight=False, where=False, sample_weight=False, ignored=False):  # fmt: skip
    """Seeded inputs; ``padding`` extra kernel columns (garbage) beyond the real classes."""
    rng = seeded_rng("linear-contract", key)
    columns = classes + padding
    arrays = {
        "hidden": rng.normal(size=(*batch, FEATURES)),
        "kernel": rng.normal(size=(FEATURES, columns, *out)) * 0.7,
    }
    if probs:
        p = rng.dirichlet(np.ones(classes), size=(*batch, *out))  # (*batch, *out, C)
        p = np.moveaxis(p, -1, len(batch))
        arrays["labels"] = np.concatenate(
            [p, rng.uniform(size=(*batch, padding, *out))], axis=len(batch)
        )  # padding entries are ignored
    else:
        labels = rng.integers(0, classes, size=(*batch, *out))
        if ignored:
            labels.reshape(-1)[::4] = -100
        arrays["labels"] = labels
    if bias:
        arrays["bias"] = rng.normal(size=(columns, *out)) * 0.5
    if weight:
        arrays["weight"] = rng.uniform(0.2, 2.0, size=columns)
    if where:
        arrays["where"] = rng.random(size=(*batch, *out)) > 0.25
    if sample_weight:
        arrays["sample_weight"] = rng.uniform(0.0, 3.0, size=(*batch, *out))
    cotangent = rng.normal(size=(*batch, *out))
    cast = {k: jnp.asarray(v, dtype) if v.dtype.kind == "f" else jnp.asarray(v) for k, v in
            arrays.items()}  # fmt: skip
    return cast, cotangent


def fused(arrays, options, **kw):
    opts = {k: v for k, v in options.items() if k in LOSS_KEYS or k == "num_classes"}
    extra = {k: arrays.get(k) for k in ("bias", "weight", "where", "sample_weight", "divisor")}
    return loss.linear_cross_entropy(
        arrays["hidden"], arrays["kernel"], arrays["labels"], **extra, **opts, **kw
    )


def reference(arrays, options):
    """Plain autodiff-able reference: logits, per-example cross-entropy, weights by hand."""
    opts = {k: v for k, v in options.items() if k in LOSS_KEYS}
    reduction = opts.pop("reduction", "mean")
    hidden, kernel, labels = arrays["hidden"], arrays["kernel"], arrays["labels"]
    axis = hidden.ndim - 1
    c = options.get("num_classes", kernel.shape[1])
    kernel = kernel[:, :c]
    logits = jnp.tensordot(hidden, kernel, axes=(-1, 0))
    if "bias" in arrays:
        logits = logits + arrays["bias"][:c]
    weight = None if arrays.get("weight") is None else arrays["weight"][:c]
    soft = jnp.issubdtype(labels.dtype, jnp.floating)
    if soft:
        labels = jax.lax.slice_in_dim(labels, 0, c, axis=axis)
    per = reference_cross_entropy(
        logits, labels, axis=axis, weight=weight, where=arrays.get("where"), reduction="none",
        **opts,
    )  # fmt: skip
    s = arrays.get("sample_weight")
    s = jnp.ones(per.shape, per.dtype) if s is None else s
    keep = jnp.ones(per.shape, bool) if arrays.get("where") is None else arrays["where"]
    if not soft:
        keep = keep & (labels != opts.get("ignore_index", -100))
    s = jnp.where(keep, s, 0)
    if reduction == "none":
        return per * s
    total = jnp.sum(per * s)
    if reduction == "sum":
        return total
    if arrays.get("divisor") is not None:
        return total / arrays["divisor"]
    w_y = jnp.ones(per.shape, per.dtype)
    if not soft and weight is not None:
        w_y = weight[jnp.where(keep, labels, 0)]
    return total / jnp.sum(jnp.where(keep, w_y * s, 0))


def split(arrays):
    """(diff, rest): the differentiated float arrays and the others."""
    diff = {k: v for k, v in arrays.items() if k in DIFF and jnp.issubdtype(v.dtype, jnp.floating)}
    return diff, {k: v for k, v in arrays.items() if k not in diff}


def reference_program(arrays, options, cotangent, **kw):
    """(program, args): the fused loss's value and gradients and the reference's, for
    `check_reference` (one case; `tests.batch.run_together` compiles many together)."""
    fns = (lambda a: fused(a, options, **kw), lambda a: reference(a, options))
    return vjp_programs(fns, *split(arrays), cotangent)


def check_reference(arrays, results, dtype="float64"):
    got, expected = results
    assert got[0].shape == expected[0].shape
    assert_close(got[0], expected[0], dtype=dtype, quantity="loss")
    assert set(got[1]) == set(expected[1])
    for name, value in expected[1].items():
        assert got[1][name].dtype == arrays[name].dtype, name
        assert_close(got[1][name], value, dtype=dtype, quantity="grad", context=f"d {name}")


def assert_matches_reference(arrays, options, cotangent, dtype="float64", **kw):
    program, args = reference_program(arrays, options, cotangent, **kw)
    check_reference(arrays, jax.jit(program)(*args), dtype)


CASES = {
    "probs": dict(make=dict(probs=True), options={}),
    "probs-smoothing-weight": dict(
        make=dict(probs=True, weight=True), options=dict(label_smoothing=0.2)
    ),
    "probs-everything": dict(
        make=dict(probs=True, weight=True, where=True, sample_weight=True),
        options=dict(label_smoothing=0.1, z_loss=1e-2, softcap=4.0),
    ),
    "probs-padded": dict(make=dict(probs=True, weight=True, padding=3), options={"num_classes": 7}),
    "kdim": dict(make=dict(out=(3,)), options={}),
    "kdim-two-axes-weight-ignored": dict(
        make=dict(out=(2, 3), weight=True, ignored=True), options=dict(label_smoothing=0.1)
    ),
    "kdim-probs": dict(make=dict(out=(3,), probs=True, where=True), options=dict(z_loss=1e-3)),
    "kdim-padded": dict(make=dict(out=(2,), padding=2, weight=True), options={"num_classes": 7}),
    "sample-weight": dict(make=dict(sample_weight=True), options={}),
    "sample-weight-class-weight-ignored": dict(
        make=dict(sample_weight=True, weight=True, ignored=True, where=True),
        options=dict(label_smoothing=0.3),
    ),
    "batch-2d-sample-weight": dict(make=dict(batch=(2, 4), sample_weight=True), options={}),
    "index-padded-everything": dict(
        make=dict(padding=5, weight=True, where=True, ignored=True, sample_weight=True),
        options=dict(num_classes=7, label_smoothing=0.1, z_loss=1e-3, softcap=5.0),
    ),
    # no more rows than classes: the gradients sweep class chunks (ragged: 7 = 3 + 3 + 1)
    "few-rows-index-padded-everything": dict(
        make=dict(batch=(6,), padding=5, weight=True, where=True, ignored=True, sample_weight=True),
        options=dict(num_classes=7, label_smoothing=0.1, z_loss=1e-3, softcap=5.0),
    ),
}
# Every case with "mean" (whose divisor depends on every weight and mask); "sum" and "none"
# (the per-example custom VJP) on the cases that exercise the most options at once.
FLOAT64_CASES = [(name, "mean") for name in CASES] + [
    (name, reduction)
    for name in (
        "probs-everything",
        "kdim-two-axes-weight-ignored",
        "index-padded-everything",
        "few-rows-index-padded-everything",
    )
    for reduction in ("sum", "none")
]


def float64_program(name, reduction):
    """(program, args) of a FLOAT64_CASES case, with ragged chunks of rows and classes."""
    case = CASES[name]
    options = {**case["options"], "reduction": reduction}
    arrays, cotangent = make((name, reduction), **case["make"])
    return reference_program(arrays, options, cotangent, row_chunk_size=4, chunk_size=3)


@pytest.fixture(scope="module")
def float64_results(tmp_path_factory):
    """Every FLOAT64_CASES case as one float64 program (see tests/batch.py), by id."""

    def compute(_):
        with x64_scope("float64"):
            return run_together({f"{n}-{r}": float64_program(n, r) for n, r in FLOAT64_CASES})

    return shared_groups(tmp_path_factory, "linear-contract", compute)


@pytest.mark.parametrize(
    "name, reduction", FLOAT64_CASES, ids=[f"{n}-{r}" for n, r in FLOAT64_CASES]
)
def test_matches_reference_float64(name, reduction, float64_results):
    with x64_scope("float64"):
        arrays, _ = make((name, reduction), **CASES[name]["make"])
    check_reference(arrays, result(float64_results(), f"{name}-{reduction}"))


@pytest.mark.parametrize("name", ["probs-everything", "kdim-two-axes-weight-ignored"])
def test_matches_reference_float32(name):
    case = CASES[name]
    arrays, cotangent = make(name, dtype="float32", **case["make"])
    assert_matches_reference(arrays, case["options"], cotangent, dtype="float32")


@pytest.mark.parametrize(
    "probs, reduction, out",
    [(False, "mean", (2,)), (True, "sum", (2,)), (True, "none", (2,)), (False, "none", ())],
    ids=["indices-mean", "probs-sum", "probs-none", "indices-none-class-chunks"],
)
def test_check_grads_float64(probs, reduction, out):
    """Numerical derivatives of every differentiable argument, through the custom VJP (class
    indices without out_features and fewer rows than classes: the class sweep)."""
    with x64_scope("float64"):
        batch = (ROWS,) if out else (5,)
        arrays, _ = make(("check_grads", probs, out), probs=probs, out=out, batch=batch,
                         weight=True, sample_weight=True, where=True)  # fmt: skip
        labels, where = arrays["labels"], arrays["where"]
        kw = dict(reduction=reduction, label_smoothing=0.2, z_loss=1e-2, softcap=3.0, where=where)

        def f(hidden, kernel, bias, weight, sample_weight, *maybe_labels):
            y = maybe_labels[0] if maybe_labels else labels
            return loss.linear_cross_entropy(
                hidden, kernel, y, bias=bias, weight=weight, sample_weight=sample_weight,
                row_chunk_size=4, chunk_size=3, **kw,
            )  # fmt: skip

        args = [arrays[k] for k in ("hidden", "kernel", "bias", "weight", "sample_weight")]
        args += [labels] if probs else []
        check_grads(jax.jit(f), args, order=1, modes=["rev"])


def test_check_grads_divisor_float64():
    with x64_scope("float64"):
        arrays, _ = make("check_grads_divisor", weight=True)
        f = lambda h, k, d: loss.linear_cross_entropy(
            h, k, arrays["labels"], weight=arrays["weight"], divisor=d, row_chunk_size=4
        )
        check_grads(jax.jit(f), (arrays["hidden"], arrays["kernel"], jnp.float64(5.5)), 1,
                    modes=["rev"])  # fmt: skip


@pytest.mark.parametrize("rows", [ROWS, 5], ids=["row_chunks", "class_chunks"])
def test_reverse_over_reverse_matches_reference(rows):
    """Hessian-vector products (grad of grad) go through the custom VJP's rules, over either
    sweep (no more rows than classes: class chunks)."""
    with x64_scope("float64"):
        arrays, _ = make(("hvp", rows), batch=(rows,), weight=True, sample_weight=True)
        options = dict(label_smoothing=0.1, z_loss=1e-2)
        v = jnp.asarray(seeded_rng("hvp-v").normal(size=arrays["hidden"].shape))

        def hvp(fn):
            grad = jax.grad(lambda h: fn({**arrays, "hidden": h}))
            return jax.jit(jax.grad(lambda h: jnp.vdot(grad(h), v)))(arrays["hidden"])

        got = hvp(lambda a: fused(a, options, row_chunk_size=4))
        assert_close(got, hvp(lambda a: reference(a, options)), dtype="float64",
                     quantity="second_order")  # fmt: skip


@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probs"])
def test_gradient_accumulation_equals_one_big_batch(probs):
    """Micro-batches with divisor = the summed mean_divisor: the same loss and gradients."""
    with x64_scope("float64"):
        arrays, _ = make(("accumulate", probs), probs=probs, batch=(12,), weight=not probs,
                         sample_weight=True, where=True, ignored=not probs)  # fmt: skip
        options = dict(label_smoothing=0.1, weight=arrays.get("weight"))
        kernel, bias = arrays["kernel"], arrays["bias"]

        def part_loss(kernel, bias, part, divisor=None):
            return loss.linear_cross_entropy(
                part["hidden"], kernel, part["labels"], bias=bias, where=part["where"],
                sample_weight=part["sample_weight"], divisor=divisor, row_chunk_size=2,
                **options,
            )  # fmt: skip

        whole = jax.jit(jax.value_and_grad(part_loss, argnums=(0, 1)))(kernel, bias, arrays)
        parts = [{k: arrays[k][i : i + 4] for k in ("hidden", "labels", "where",
                  "sample_weight")} for i in (0, 4, 8)]  # fmt: skip
        divisor = sum(
            loss.mean_divisor(p["labels"], axis=1, weight=options["weight"], where=p["where"],
                              sample_weight=p["sample_weight"]) for p in parts
        )  # fmt: skip
        summed = [jax.jit(jax.value_and_grad(part_loss, argnums=(0, 1)))(kernel, bias, p, divisor)
                  for p in parts]  # fmt: skip
        value = sum(s[0] for s in summed)
        assert_close(value, whole[0], dtype="float64", quantity="loss")
        for i, name in enumerate(("kernel", "bias")):
            got = sum(s[1][i] for s in summed)
            assert_close(got, whole[1][i], dtype="float64", quantity="grad", context=name)


def test_mean_divisor_is_the_default_divisor():
    with x64_scope("float64"):
        arrays, _ = make("divisor", weight=True, ignored=True, where=True, sample_weight=True)
        kw = {k: arrays[k] for k in ("weight", "where", "sample_weight")}
        divisor = loss.mean_divisor(arrays["labels"], **kw)
        h, k, y = arrays["hidden"], arrays["kernel"], arrays["labels"]
        mean = loss.linear_cross_entropy(h, k, y, **kw)
        total = loss.linear_cross_entropy(h, k, y, reduction="sum", **kw)
        assert_close(mean, total / divisor, dtype="float64", quantity="loss")
        assert_close(loss.linear_cross_entropy(h, k, y, divisor=divisor, **kw), mean,
                     dtype="float64", quantity="loss")  # fmt: skip


@pytest.mark.parametrize("argnums", [(0,), (1,), (2,), (0, 2)], ids=["hidden", "kernel", "bias",
                         "hidden_bias"])  # fmt: skip
def test_only_the_gradients_asked_for(argnums):
    """A frozen kernel or hidden: the gradients asked for are still right (symbolic zeros)."""
    with x64_scope("float64"):
        arrays, _ = make(("partial", argnums), weight=True)
        y = arrays["labels"]

        def f(fn):
            return jax.jit(jax.grad(fn, argnums=argnums))(arrays["hidden"], arrays["kernel"],
                                                 arrays["bias"])  # fmt: skip

        got = f(lambda h, k, b: loss.linear_cross_entropy(h, k, y, bias=b, row_chunk_size=4))
        expected = f(lambda h, k, b: loss.cross_entropy(h @ k + b, y, custom_vjp=False))
        for g, e in zip(got, expected, strict=True):
            assert_close(g, e, dtype="float64", quantity="grad")


@pytest.mark.parametrize(
    "row_chunk_size, chunk_size", [(8, None), (3, 4)], ids=["one-chunk", "ragged-chunks"]
)
def test_undifferentiated_call_computes_the_logits_once(row_chunk_size, chunk_size):
    """The primal alone runs one matmul sweep, the gradients three matmuls, written once each:
    ragged chunks (8 rows by 3, 6 classes by 4) reuse the loops' one body, not a second copy."""
    h = jnp.ones((8, 4))
    k = jnp.ones((4, 6))
    y = jnp.zeros(8, jnp.int32)
    kw = dict(row_chunk_size=row_chunk_size, chunk_size=chunk_size)
    forward = jax.jit(lambda h, k: loss.linear_cross_entropy(h, k, y, **kw))
    grads = jax.jit(jax.grad(lambda h, k: loss.linear_cross_entropy(h, k, y, **kw), argnums=(0, 1)))
    count = lambda f: f.lower(h, k).as_text().count("dot_general")
    assert (count(forward), count(grads)) == (1, 3)


def test_torch_layout_equals_jax_layout():
    """torch_linear_cross_entropy on (C, d1, D) equals linear_cross_entropy on (D, C, d1)."""
    with x64_scope("float64"):
        arrays, cotangent = make("layouts", out=(2,), weight=True, probs=True)
        kernel, bias = arrays["kernel"], arrays["bias"]
        options = dict(label_smoothing=0.1, weight=arrays["weight"], reduction="none")

        def jax_layout(h, k, b):
            return loss.linear_cross_entropy(h, k, arrays["labels"], bias=b, **options)

        def torch_layout(h, k, b):
            return loss.torch_linear_cross_entropy(
                h, jnp.moveaxis(k, 0, -1), arrays["labels"], linear_bias=b, **options
            )

        args = (arrays["hidden"], kernel, bias)
        for fn in (jax_layout, torch_layout):
            out, vjp = jax.vjp(fn, *args)
            if fn is jax_layout:
                expected = (out, vjp(jnp.asarray(cotangent)))
            else:
                assert_close(out, expected[0], dtype="float64", quantity="loss")
                for g, e in zip(vjp(jnp.asarray(cotangent)), expected[1], strict=True):
                    assert_close(g, e, dtype="float64", quantity="grad")


def test_unbatched_torch_input_gives_a_scalar():
    x, w = jnp.ones(3), jnp.arange(12.0).reshape(4, 3) / 10
    got = loss.torch_linear_cross_entropy(x, w, jnp.int32(2), reduction="none")
    assert got.shape == ()
    assert_close(got, loss.cross_entropy(w @ x, jnp.int32(2)), dtype="float32", quantity="loss")
