"""jaxce.loss.sharded_cross_entropy against the unsharded cross_entropy, on 4 forced CPU devices.

The sharded cases need 4 devices, which must be set before JAX initialises: one subprocess
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``) runs every case through
``child_main`` and prints one JSON line; the parametrized tests recompute each case unsharded
here, from the same seeded inputs, and compare values and gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxce import loss
from tests.batch import CaseError, result, run_together, shared_groups
from tests.conftest import seeded_rng, x64_scope
from tests.tolerances import assert_close
from tests.vjp import vjp_program

MARKER = "@@sharded-results@@ "
ROOT = Path(__file__).resolve().parents[1]

# id -> (options, dtype, layout). Layouts: "model4" splits classes over 4 devices; "data2xmodel2"
# also splits the rows over a data axis; "tuple_axis" splits classes over both axes of a 2x2 mesh.
CASES = {
    "plain": (dict(), "float32", "model4"),
    "weight": (dict(weight=True), "float32", "model4"),
    "ignore_weight": (dict(weight=True, ignored=True), "float32", "model4"),
    "custom_ignore_index": (dict(ignore_index=5), "float32", "model4"),
    "smoothing": (dict(label_smoothing=0.2), "float32", "model4"),
    "smoothing_weight_ignore_sum": (
        dict(label_smoothing=0.3, weight=True, ignored=True, reduction="sum"),
        "float32",
        "model4",
    ),
    "zloss_softcap_none": (
        dict(z_loss=1e-2, softcap=2.5, label_smoothing=0.1, reduction="none"),
        "float32",
        "model4",
    ),
    "where": (dict(where=True, weight=True), "float32", "model4"),
    "padded_vocab_smoothing": (dict(padded=3, label_smoothing=0.2), "float32", "model4"),
    # num_classes: the padding (any values) is left out; the reference is the unpadded loss.
    "num_classes_everything": (
        dict(
            padded=3,
            num_classes=True,
            weight=True,
            ignored=True,
            label_smoothing=0.25,
            z_loss=1e-3,
            softcap=4.0,
        ),
        "float32",
        "model4",
    ),
    "num_classes_whole_padding_shard": (
        dict(padded=6, num_classes=True, label_smoothing=0.3, reduction="none"),
        "float32",
        "model4",
    ),
    "full_smoothing_weight": (dict(label_smoothing=1.0, weight=True), "float32", "model4"),
    "all_ignored": (dict(all_ignored=True), "float32", "model4"),
    "bfloat16": (dict(weight=True, label_smoothing=0.1), "bfloat16", "model4"),
    "float64_everything": (
        dict(weight=True, ignored=True, label_smoothing=0.25, z_loss=1e-3, softcap=4.0),
        "float64",
        "model4",
    ),
    "data_and_model_axes_none": (
        dict(weight=True, label_smoothing=0.1, reduction="none", batch=(4, 3)),
        "float32",
        "data2xmodel2",
    ),
    "tuple_mesh_axis": (dict(label_smoothing=0.1, weight=True), "float32", "tuple_axis"),
}
NUM_CLASSES = 16
ROWS = 9


def case_inputs(case_id: str) -> dict:
    """The seeded numpy inputs of a case (identical in the subprocess and here)."""
    options, dtype, _ = CASES[case_id]
    rng = seeded_rng("sharded", case_id)
    batch = options.get("batch", (ROWS,))
    logits = rng.normal(size=(*batch, NUM_CLASSES)) * 3
    labels = rng.integers(0, NUM_CLASSES, size=batch)
    weight = rng.uniform(0.2, 2.0, size=NUM_CLASSES) if options.get("weight") else None
    if options.get("num_classes"):  # a padded vocabulary named by num_classes: junk padding
        pad = options["padded"]
        logits[..., -pad:] = 7.0
        labels = labels % (NUM_CLASSES - pad)
        if weight is not None:
            weight[-pad:] = 3.0
    elif options.get("padded"):  # a padded vocabulary: the last classes never win
        pad = options["padded"]
        logits[..., -pad:] = -np.inf
        labels = labels % (NUM_CLASSES - pad)
        weight = np.ones(NUM_CLASSES) if weight is None else weight
        weight[-pad:] = 0.0
    if options.get("ignored"):
        labels.reshape(-1)[::3] = -100
    if options.get("all_ignored"):
        labels[:] = -100
    where = rng.random(size=batch) > 0.3 if options.get("where") else None
    cotangent = rng.normal(size=batch) if options.get("reduction") == "none" else 1.0
    return dict(
        logits=logits, labels=labels, weight=weight, where=where, cotangent=cotangent, dtype=dtype
    )


def loss_options(case_id: str) -> dict:
    options = CASES[case_id][0]
    keys = ("ignore_index", "reduction", "label_smoothing", "z_loss", "softcap")
    return {k: v for k, v in options.items() if k in keys}


def true_classes(case_id: str) -> int | None:
    """The num_classes a case passes (its unpadded class count), or None."""
    options = CASES[case_id][0]
    return NUM_CLASSES - options["padded"] if options.get("num_classes") else None


def _jax_arrays(inputs: dict) -> dict:
    dtype = jnp.dtype(inputs["dtype"])
    arrays = {"x": jnp.asarray(inputs["logits"], dtype), "y": jnp.asarray(inputs["labels"])}
    if inputs["weight"] is not None:
        arrays["w"] = jnp.asarray(inputs["weight"], dtype)
    if inputs["where"] is not None:
        arrays["where"] = jnp.asarray(inputs["where"])
    return arrays


def _grads_program(fn, arrays: dict, cotangent):
    """(program, args): loss, d/d logits and d/d weight (None without weight) of
    ``fn(arrays)``, for `tests.batch.run_together`."""
    diff = {k: v for k, v in arrays.items() if k in ("x", "w")}
    rest = {k: v for k, v in arrays.items() if k not in diff}
    program, args = vjp_program(fn, diff, rest, cotangent)

    def split(*args):
        out, grads = program(*args)
        return out, grads["x"], grads.get("w")

    return split, args


def _sharded_fn(case_id: str, mesh):
    options, _, layout = CASES[case_id]
    rows = "data" if layout == "data2xmodel2" else None
    classes = ("data", "model") if layout == "tuple_axis" else "model"
    nbatch = len(options.get("batch", (ROWS,)))
    specs = {
        "x": P(rows, *[None] * (nbatch - 1), classes),
        "y": P(rows),
        "w": P(classes),
        "where": P(rows),
    }
    out_spec = P(rows) if options.get("reduction") == "none" else P()

    def body(a):
        return loss.sharded_cross_entropy(
            a["x"], a["y"], mesh_axis=classes, weight=a.get("w"), where=a.get("where"),
            num_classes=true_classes(case_id), **loss_options(case_id),
        )  # fmt: skip

    def fn(a):
        in_specs = ({k: specs[k] for k in a},)
        return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_spec)(a)

    return fn


def child_main() -> None:
    """Runs every case sharded (4 devices) and prints the results as one JSON line."""
    assert jax.device_count() == 4, f"expected 4 forced CPU devices, got {jax.device_count()}"
    auto = (AxisType.Auto,)
    meshes = {
        "model4": jax.make_mesh((4,), ("model",), auto),
        "data2xmodel2": jax.make_mesh((2, 2), ("data", "model"), auto * 2),
        "tuple_axis": jax.make_mesh((2, 2), ("data", "model"), auto * 2),
    }
    results = {}
    for dtype, layout in sorted({(dtype, layout) for _, dtype, layout in CASES.values()}):
        with x64_scope(dtype):  # the cases of one dtype and mesh compile as one program
            programs = {}
            for case_id, (_, case_dtype, case_layout) in CASES.items():
                if (case_dtype, case_layout) == (dtype, layout):
                    inputs = case_inputs(case_id)
                    fn = _sharded_fn(case_id, meshes[layout])
                    programs[case_id] = _grads_program(fn, _jax_arrays(inputs), inputs["cotangent"])
            for case_id, out in run_together(programs).items():
                results[case_id] = (
                    {"error": str(out)} if isinstance(out, CaseError) else
                    [None if v is None else np.asarray(v, np.float64).tolist() for v in out]
                )  # fmt: skip
            if "weight" in programs:  # the collectives of one case's program, compiled alone
                program, args = programs["weight"]
                hlo = jax.jit(program).lower(*args).compile().as_text()
                results["collectives"] = {
                    "all-gather": hlo.count(" all-gather("),
                    "all-reduce": hlo.count(" all-reduce("),
                    "all-to-all": hlo.count(" all-to-all("),
                }
    results["explicit"] = explicit_mesh_results()
    results["data_parallel"] = data_parallel_results()
    results["hessian"] = hessian_results(meshes["model4"])
    print(MARKER + json.dumps(results), flush=True)


HESSIAN_OPTIONS = {
    "mean": {},
    "sum-smoothing-weight": {"reduction": "sum", "label_smoothing": 0.1, "weight": True},
    "none": {"reduction": "none"},
}


def hessian_results(mesh) -> dict:
    """jax.hessian (forward over reverse) of the sharded loss and of the unsharded one, float64;
    it failed inside JAX on the row maximum's pmax (no derivative rule)."""
    out = {}
    with jax.enable_x64(True):
        rng = seeded_rng("sharded-hessian")
        x = jnp.asarray(rng.standard_normal((3, 8)))
        y = jnp.asarray([0, 5, 7])
        w = jnp.asarray(rng.uniform(0.5, 2.0, 8))
        for name, options in HESSIAN_OPTIONS.items():
            options = dict(options)
            weight = w if options.pop("weight", False) else None

            def sharded(x, w, options=options):
                return loss.sharded_cross_entropy(x, y, mesh_axis="model", weight=w, **options)

            specs = (P(None, "model"), None if weight is None else P("model"))
            f = jax.shard_map(sharded, mesh=mesh, in_specs=specs, out_specs=P())
            dense = lambda a, options=options, weight=weight: jnp.sum(
                loss.cross_entropy(a, y, weight=weight, custom_vjp=False, **options)
            )
            try:
                got = jax.hessian(lambda a, f=f, weight=weight: jnp.sum(f(a, weight)))(x)
            except Exception as err:  # reported to the test, which names it
                out[name] = {"error": f"{type(err).__name__}: {err}"[:2000]}
                continue
            out[name] = {
                "got": np.asarray(got).tolist(),
                "want": np.asarray(jax.hessian(dense)(x)).tolist(),
            }
    return out


# The other losses on inputs whose rows are sharded over jax.make_mesh's default axis type
# (Explicit): they must give the unsharded numbers, gradients sharded as their inputs.
EXPLICIT_ROWS, EXPLICIT_FEATURES = 8, 6


def explicit_mesh_inputs() -> tuple[np.ndarray, ...]:
    rng = seeded_rng("sharded", "explicit")
    h = rng.normal(size=(EXPLICIT_ROWS, EXPLICIT_FEATURES)).astype(np.float32)
    k = rng.normal(size=(EXPLICIT_FEATURES, NUM_CLASSES)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, size=EXPLICIT_ROWS).astype(np.int32)
    w = rng.uniform(0.2, 2.0, size=NUM_CLASSES).astype(np.float32)
    return h, k, y, w


def explicit_mesh_losses(h, k, y, w) -> dict:
    """name -> (value, gradient w.r.t. h or None): each loss once."""
    eps = dict(label_smoothing=0.1)
    graded = {
        "cross_entropy": lambda x: loss.cross_entropy(x @ k, y, weight=w, **eps),
        "CrossEntropyLoss": lambda x: loss.CrossEntropyLoss(weight=w, **eps)(x @ k, y),
        "linear_cross_entropy": lambda x: loss.linear_cross_entropy(x, k, y, weight=w, **eps),
        "torch_linear_cross_entropy": lambda x: loss.torch_linear_cross_entropy(x, k.T, y),
    }
    out = {name: jax.jit(jax.value_and_grad(f))(h) for name, f in graded.items()}
    out["cross_entropy_none"] = (loss.cross_entropy(h @ k, y, weight=w, reduction="none"), None)
    out["linear_none"] = (loss.linear_cross_entropy(h, k, y, reduction="none"), None)
    out["mean_divisor"] = (loss.mean_divisor(y, weight=w), None)
    return out


def explicit_mesh_results() -> dict:
    mesh = jax.make_mesh((4,), ("data",))  # the default axis type: Explicit
    assert mesh.axis_types == (AxisType.Explicit,)
    rows = jax.sharding.NamedSharding(mesh, P("data"))
    h, k, y, w = explicit_mesh_inputs()
    h0, y0 = jnp.asarray(h), jnp.asarray(y)  # made outside the mesh: no explicit axes
    h, y = jax.device_put(h, rows), jax.device_put(y, rows)
    try:
        with jax.sharding.set_mesh(mesh):
            out = explicit_mesh_losses(h, k, y, w)
            # arrays made before set_mesh: the loss's own arrays take the context's axes
            plain = explicit_mesh_losses(h0, k, y0, w)
    except Exception as err:  # reported to the test, which names it
        return {"error": f"{type(err).__name__}: {err}"[:2000]}
    out |= {f"{name}_plain_inputs": pair for name, pair in plain.items()}
    other = jax.make_mesh((2, 2), ("a", "b"))  # labels on another mesh than the logits
    y_other = jax.device_put(y0, jax.sharding.NamedSharding(other, P(("a", "b"))))
    try:
        loss.cross_entropy(h @ k, y_other)
        two_meshes = "no error"
    except ValueError as err:
        two_meshes = str(err)
    return {"two_meshes_error": two_meshes} | {
        name: {
            "value": np.asarray(value, np.float64).tolist(),
            "value_type": str(jax.typeof(value)),
            "grad": None if grad is None else np.asarray(grad, np.float64).tolist(),
            "grad_type": None if grad is None else str(jax.typeof(grad)),
        }
        for name, (value, grad) in out.items()
    }


@pytest.fixture(scope="module")
def sharded_results() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    code = "from tests.test_sharded import child_main; child_main()"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"sharded subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARKER) :])


def _unsharded(case_id: str) -> tuple:
    """(program, args) of a case's reference, the unsharded loss (unpadded when the case passes
    num_classes: the padding must get gradient 0)."""
    inputs = case_inputs(case_id)
    true = true_classes(case_id)
    if true is not None:
        inputs["logits"] = inputs["logits"][..., :true]
        if inputs["weight"] is not None:
            inputs["weight"] = inputs["weight"][:true]

    def unsharded(a):
        return loss.cross_entropy(
            a["x"], a["y"], weight=a.get("w"), where=a.get("where"), **loss_options(case_id)
        )

    return _grads_program(unsharded, _jax_arrays(inputs), inputs["cotangent"])


@pytest.fixture(scope="module")
def unsharded_results(tmp_path_factory):
    """dtype -> {case: the unsharded loss and gradients}, each dtype's cases as one program."""

    def compute(dtype):
        with x64_scope(dtype):
            ids = [case_id for case_id, (_, d, _) in CASES.items() if d == dtype]
            return run_together({case_id: _unsharded(case_id) for case_id in ids})

    return shared_groups(tmp_path_factory, "sharded-references", compute)


@pytest.mark.parametrize("case_id", list(CASES))
def test_sharded_matches_unsharded(case_id, sharded_results, unsharded_results):
    dtype = CASES[case_id][1]
    expected = result(unsharded_results(dtype), case_id)
    got = sharded_results[case_id]
    if isinstance(got, dict):
        pytest.fail(f"the sharded case raised in the subprocess: {got['error']}")
    got_loss, got_dx, got_dw = got
    true = true_classes(case_id)
    if true is not None:
        assert np.all(np.asarray(got_dx)[..., true:] == 0), "padding gets no gradient"
        got_dx = np.asarray(got_dx)[..., :true]
        if got_dw is not None:
            assert np.all(np.asarray(got_dw)[true:] == 0)
            got_dw = np.asarray(got_dw)[:true]
    assert_close(got_loss, expected[0], dtype=dtype, quantity="loss", context=case_id)
    assert_close(got_dx, expected[1], dtype=dtype, quantity="grad", context=f"{case_id} dx")
    assert (got_dw is None) == (expected[2] is None)
    if got_dw is not None:
        assert_close(got_dw, expected[2], dtype=dtype, quantity="grad", context=f"{case_id} dw")


# Data parallelism inside shard_map (check_vma=True): rows split over "data", the kernel and
# the class weights replicated, the mean's divisor the psum of each device's mean_divisor. The
# per-device losses add up to the whole batch's mean, and the gradients of the replicated
# inputs (summed over the devices, as JAX's autodiff does) equal the whole batch's.
DATA_PARALLEL = {
    "cross_entropy": lambda h, k, y, w, d: (
        loss.cross_entropy(h @ k, y, weight=w, reduction="sum", label_smoothing=0.1) / d
    ),
    "linear_cross_entropy": lambda h, k, y, w, d: loss.linear_cross_entropy(
        h, k, y, weight=w, divisor=d, label_smoothing=0.1
    ),
    "linear_cross_entropy_sum": lambda h, k, y, w, d: (
        loss.linear_cross_entropy(h, k, y, weight=w, reduction="sum", label_smoothing=0.1) / d
    ),
    "linear_cross_entropy_none": lambda h, k, y, w, d: (
        jnp.sum(loss.linear_cross_entropy(h, k, y, weight=w, reduction="none", label_smoothing=0.1))
        / d
    ),
    # several ragged chunks of rows and of classes: every loop's carry varies over "data"
    "linear_cross_entropy_chunks": lambda h, k, y, w, d: loss.linear_cross_entropy(
        h, k, y, weight=w, divisor=d, label_smoothing=0.1, chunk_size=3, row_chunk_size=1
    ),
    "linear_cross_entropy_none_chunks": lambda h, k, y, w, d: (
        jnp.sum(
            loss.linear_cross_entropy(
                h, k, y, weight=w, reduction="none", chunk_size=3, row_chunk_size=1
            )
        )
        / d
    ),
}


def _whole_batch(name, h, k, y, w):
    """The loss's value and gradients (h, k, w) over the whole batch, on one device."""

    def f(h, k, w):
        return DATA_PARALLEL[name](h, k, y, w, loss.mean_divisor(y, weight=w))

    return jax.value_and_grad(f, argnums=(0, 1, 2))(h, k, w)


def data_parallel_results() -> dict:
    mesh = jax.make_mesh((4,), ("data",), (AxisType.Auto,))
    h, k, y, w = map(jnp.asarray, explicit_mesh_inputs())
    out = {}
    for name, fn in DATA_PARALLEL.items():

        def local(h, y, k, w, fn=fn):
            def f(h, k, w):
                return fn(h, k, y, w, lax.psum(loss.mean_divisor(y, weight=w), "data"))

            value, grads = jax.value_and_grad(f, argnums=(0, 1, 2))(h, k, w)
            return lax.psum(value, "data"), grads

        specs = (P("data"), P("data"), P(), P())
        program = jax.shard_map(
            local, mesh=mesh, in_specs=specs, out_specs=(P(), (P("data"), P(), P()))
        )
        try:
            value, grads = jax.jit(program)(h, y, k, w)
        except Exception as err:  # reported to the test, which names it
            out[name] = {"error": f"{type(err).__name__}: {err}"[:2000]}
            continue
        out[name] = [np.asarray(a, np.float64).tolist() for a in (value, *grads)]
    return out


@pytest.mark.parametrize("name", list(DATA_PARALLEL))
def test_data_parallel_in_shard_map_matches_the_whole_batch(sharded_results, name):
    got = sharded_results["data_parallel"][name]
    assert not isinstance(got, dict), got
    value, grads = _whole_batch(name, *map(jnp.asarray, explicit_mesh_inputs()))
    assert_close(got[0], value, dtype="float32", quantity="loss", context=name)
    for what, g, want in zip(("hidden", "kernel", "weight"), got[1:], grads, strict=True):
        assert_close(g, want, dtype="float32", quantity="grad", context=f"{name} d{what}")


def test_explicit_mesh_inputs_match_unsharded(sharded_results):
    """Rows sharded over an Explicit mesh axis: unsharded numbers, each output sharded right."""
    got = dict(sharded_results["explicit"])
    assert "error" not in got, got.get("error")
    assert got.pop("two_meshes_error").startswith(
        "the arrays given to one loss must be on one mesh; got arrays on 2 meshes"
    )
    expected = explicit_mesh_losses(*map(jnp.asarray, explicit_mesh_inputs()))
    assert set(got) == set(expected) | {f"{name}_plain_inputs" for name in expected}
    for name, (value, grad) in expected.items():
        for key in (name, f"{name}_plain_inputs"):
            assert_close(got[key]["value"], value, dtype="float32", quantity="loss", context=key)
            if grad is not None:
                assert_close(got[key]["grad"], grad, dtype="float32", quantity="grad", context=key)
        rows = name.endswith("_none")  # per-example losses stay sharded as the rows
        assert got[name]["value_type"] == ("float32[8@data]" if rows else "float32[]"), name
        if grad is not None:
            assert got[name]["grad_type"] == "float32[8@data,6]", name


def test_only_two_collectives_and_no_gather(sharded_results):
    """Forward+backward: one pmax and one tuple psum (both all-reduces), nothing gathered."""
    assert sharded_results["collectives"] == {"all-gather": 0, "all-reduce": 2, "all-to-all": 0}


def test_smoothing_differs_from_a_per_shard_average(sharded_results):
    """Guards the Megatron-LM#737 mistake: a per-shard smoothing term is not the global one."""
    inputs = case_inputs("smoothing")
    x = inputs["logits"].astype(np.float64)
    lse = np.log(np.exp(x).sum(-1))
    nll = lse - np.take_along_axis(x, inputs["labels"][:, None], -1)[:, 0]
    eps, shards = 0.2, np.split(x, 4, axis=-1)
    exact = np.mean((1 - eps) * nll + eps * (lse - x.mean(-1)))
    per_shard = np.mean((1 - eps) * nll + eps * (lse - shards[0].mean(-1)))  # rank 0's view
    assert_close(sharded_results["smoothing"][0], exact, dtype="float32", quantity="loss")
    assert abs(per_shard - exact) > 1e-3


def _one_device_mesh():
    return jax.make_mesh((1,), ("model",), (AxisType.Auto,))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        pytest.param(dict(mesh_axis="data"), ValueError, ["shard_map", "'data'"], id="unbound"),
        pytest.param(dict(mesh_axis=3), TypeError, ["mesh_axis", "3"], id="axis_type"),
        pytest.param(
            dict(mesh_axis="model", weight=jnp.ones(7)),
            ValueError,
            ["weight", "shard"],
            id="weight",
        ),
        pytest.param(
            dict(mesh_axis="model", reduction="avg"), ValueError, ["reduction", "'avg'"], id="red"
        ),
        pytest.param(
            dict(mesh_axis="model", label_smoothing=1.5), ValueError, ["label_smoothing"], id="eps"
        ),
    ],
)
def test_errors_name_the_argument(kwargs, error, words):
    logits, labels = jnp.zeros((3, 4)), jnp.array([0, 1, 2])
    fn = jax.shard_map(
        lambda x, y: loss.sharded_cross_entropy(x, y, **kwargs),
        mesh=_one_device_mesh(), in_specs=(P(None, "model"), P()), out_specs=P(),
    )  # fmt: skip
    with pytest.raises(error) as info:
        fn(logits, labels)
    for word in words:
        assert word in str(info.value)


def test_outside_shard_map_raises():
    with pytest.raises(ValueError, match=r"inside jax\.shard_map"):
        loss.sharded_cross_entropy(jnp.zeros((3, 4)), jnp.array([0, 1, 2]), mesh_axis="model")


@pytest.mark.parametrize(
    "logits_spec, check_vma",
    [
        pytest.param(P(), True, id="replicated_logits"),
        pytest.param(P(None, "model"), False, id="check_vma_off"),
    ],
)
def test_logits_must_vary_over_the_mesh_axis(logits_spec, check_vma):
    fn = jax.shard_map(
        lambda x, y: loss.sharded_cross_entropy(x, y, mesh_axis="model"),
        mesh=_one_device_mesh(), in_specs=(logits_spec, P()), out_specs=P(), check_vma=check_vma,
    )  # fmt: skip
    with pytest.raises(ValueError, match="check_vma=True"):
        fn(jnp.zeros((3, 4)), jnp.array([0, 1, 2]))


def test_a_size_one_mesh_axis_does_not_blame_the_gradient():
    fn = jax.shard_map(
        lambda x, y: loss.sharded_cross_entropy(x, y, mesh_axis="model"),
        mesh=_one_device_mesh(), in_specs=(P(), P()), out_specs=P(),
    )  # fmt: skip
    with pytest.raises(ValueError, match="check_vma=True") as info:
        fn(jnp.zeros((3, 4)), jnp.array([0, 1, 2]))
    assert "too small" not in str(info.value)  # it said "1 times too small"


def _two_axis_mesh():
    return jax.make_mesh((1, 1), ("data", "model"), (AxisType.Auto,) * 2)


def test_classes_split_over_an_axis_mesh_axis_leaves_out_are_refused():
    """Split over ("data", "model") with mesh_axis="model", each data group took its classes
    for the whole vocabulary: a wrong loss without an error (on 2 x 2 devices)."""
    fn = jax.shard_map(
        lambda x, y: loss.sharded_cross_entropy(x, y, mesh_axis="model"),
        mesh=_two_axis_mesh(), in_specs=(P(None, ("data", "model")), P()), out_specs=P(),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"varies over mesh axes \['data'\] that neither"):
        fn(jnp.zeros((3, 4)), jnp.array([0, 1, 2]))


@pytest.mark.parametrize(
    "mesh_axis, specs",
    [
        pytest.param(("data", "model"), (P(None, ("data", "model")), P()), id="classes-over-both"),
        pytest.param("model", (P("data", "model"), P("data")), id="rows-over-data"),
    ],
)
def test_logits_may_vary_over_other_axes_with_the_labels_or_mesh_axis(mesh_axis, specs):
    x, y = jnp.asarray(seeded_rng("two-axes").normal(size=(4, 6)), jnp.float32), jnp.arange(4)
    fn = jax.shard_map(
        lambda x, y: loss.sharded_cross_entropy(x, y, mesh_axis=mesh_axis, reduction="none"),
        mesh=_two_axis_mesh(), in_specs=specs, out_specs=specs[1],
    )  # fmt: skip
    want = loss.cross_entropy(x, y, reduction="none")
    assert_close(fn(x, y), want, dtype="float32", quantity="loss")


@pytest.mark.parametrize("name", ["labels", "where"])
def test_labels_and_mask_must_be_the_same_over_the_mesh_axis(name):
    """Labels split like the classes would pair each device's classes with other rows."""
    fn = jax.shard_map(
        lambda x, y, m: loss.sharded_cross_entropy(x, y, mesh_axis="model", where=m),
        mesh=_one_device_mesh(), out_specs=P(),
        in_specs=(P(None, "model"), P("model") if name == "labels" else P(),
                  P("model") if name == "where" else P()),
    )  # fmt: skip
    with pytest.raises(ValueError, match=f"{name} must be the same on every device"):
        fn(jnp.zeros((3, 4)), jnp.array([0, 1, 2]), jnp.ones(3, bool))


def test_probability_labels_raise():
    fn = jax.shard_map(
        lambda x, y: loss.sharded_cross_entropy(x, y, mesh_axis="model"),
        mesh=_one_device_mesh(), in_specs=(P(None, "model"), P(None, "model")), out_specs=P(),
    )  # fmt: skip
    with pytest.raises(TypeError, match="class indices"):
        fn(jnp.zeros((3, 4)), jnp.full((3, 4), 0.25))


@pytest.mark.parametrize("name", list(HESSIAN_OPTIONS))
def test_hessian_through_the_sharded_loss_matches_the_unsharded(sharded_results, name):
    result = sharded_results["hessian"][name]
    assert "error" not in result, result.get("error")
    assert_close(result["got"], result["want"], dtype="float64", quantity="second_order")


def test_padding_classes_get_zero_gradient_in_rows_without_a_finite_lse():
    """A NaN logit or a row of -inf made the padding columns' gradient NaN (promised 0)."""
    fn = jax.shard_map(
        lambda x, y: loss.sharded_cross_entropy(
            x, y, mesh_axis="model", num_classes=3, reduction="sum"
        ),
        mesh=_one_device_mesh(), in_specs=(P(None, "model"), P()), out_specs=P(),
    )  # fmt: skip
    x = jnp.array([[jnp.nan, 0.0, 1.0, 5.0], [-jnp.inf, -jnp.inf, -jnp.inf, 5.0], [0, 1, 2, 5.0]])
    y = jnp.array([1, 1, 1])
    grad = jax.grad(fn)(x, y)
    np.testing.assert_array_equal(grad[:, 3], 0.0)
    dense = jax.grad(lambda x: loss.cross_entropy(x, y, reduction="sum"))(x[:, :3])
    assert_close(grad[:, :3], dense, dtype="float32", quantity="grad")


def _run_one_device(body, *args, in_specs):
    fn = jax.shard_map(body, mesh=_one_device_mesh(), in_specs=in_specs, out_specs=P())
    return fn(*args)


def test_a_mesh_axis_named_twice_is_refused():
    body = lambda x, y: loss.sharded_cross_entropy(x, y, mesh_axis=("model", "model"))
    with pytest.raises(ValueError, match=r"mesh_axis must name each mesh axis once; got \("):
        args = (jnp.zeros((3, 4)), jnp.array([0, 1, 2]))
        _run_one_device(body, *args, in_specs=(P(None, "model"), P()))


def test_a_weight_the_same_on_every_device_is_refused():
    """Each device's weight is its own classes': one replicated vector would weigh every
    shard's classes alike, a wrong loss without an error."""
    body = lambda x, y, w: loss.sharded_cross_entropy(x, y, mesh_axis="model", weight=w)
    args = (jnp.zeros((3, 4)), jnp.array([0, 1, 2]), jnp.ones(4))
    with pytest.raises(ValueError, match=r"weight must vary over mesh_axis='model'.*pcast"):
        _run_one_device(body, *args, in_specs=(P(None, "model"), P(), P()))
    marked = lambda x, y, w: body(x, y, lax.pcast(w, "model", to="varying"))
    got = _run_one_device(marked, *args, in_specs=(P(None, "model"), P(), P()))
    assert_close(got, loss.cross_entropy(args[0], args[1]), dtype="float32", quantity="loss")


@pytest.mark.parametrize(
    "logits, labels, message",
    [
        pytest.param(
            jnp.zeros((2, 4), jnp.int32), jnp.array([0, 1]),
            "logits_shard must have a floating dtype", id="dtype",
        ),
        pytest.param(
            jnp.zeros((2, 4)), jnp.array([0, 1, 2]),
            r"shape of logits_shard without the class axis, \(2,\); got \(3,\) \(logits_shard "
            r"\(2, 4\), classes last\)", id="labels",
        ),
    ],
)  # fmt: skip
def test_errors_name_logits_shard(logits, labels, message):
    body = lambda x, y: loss.sharded_cross_entropy(x, y, mesh_axis="model")
    with pytest.raises((TypeError, ValueError), match=message):
        _run_one_device(body, logits, labels, in_specs=(P(None, "model"), P()))
