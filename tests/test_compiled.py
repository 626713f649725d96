"""What XLA's GPU and TPU compilers make of the losses: (N, C) buffers and passes over the logits.

Compiles for compile-only devices (`benchmarks.compiled`: an H100 from its target config, TPU
v5e chips from libtpu's topologies), so it needs the compilers, not the hardware: the CUDA
plugin (``jax[cuda12]``) and libtpu (``jax[tpu]``), several GB that the default set-up does not
install. ``make accel-check`` installs them into ``.venv-accel`` and runs this file there; where
neither is installed (the default set-up) ``tests/conftest.py`` leaves the file out of the run.

The budgets are in units of the logits' bytes (`benchmarks._hlo.traffic`): a loss with its
gradient must at least read the logits once and write the gradient once (2.0).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType

from benchmarks import _hlo, compiled
from jaxce import loss
from jaxce._linear_sweep import default_row_chunk

N, C = 4096, 32768


def _target(name: str):
    reason = compiled.missing(name)
    return pytest.param(name, id=name, marks=pytest.mark.skipif(bool(reason), reason=str(reason)))


TARGETS = [_target("h100"), _target("v5e")]
DTYPES = ("bfloat16", "float16", "float32")
INDEX_CASES = [c for c, o in compiled.CASES.items() if "probabilities" not in o]
SOFTCAP_CASES = [c for c, o in compiled.CASES.items() if "softcap" in o]
# Reads beyond the three passes, each with its reason.
EXTRA_READS = {
    # The class-weight gradient's smoothing term sums each class over the rows (a column sum):
    # XLA:GPU runs it as a kernel of its own, which reads the logits once more.
    ("h100", "all"): 1,
}


@pytest.fixture(scope="module", autouse=True)
def _host_only():
    """Compile-only: start no GPU or TPU client, so that this runs on hosts without one.

    ``make accel-check`` sets ``JAX_PLATFORMS=cpu``; when another test has already started
    JAX's backends (``make test`` on a GPU or TPU machine) they stay as they are.
    """
    if not jax.config.jax_platforms:
        # RuntimeError: backends already initialised; compile-only devices work all the same.
        with contextlib.suppress(RuntimeError):
            jax.config.update("jax_platforms", "cpu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", INDEX_CASES)
@pytest.mark.parametrize("target", TARGETS)
def test_class_index_step_reads_three_times_and_writes_once(target, case, dtype):
    """Max, sum of exp, then the gradient: 3 reads + 1 write, no (N, C) temporary."""
    m = compiled.measure(target, case, dtype, N, C)
    assert m.temporaries == ()
    assert m.temp_x_logits < 0.05
    assert (m.reads, m.writes) == (3 + EXTRA_READS.get((target, case), 0), 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SOFTCAP_CASES)
@pytest.mark.parametrize("target", TARGETS)
def test_softcap_step_writes_no_logits_sized_temporary(target, case, dtype):
    """The capped logits are recomputed per kernel, never stored (a float32 (N, C) array, twice
    the size of bfloat16 logits, was written on GPU before)."""
    m = compiled.measure(target, case, dtype, N, C)
    assert m.temporaries == ()
    assert m.temp_x_logits < 0.05
    assert m.writes == 1


@pytest.mark.parametrize("target", TARGETS)
def test_weight_gradient_has_no_scatter(target):
    """The gradient through the mean's divisor sum(w[y]) is a column sum in a fixed order, not
    a scatter-add (atomic adds on GPU: not bit-reproducible)."""
    m = compiled.measure(target, "weight", "float32", N, C)
    assert m.scatters == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", TARGETS)
def test_probability_step_reads_each_input_at_most_three_times(target, dtype):
    """Logits 3 times, targets twice; writes only the gradient (2x the bound of 3 arrays)."""
    m = compiled.measure(target, "probabilities", dtype, N, C)
    assert m.temporaries == ()
    assert m.bound == 3
    assert m.x_bound <= 2.0


@pytest.mark.parametrize("case", ["plain", "label_smoothing", "weight", "all"])
@pytest.mark.parametrize("target", TARGETS)
def test_no_float64_work_under_x64_with_float32_logits(target, case):
    """No kernel computes in float64 over (N, C) elements when x64 is on (emulated on TPU)."""
    with jax.enable_x64(True):
        hlo = compiled.compiled_step(target, case, "float32", N, C).as_text()
    assert [k.name for k in _hlo.kernels(hlo, N * C) if "f64" in k.dtypes] == []


@pytest.mark.parametrize("target", TARGETS)
def test_fused_linear_loss_never_holds_the_logits(target):
    """linear_cross_entropy's temporaries: the kernel's gradient, accumulated in float32 over
    the row chunks (D x C x 4 bytes, the floor of a row-chunked sweep), plus at most two
    chunks of float32 logits (the default 64 rows x C); a quarter of one (N, C) float32
    logits array here."""
    (device,) = compiled.devices(target)
    n, d, c = 4096, 1024, 131072
    args = (
        compiled.on(device, (n, d), jnp.bfloat16),
        compiled.on(device, (d, c), jnp.bfloat16),
        compiled.on(device, (n,), jnp.int32),
    )

    def step(hidden, kernel, labels):
        value = lambda h, k: loss.linear_cross_entropy(h, k, labels)
        return jax.value_and_grad(value, argnums=(0, 1))(hidden, kernel)

    temp = compiled.compile_for(target, step, *args).memory_analysis().temp_size_in_bytes
    kernel_grad, chunk = d * c * 4, default_row_chunk(n, c, 1) * c * 4
    assert temp <= kernel_grad + 2 * chunk, (temp, kernel_grad, chunk)
    assert temp < n * c * 4 / 3


@pytest.mark.parametrize("target", TARGETS)
def test_training_step_compiles_data_parallel_on_four_devices(target):
    """train.py's step (`Trainer.run_steps`) on a 4-device "data" mesh all-reduces the gradients.

    The arguments are those of the same trainer on the host's CPU, re-placed on the target's
    mesh with the same partition specs.
    """
    import numpy as np

    from training import Dataset, Trainer, put_dataset

    rng = np.random.default_rng(0)
    dataset = Dataset(
        name="mnist",
        source="synthetic",
        train_images=rng.integers(0, 256, (1024, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, 1024).astype(np.int32),
        test_images=rng.integers(0, 256, (512, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, 10, 512).astype(np.int32),
    )
    options = dict(hidden=(512,), learning_rate=1e-3, batch_size=128, num_train=1024)
    host_mesh = jax.make_mesh((1,), ("data",), (AxisType.Auto,), devices=jax.devices("cpu")[:1])
    host = Trainer(**options, mesh=host_mesh)
    order = jnp.arange(host.steps_per_epoch * 128, dtype=jnp.int32)
    args = (host.init_state(0), put_dataset(dataset, host_mesh), order)

    def spec(sharding):  # the order array is on one device: replicated
        return getattr(sharding, "spec", jax.sharding.PartitionSpec())

    mesh = jax.make_mesh((4,), ("data",), (AxisType.Auto,), devices=compiled.devices(target, 4))
    trainer = Trainer(**options, mesh=mesh)
    placed = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(
            a.shape, a.dtype, sharding=jax.sharding.NamedSharding(mesh, spec(a.sharding))
        ),
        args,
    )
    lowered = trainer.run_steps.trace(*placed, 0, 2).lower(
        lowering_platforms=(compiled.TARGETS[target].platform,)
    )
    hlo = lowered.compile().as_text()
    ops = {ins.op for body in _hlo.parse(hlo)[1].values() for ins in body}
    assert "while" in ops
    assert ops & {"all-reduce", "all-reduce-start", "reduce-scatter"}
