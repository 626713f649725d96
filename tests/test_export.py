"""Every public loss and the training step lower for GPU (cuda) and TPU, checked from a CPU.

``jax.export`` lowers a function for a platform without its hardware or compiler. For each loss
and input dtype one exported function computes every option set's loss value and its
``value_and_grad`` (w.r.t. the logits or linear inputs, and the class weights); the modules for
``cuda`` and ``tpu`` are then checked for what cannot or should not run there:

- custom calls: none but sharding annotations (no host callback such as
  ``xla_ffi_python_cpu_callback``, no CPU library call);
- float64: no float64 array, with x64 off and (one module per loss and dtype, for cuda) on
  (float64 scalars are excluded, see ``benchmarks._hlo.float64_arrays``);
- XLA:CPU's forms of the row reductions: no exponential behind an ``optimization_barrier``
  (the shared-exp form) and no array of the logits' size with another rank (the class axis
  split into parts). These forms are chosen
  per platform at lowering time; a choice made from the host's backend instead would leave
  them in a GPU or TPU module, which the last tests show the checks would see.

What the target's compiler then makes of the module (buffers, passes over the logits) needs
that compiler: ``tests/test_compiled.py`` and ``make accel-check``.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import _hlo
from jaxce import loss
from tests.conftest import seeded_rng
from tests.tolerances import assert_close

PLATFORMS = ("cuda", "tpu")
DTYPES = ("float32", "bfloat16", "float16")
N, C = 8, 4096  # XLA:CPU's shared-exp form (and the smoothing sum's parts view), if it leaked
# Custom calls that only annotate shardings for the partitioner (no computation).
SHARDING_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}

# id -> options; "weight" and "where" stand for arrays made per loss.
OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore_index": {"ignore_index": 1},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none"},
    "label_smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-4},
    "softcap": {"softcap": 30.0},
    "where": {"where": True},
    "all": {
        "weight": True,
        "ignore_index": 1,
        "label_smoothing": 0.1,
        "z_loss": 1e-4,
        "softcap": 30.0,
        "where": True,
        "reduction": "sum",
    },
}
# CrossEntropyLoss takes torch's four options at construction.
MODULE_OPTIONS = ("plain", "weight", "ignore_index", "sum", "none", "label_smoothing")


def _options(case: str, weight, where) -> dict:
    kw = dict(OPTIONS[case])
    if kw.pop("weight", False):
        kw["weight"] = weight
    if kw.pop("where", False):
        kw["where"] = where
    return kw


def _total(out) -> jax.Array:
    """A scalar from a loss of any reduction (so "none" can be differentiated too)."""
    return jnp.sum(out.astype(jnp.float32))


def _value_and_grads(value, arrays: dict, wrt: tuple[str, ...]):
    """value(**arrays) and its gradient w.r.t. the arrays named in ``wrt``."""

    def f(*diff):
        return _total(value(**{**arrays, **dict(zip(wrt, diff, strict=True))}))

    return jax.value_and_grad(f, argnums=tuple(range(len(wrt))))(*(arrays[k] for k in wrt))


def _all_options(cases, value, arrays: dict, wrt: tuple[str, ...]):
    """Forward value and value_and_grad of ``value(case, **arrays)`` for every option set."""
    out = {}
    for case in cases:
        f = functools.partial(value, case)
        out[case] = (f(**arrays), _value_and_grads(f, arrays, wrt))
    return out


def _abstract(dtype, **shapes) -> dict:
    """ShapeDtypeStructs: "where" bool, (N,) "labels" int32, the rest in ``dtype``."""
    out = {}
    for name, shape in shapes.items():
        dt = jnp.bool_ if name == "where" else dtype
        if (name == "labels" and len(shape) < 2) or shape == (N, 2):
            dt = jnp.int32
        out[name] = jax.ShapeDtypeStruct(shape, dt)
    return out


def _cross_entropy(dtype):
    def value(case, logits, labels, weight, where):
        return loss.cross_entropy(logits, labels, **_options(case, weight, where))

    def f(logits, labels, weight, where):
        arrays = dict(logits=logits, labels=labels, weight=weight, where=where)
        return _all_options(OPTIONS, value, arrays, ("logits", "weight"))

    return f, _abstract(dtype, logits=(N, C), labels=(N,), weight=(C,), where=(N,))


def _probabilities(dtype):
    """Probability targets: no ignore_index (that is for class indices)."""
    cases = [c for c in OPTIONS if "ignore_index" not in OPTIONS[c]]

    def value(case, logits, labels, weight, where):
        return loss.cross_entropy(logits, labels, **_options(case, weight, where))

    def f(logits, labels, weight, where):
        arrays = dict(logits=logits, labels=labels, weight=weight, where=where)
        return _all_options(cases, value, arrays, ("logits", "labels", "weight"))

    return f, _abstract(dtype, logits=(N, C), labels=(N, C), weight=(C,), where=(N,))


def _module(dtype):
    """CrossEntropyLoss in torch's (N, C, d1) layout."""

    def value(case, logits, labels, weight):
        kw = _options(case, weight, None)
        return loss.CrossEntropyLoss(**kw)(logits, labels)

    def f(logits, labels, weight):
        arrays = dict(logits=logits, labels=labels, weight=weight)
        return _all_options(MODULE_OPTIONS, value, arrays, ("logits", "weight"))

    return f, _abstract(dtype, logits=(N, C, 2), labels=(N, 2), weight=(C,))


def _linear(dtype):
    """linear_cross_entropy in chunks of 1024 classes (4 chunks)."""

    def value(case, hidden, kernel, bias, labels, weight, where):
        kw = _options(case, weight, where)
        return loss.linear_cross_entropy(hidden, kernel, labels, bias=bias, chunk_size=1024, **kw)

    def f(hidden, kernel, bias, labels, weight, where):
        arrays = dict(hidden=hidden, kernel=kernel, bias=bias, labels=labels, weight=weight)
        arrays["where"] = where
        return _all_options(OPTIONS, value, arrays, ("hidden", "kernel", "bias", "weight"))

    shapes = dict(hidden=(N, 64), kernel=(64, C), bias=(C,), labels=(N,), weight=(C,), where=(N,))
    return f, _abstract(dtype, **shapes)


MESH = AbstractMesh((2,), ("model",), axis_types=(AxisType.Explicit,))


def _sharded(dtype):
    """sharded_cross_entropy inside shard_map, the classes split over 2 devices."""

    def value(case, logits, labels, weight, where):
        kw = _options(case, weight, where)
        return loss.sharded_cross_entropy(logits, labels, mesh_axis="model", **kw)

    def inner(logits, labels, weight, where):
        arrays = dict(logits=logits, labels=labels, weight=weight, where=where)
        return _all_options(OPTIONS, value, arrays, ("logits", "weight"))

    specs = dict(logits=P(None, "model"), labels=P(), weight=P("model"), where=P())
    # Losses are replicated over "model"; the gradients are sharded like their primals.
    out_specs = {case: (P(), (P(), (P(None, "model"), P("model")))) for case in OPTIONS}

    def f(logits, labels, weight, where):
        mapped = jax.shard_map(
            inner, mesh=MESH, in_specs=tuple(specs.values()), out_specs=out_specs
        )
        return mapped(logits, labels, weight, where)

    arrays = _abstract(dtype, logits=(N, C), labels=(N,), weight=(C,), where=(N,))
    placed = {
        k: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(MESH, specs[k]))
        for k, a in arrays.items()
    }
    return f, placed


LOSSES = {
    "cross_entropy": _cross_entropy,
    "cross_entropy_probabilities": _probabilities,
    "CrossEntropyLoss": _module,
    "linear_cross_entropy": _linear,
    "sharded_cross_entropy": _sharded,
}
# The (N, C) logits as each loss sees them (per device for the sharded one); None: never formed.
LOGITS_SHAPE = {
    "cross_entropy": (N, C),
    "cross_entropy_probabilities": (N, C),
    "CrossEntropyLoss": (N, C, 2),
    "linear_cross_entropy": None,
    "sharded_cross_entropy": (N, C // 2),
}


@functools.cache
def _jitted(name: str, dtype: str):
    """A loss's function, jitted once: the exports for each platform share its trace."""
    f, arrays = LOSSES[name](jnp.dtype(dtype))
    return jax.jit(f), arrays


@functools.cache
def _exported(name: str, dtype: str, platform: str) -> jax.export.Exported:
    f, arrays = _jitted(name, dtype)
    return jax.export.export(f, platforms=(platform,))(*arrays.values())


def check_module(mlir: str, logits_shape=None) -> list[str]:
    """What in a StableHLO module could not, or should not, run on a GPU or TPU."""
    problems = []
    calls = _hlo.custom_call_targets(mlir) - SHARDING_CALLS
    if calls:
        problems.append(f"custom calls {sorted(calls)} (host callbacks or CPU libraries?)")
    f64 = _hlo.float64_arrays(mlir)
    if f64:
        problems.append(f"float64 arrays of shapes {sorted(f64)} with x64 off")
    if "exponential" in _hlo.barrier_operands(mlir):
        problems.append("an exponential behind an optimization_barrier (XLA:CPU's shared-exp form)")
    if logits_shape is not None:
        resized = _hlo.resized_logits(mlir, logits_shape)
        if resized:
            problems.append(f"the logits reshaped to {sorted(resized)} (XLA:CPU's split form)")
    return problems


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_lowers_without_cpu_only_ops(name, dtype, platform):
    """Every option set, forward and value_and_grad, in one exported module per case."""
    exported = _exported(name, dtype, platform)
    assert exported.platforms == (platform,)
    mlir = exported.mlir_module()
    assert check_module(mlir, LOGITS_SHAPE[name]) == []
    # The module holds what was asked: one loss per option set and its gradients.
    assert "stablehlo.exponential" in mlir
    assert len(exported.out_avals) >= 2 * len(MODULE_OPTIONS)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_builds_no_float64_array_under_x64(name):
    """With x64 on, float32 inputs still compute in float32 (as do float16/bfloat16 ones).

    A Python float meeting an array in ``jnp.where`` becomes a float64 array under x64 (an
    (N, C) float64 select in the gradient kernel once did: emulated on TPU, 1/64 of the
    float32 rate on most GPUs). The promotion does not depend on the inputs' dtype.
    """
    with jax.enable_x64(True):
        f, arrays = LOSSES[name](jnp.dtype("float32"))
        exported = jax.export.export(jax.jit(f), platforms=("cuda",))(*arrays.values())
    assert _hlo.float64_arrays(exported.mlir_module()) == set()


def test_sharded_module_is_for_two_devices_with_collectives():
    exported = _exported("sharded_cross_entropy", "float32", "cuda")
    assert exported.nr_devices == 2
    assert "all_reduce" in exported.mlir_module()


@functools.cache
def _training_step():
    """train.py's compiled step (`Trainer.run_steps`) and its arguments, on one CPU device."""
    from training import Dataset, Trainer, put_dataset

    rng = np.random.default_rng(0)
    dataset = Dataset(
        name="mnist",
        source="synthetic",
        train_images=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, 20).astype(np.int32),
        test_images=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, 10, 4).astype(np.int32),
    )
    mesh = jax.make_mesh((1,), ("data",), (AxisType.Auto,), devices=jax.devices()[:1])
    trainer = Trainer(hidden=(16,), learning_rate=1e-3, batch_size=8, num_train=20, mesh=mesh)
    state = trainer.init_state(0)
    order = jnp.arange(trainer.steps_per_epoch * trainer.batch_size, dtype=jnp.int32)
    return trainer.run_steps, (state, put_dataset(dataset, trainer.mesh), order, 0, 3)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_training_step_lowers_without_cpu_only_ops(platform):
    step, args = _training_step()
    exported = jax.export.export(step, platforms=(platform,))(*args)
    mlir = exported.mlir_module()
    assert check_module(mlir) == []
    assert "stablehlo.while" in mlir  # the steps' loop, with the loss and Adam inside
    assert "stablehlo.dot_general" in mlir


# The checks would see XLA:CPU's forms: the same losses lowered for CPU hold them.


@pytest.mark.parametrize(
    ("classes", "form"),
    [
        pytest.param(40000, "split form", id="split-40000-classes"),
        pytest.param(4096, "shared-exp form", id="shared-exp-4096-classes"),
    ],
)
def test_checks_see_the_cpu_forms_in_a_cpu_module(classes, form):
    def step(logits, labels):
        return jax.value_and_grad(loss.cross_entropy)(logits, labels)

    args = (jax.ShapeDtypeStruct((N, classes), jnp.float32), jax.ShapeDtypeStruct((N,), jnp.int32))
    mlir = jax.export.export(jax.jit(step), platforms=("cpu",))(*args).mlir_module()
    problems = check_module(mlir, (N, classes))
    assert any(form in p for p in problems), problems
    cuda = jax.export.export(jax.jit(step), platforms=("cuda",))(*args).mlir_module()
    assert check_module(cuda, (N, classes)) == []


def test_checks_see_a_host_callback_and_float64():
    """(A host callback cannot even be lowered for cuda from here; this one is for CPU.)"""

    def leaky(x):
        jax.debug.callback(lambda v: None, x)
        return x * 2

    args = (jax.ShapeDtypeStruct((N, C), jnp.float32),)
    mlir = jax.jit(leaky).trace(*args).lower(lowering_platforms=("cpu",)).as_text()
    assert any("custom calls" in p and "callback" in p for p in check_module(mlir))
    with jax.enable_x64(True):
        f64 = jax.export.export(jax.jit(lambda x: x.astype(jnp.float64) * 2), platforms=("tpu",))
        mlir = f64(*args).mlir_module()
    assert any(f"float64 arrays of shapes [{(N, C)}]" in p for p in check_module(mlir))


SYMBOLIC = {
    # (function, argument shapes with the symbolic b (batch) or c (classes), the error's words)
    "linear-symbolic-batch": (
        lambda h, k, y: loss.linear_cross_entropy(h, k, y),
        (("b", 3), (3, 5), ("b",)),
        "hidden must have a static shape: the fused loss fixes its row and class chunks",
    ),
    "torch-linear-symbolic-classes": (
        lambda h, w, y: loss.torch_linear_cross_entropy(h, w, y),
        ((4, 3), ("c", 3), (4,)),
        "linear_weight must have a static shape",
    ),
    "cross-entropy-symbolic-classes": (
        lambda x, y: loss.cross_entropy(x, y),
        ((4, "c"), (4,)),
        "the class axis of logits must have a static size; got the symbolic dimension c",
    ),
}


def _symbolic_args(shapes):
    dims = dict(zip("bc", jax.export.symbolic_shape("b, c"), strict=True))
    dtypes = [jnp.float32] * (len(shapes) - 1) + [jnp.int32]  # the labels come last
    return [
        jax.ShapeDtypeStruct(tuple(dims.get(d, d) for d in shape), dtype)
        for shape, dtype in zip(shapes, dtypes, strict=True)
    ]


@pytest.mark.parametrize("name", list(SYMBOLIC))
def test_a_symbolic_dimension_the_loss_cannot_take_is_named(name):
    # JAX raised InconclusiveDimensionOperation from inside the chunk arithmetic
    fn, shapes, words = SYMBOLIC[name]
    with pytest.raises(ValueError, match=re.escape(words)):
        jax.export.export(jax.jit(fn))(*_symbolic_args(shapes))


def test_cross_entropy_exports_with_a_symbolic_batch():
    exported = jax.export.export(jax.jit(lambda x, y: loss.cross_entropy(x, y)))(
        *_symbolic_args((("b", 5), ("b",)))
    )
    x = jnp.asarray(seeded_rng("symbolic-batch").standard_normal((3, 5)), jnp.float32)
    y = jnp.asarray([0, 4, 2])
    assert_close(exported.call(x, y), loss.cross_entropy(x, y), dtype="float32", quantity="loss")
