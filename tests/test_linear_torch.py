"""torch 2.13's fused linear loss against jaxce's: the function on both torch paths, the module.

``torch_linear_cross_entropy`` is compared with ``F.linear_cross_entropy`` on torch's reference
path (``options=None``) and its chunked path (``LinearCrossEntropyOptions()``, which takes
class indices without smoothing or K-dimensional output), values and the gradients w.r.t.
input, linear_weight and linear_bias (and probability targets on the reference path). The
NNX ``LinearCrossEntropyLoss`` loads a seeded torch module's state dict and must give its loss
and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from jaxce import loss
from jaxce.nnx import LinearCrossEntropyLoss
from tests.batch import result, run_together, shared_groups
from tests.conftest import seeded_rng, x64_scope
from tests.tolerances import assert_close
from tests.vjp import vjp_program

ROWS, FEATURES, CLASSES = 12, 6, 9
CASES = {
    "plain": dict(),
    "bias-weight": dict(bias=True, weight=True),
    "ignore-index-sum": dict(bias=True, ignored=True, reduction="sum"),
    "weight-ignore-none": dict(weight=True, ignored=True, reduction="none"),
    "smoothing": dict(bias=True, weight=True, label_smoothing=0.2),
    "kdim": dict(out=(3,), bias=True, weight=True, ignored=True),
    "probs": dict(probs=True, bias=True, label_smoothing=0.1),
    "kdim-probs-none": dict(out=(2,), probs=True, weight=True, reduction="none"),
}
CHUNKED = ("plain", "bias-weight", "ignore-index-sum", "weight-ignore-none")  # what it takes


def make(key, case):
    rng = seeded_rng("linear-torch", key)
    out = case.get("out", ())
    arrays = {
        "input": rng.normal(size=(ROWS, FEATURES)),
        "linear_weight": rng.normal(size=(CLASSES, *out, FEATURES)) * 0.6,
    }
    if case.get("probs"):
        p = rng.dirichlet(np.ones(CLASSES), size=(ROWS, *out))
        arrays["target"] = np.moveaxis(p, -1, 1)
    else:
        target = rng.integers(0, CLASSES, size=(ROWS, *out))
        if case.get("ignored"):
            target.reshape(-1)[::3] = -100
        arrays["target"] = target
    if case.get("bias"):
        arrays["linear_bias"] = rng.normal(size=(CLASSES, *out)) * 0.3
    if case.get("weight"):
        arrays["weight"] = rng.uniform(0.3, 2.0, size=CLASSES)
    return arrays, rng.normal(size=(ROWS, *out))


def _options(case):
    return {k: case[k] for k in ("reduction", "label_smoothing") if k in case}


def torch_side(arrays, case, cotangent, dtype, chunked):
    t = {k: torch.tensor(v, dtype=dtype if v.dtype.kind == "f" else torch.int64)
         for k, v in arrays.items()}  # fmt: skip
    diff = [k for k in ("input", "linear_weight", "linear_bias") if k in t]
    diff += ["target"] if case.get("probs") else []
    for k in diff:
        t[k].requires_grad_()
    options = torch.nn.LinearCrossEntropyOptions() if chunked else None
    out = F.linear_cross_entropy(
        t["input"], t["linear_weight"], t["target"], linear_bias=t.get("linear_bias"),
        weight=t.get("weight"), options=options, **_options(case),
    )  # fmt: skip
    ct = torch.tensor(cotangent if out.ndim else np.ravel(cotangent)[0], dtype=dtype)
    grads = torch.autograd.grad(out, [t[k] for k in diff], ct)
    as_float = lambda x: x.detach().to(torch.float64).numpy()
    return as_float(out), {k: as_float(g) for k, g in zip(diff, grads, strict=True)}


def jax_program(arrays, case, cotangent, dtype):
    """(program, args): jaxce's value and gradients for a case (see tests/vjp.py)."""
    a = {k: jnp.asarray(v, dtype) if v.dtype.kind == "f" else jnp.asarray(v)
         for k, v in arrays.items()}  # fmt: skip
    diff = {k: a[k] for k in ("input", "linear_weight", "linear_bias") if k in a}
    if case.get("probs"):
        diff["target"] = a["target"]

    rest = {k: v for k, v in a.items() if k not in diff}

    def f(d):
        return loss.torch_linear_cross_entropy(
            d["input"], d["linear_weight"], d["target"], linear_bias=d.get("linear_bias"),
            weight=d.get("weight"), row_chunk_size=5, **_options(case),
        )  # fmt: skip

    return vjp_program(f, diff, rest, cotangent)


@pytest.fixture(scope="module")
def jax_results(tmp_path_factory):
    """dtype -> {case: jaxce's value and gradients}: each dtype's cases as one program (see
    tests/batch.py); the torch-reference and torch-chunked tests of a case share them."""

    def compute(dtype):
        with x64_scope(dtype):
            programs = {}
            for name, case in CASES.items():
                arrays, cotangent = make((name, dtype), case)
                programs[name] = jax_program(arrays, case, cotangent, dtype)
            return run_together(programs)

    return shared_groups(tmp_path_factory, "linear-torch", compute)


PAIRS = [(name, False) for name in CASES] + [(name, True) for name in CHUNKED]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "name, chunked", PAIRS, ids=[f"{n}-{'chunked' if c else 'reference'}" for n, c in PAIRS]
)
def test_matches_torch_linear_cross_entropy(name, chunked, dtype, jax_results):
    case = CASES[name]
    arrays, cotangent = make((name, dtype), case)
    out, grads = result(jax_results(dtype), name)
    got = np.asarray(out, np.float64), {k: np.asarray(g, np.float64) for k, g in grads.items()}
    expected = torch_side(arrays, case, cotangent, getattr(torch, dtype), chunked)
    assert_close(got[0], expected[0], dtype=dtype, quantity="loss")
    assert set(got[1]) == set(expected[1])
    for key, value in expected[1].items():
        assert_close(got[1][key], value, dtype=dtype, quantity="grad", context=f"d {key}")


MODULES = {
    "plain": dict(),
    "bias-weight-smoothing": dict(bias=True, weight=True, label_smoothing=0.1),
    "kdim-sum": dict(out_features=(2, 2), bias=True, reduction="sum", ignore_index=1),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_nnx_module_loads_a_torch_state_dict(name):
    """torch's module with a seed, its state dict into the NNX module: equal loss and grads."""
    kw = dict(MODULES[name])
    out = kw.pop("out_features", ())
    torch.manual_seed(7)
    weight = torch.rand(CLASSES, dtype=torch.float64) + 0.5 if kw.pop("weight", False) else None
    t = torch.nn.LinearCrossEntropyLoss(
        FEATURES, CLASSES, out_features=out, dtype=torch.float64, weight=weight, **kw
    )
    rng = seeded_rng("linear-module", name)
    x = rng.normal(size=(ROWS, FEATURES))
    y = rng.integers(0, CLASSES, size=(ROWS, *out))
    tx = torch.tensor(x, requires_grad=True)
    value = t(tx, torch.tensor(y))
    params = [tx, *t.linear.parameters()]
    t_grads = [g.numpy() for g in torch.autograd.grad(value, params)]
    with x64_scope("float64"):
        module = LinearCrossEntropyLoss(
            FEATURES, CLASSES, out_features=out, param_dtype=jnp.float64,
            weight=None if weight is None else jnp.ones(CLASSES), rngs=nnx.Rngs(0), **kw,
        )  # fmt: skip
        module.load_torch_state_dict(t.state_dict())
        graphdef, params_state, rest = nnx.split(module, nnx.Param, ...)

        def f(x, params_state):
            return nnx.merge(graphdef, params_state, rest)(x, jnp.asarray(y))

        got, (dx, d_params) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(
            jnp.asarray(x), params_state
        )
        assert_close(got, value.detach().numpy(), dtype="float64", quantity="loss")
        assert_close(dx, t_grads[0], dtype="float64", quantity="grad", context="d input")
        assert_close(d_params["linear"]["kernel"][...].T, t_grads[1], dtype="float64",
                     quantity="grad", context="d linear.weight")  # fmt: skip
        if kw.get("bias"):
            assert_close(d_params["linear"]["bias"][...], t_grads[2], dtype="float64",
                         quantity="grad", context="d linear.bias")  # fmt: skip
        exported = module.torch_state_dict()
    assert set(exported) == set(t.state_dict())
    for key, value in t.state_dict().items():
        np.testing.assert_array_equal(exported[key], value.numpy())


def test_nnx_module_state_dict_errors_name_the_key():
    module = LinearCrossEntropyLoss(3, 4, bias=True, rngs=nnx.Rngs(0))
    with pytest.raises(KeyError, match=r"missing \['linear.bias'\]"):
        module.load_torch_state_dict({"linear.weight": np.zeros((4, 3))})
    with pytest.raises(ValueError, match=r"'linear.weight' has shape \(3, 4\).*\(4, 3\)"):
        module.load_torch_state_dict(
            {"linear.weight": np.zeros((3, 4)), "linear.bias": np.zeros(4)}
        )


def test_nnx_module_state_is_its_own_in_and_out():
    # Loading shared the torch tensors' memory (an optimizer step in torch moved the module's
    # bias and class weights); the exported arrays were read-only views of the module's.
    t = torch.nn.LinearCrossEntropyLoss(4, 3, bias=True, weight=torch.ones(3))
    module = LinearCrossEntropyLoss(4, 3, bias=True, weight=np.ones(3), rngs=nnx.Rngs(0))
    module.load_torch_state_dict(t.state_dict())
    before = {k: np.array(v) for k, v in module.torch_state_dict().items()}
    with torch.no_grad():
        t.linear.bias.add_(100.0)
        t.linear.weight.mul_(0.0)
        t.weight.mul_(0.0)
    exported = module.torch_state_dict()
    for key, value in exported.items():
        np.testing.assert_array_equal(value, before[key])
        assert value.flags.writeable, key
        torch.from_numpy(value).add_(1.0)  # writes its copy only
    for key, value in module.torch_state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_nnx_module_exports_bfloat16_parameters_torch_can_take():
    module = LinearCrossEntropyLoss(
        4, 3, bias=True, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)
    )  # fmt: skip
    exported = module.torch_state_dict()
    bias = torch.from_numpy(exported["linear.bias"]).bfloat16()  # raised TypeError (ml_dtypes)
    np.testing.assert_array_equal(
        bias.float().numpy(), np.asarray(module.linear.bias[...], np.float32)
    )


def test_nnx_module_with_out_features_needs_batched_input():
    # torch refuses unbatched input for its K-dimensional loss; the module returned a value
    module = LinearCrossEntropyLoss(4, 3, out_features=(2,), rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match=r"input must be batched, \(N, 4\), with out_features=\(2,\)"
    ):
        module(jnp.ones(4), jnp.array([0, 1]))
    assert module(jnp.ones((1, 4)), jnp.array([[0, 1]])).shape == ()


def test_core_package_does_not_import_flax():
    """The NNX module lives in jaxce.nnx; importing jaxce imports neither flax nor torch."""
    import subprocess
    import sys

    code = "import sys, jaxce; print('flax' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_nnx_module_uses_the_initialisers_it_is_given():
    head = LinearCrossEntropyLoss(
        3, 5, bias=True, kernel_init=jax.nn.initializers.zeros,
        bias_init=jax.nn.initializers.ones, rngs=nnx.Rngs(0),
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(head.linear.kernel[...]), np.zeros((3, 5)))
    np.testing.assert_array_equal(np.asarray(head.linear.bias[...]), np.ones(5))
