"""Exact labels for every integer dtype, masks that survive softcap, padded vocabularies.

- Labels: an ``ignore_index`` the labels' dtype cannot hold matches nothing (uint8 labels keep
  class 156 with the default -100), labels beyond int32 are never wrapped to a class (x64 on
  and off), in all three losses, eager and under ``jit``.
- Masks: a -inf logit stays -inf through ``softcap``, so a padded row equals the unpadded one
  and the masked class's gradient is 0.
- Padding: ``num_classes`` makes a padded class axis give exactly the unpadded loss and
  gradients, with label smoothing, class weights, softcap and z-loss.
- torch 2.13's behaviour for zero classes and for ``ignore_index`` with probabilities, which
  the docstrings describe.

The sharded loss runs on a one-device mesh here; ``tests/test_sharded.py`` runs padded
vocabularies over four devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxce import loss
from tests.batch import result, run_together, shared_groups
from tests.conftest import seeded_rng
from tests.tolerances import assert_close

INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


def _sharded(x, y, **options):
    mesh = jax.make_mesh((1,), ("model",), (AxisType.Auto,))
    w = options.pop("weight", None)
    if w is None:
        fn = lambda x, y: loss.sharded_cross_entropy(x, y, mesh_axis="model", **options)
        specs, args = (P(None, "model"), P()), (x, y)
    else:
        fn = lambda x, y, w: loss.sharded_cross_entropy(
            x, y, mesh_axis="model", weight=w, **options
        )
        specs, args = (P(None, "model"), P(), P("model")), (x, y, w)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P()))(*args)


def _dense(x, y, **options):
    return loss.cross_entropy(x, y, **options)


def _linear(x, y, **options):
    """The fused loss with hidden = identity rows, so its logits are the kernel's rows; a
    column of -inf becomes a -inf bias (a matmul would turn 0 * -inf into NaN)."""
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    masked = jnp.all(x == -jnp.inf, axis=0)
    bias = jnp.where(masked, -jnp.inf, 0.0).astype(x.dtype)
    kernel = jnp.where(masked, 0.0, x)
    return loss.linear_cross_entropy(eye, kernel, y, bias=bias, chunk_size=2, **options)


LOSSES = {"dense": _dense, "linear": _linear, "sharded": _sharded}


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_uint8_labels_keep_class_156_with_the_default_ignore_index(name, jitted):
    """-100 wraps to 156 in uint8: class 156 must still count, not be dropped."""
    fn = LOSSES[name]
    x = jnp.asarray(seeded_rng("uint8", name).normal(size=(3, 200)), jnp.float32)
    labels = np.array([156, 3, 156], np.uint8)
    call = jax.jit(lambda x, y: fn(x, y, reduction="none")) if jitted else fn
    got = (call if jitted else lambda x, y: fn(x, y, reduction="none"))(x, jnp.asarray(labels))
    want = fn(x, jnp.asarray(labels, jnp.int32), reduction="none")
    assert np.all(np.asarray(got) > 0), "class 156 examples must not be dropped"
    assert_close(got, want, dtype="float32", quantity="loss")


@pytest.mark.parametrize("x64", [False, True], ids=["x64-off", "x64-on"])
@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_every_integer_dtype_gives_the_int32_result(dtype, x64):
    """Eager (numpy labels as given) and jitted (JAX's canonical dtype), ignored labels kept."""
    x = jnp.asarray(seeded_rng("dtypes").normal(size=(5, 4)), jnp.float32)
    signed = np.dtype(dtype).kind == "i"
    ignore = -1 if signed else 3  # an ignore_index the dtype can hold
    values = np.array([0, 3, ignore, 1, 2])
    labels = values.astype(dtype)
    with jax.enable_x64(x64):
        want = loss.cross_entropy(x, jnp.asarray(values, jnp.int32), ignore_index=ignore)
        eager = loss.cross_entropy(x, labels, ignore_index=ignore)
        jitted = jax.jit(lambda x, y: loss.cross_entropy(x, y, ignore_index=ignore))(
            x, jnp.asarray(labels)
        )
    assert_close(eager, want, dtype="float32", quantity="loss", context="eager")
    assert_close(jitted, want, dtype="float32", quantity="loss", context="jit")


@pytest.mark.parametrize("x64", [False, True], ids=["x64-off", "x64-on"])
@pytest.mark.parametrize("name", ["dense", "linear"])
def test_int64_labels_beyond_int32_are_rejected_not_wrapped(name, x64):
    """2**32 + 1 would truncate to class 1: eager calls name the value and its position."""
    x = jnp.zeros((3, 4))
    labels = np.array([1, 2**32 + 1, 0], np.int64)
    with jax.enable_x64(x64), pytest.raises(ValueError) as info:
        LOSSES[name](x, labels)
    assert "labels must be class indices in [0, 4)" in str(info.value)
    assert "got 4294967297 at position (1,)" in str(info.value)


def test_int64_labels_beyond_int32_under_jit_with_x64_are_nan_not_class_1():
    with jax.enable_x64(True):
        x = jnp.zeros((3, 4))
        labels = jnp.array([1, 2**32 + 1, 2**40], jnp.int64)
        per_example = jax.jit(lambda x, y: loss.cross_entropy(x, y, reduction="none"))(x, labels)
        ignored = jax.jit(
            lambda x, y: loss.cross_entropy(x, y, reduction="none", ignore_index=2**40)
        )(x, labels)
        per_example, ignored = np.asarray(per_example), np.asarray(ignored)
    assert np.isfinite(per_example[0]) and np.isnan(per_example[1:]).all()
    assert np.isnan(ignored[1]) and ignored[2] == 0, "2**40 is ignored exactly"


@pytest.mark.parametrize("name", list(LOSSES))
def test_an_ignore_index_beyond_the_dtype_matches_no_label(name):
    x = jnp.asarray(seeded_rng("2**40").normal(size=(3, 4)), jnp.float32)
    labels = jnp.array([0, 3, 1])
    got = LOSSES[name](x, labels, ignore_index=2**40, reduction="none")
    want = LOSSES[name](x, labels, ignore_index=-5, reduction="none")
    assert_close(got, want, dtype="float32", quantity="loss")


def _padded(x, pad_value, extra=1):
    return jnp.concatenate([x, jnp.full((x.shape[0], extra), pad_value, x.dtype)], axis=1)


@pytest.mark.parametrize("custom_vjp", [True, False], ids=["custom-vjp", "autodiff"])
@pytest.mark.parametrize("target", ["index", "probs"])
def test_softcap_keeps_a_masked_class_masked(target, custom_vjp):
    """An unpadded 3-class row and the same row with a fourth -inf class: same loss, and the
    masked class's gradient is 0."""
    x = jnp.array([[1.0, 2.0, 0.5], [-3.0, 0.0, 4.0]])
    labels = jnp.array([1, 2]) if target == "index" else jnp.array([[0.2, 0.5, 0.3], [0, 0, 1.0]])
    padded_labels = labels if target == "index" else _padded(labels, 0.0)
    options = dict(softcap=1.5, z_loss=0.01, custom_vjp=custom_vjp)
    f = lambda x, t: loss.cross_entropy(x, t, **options)
    value, grad = jax.jit(jax.value_and_grad(f))(x, labels)
    p_value, p_grad = jax.jit(jax.value_and_grad(f))(_padded(x, -jnp.inf), padded_labels)
    assert_close(p_value, value, dtype="float32", quantity="loss")
    assert_close(p_grad[:, :3], grad, dtype="float32", quantity="grad")
    assert np.all(np.asarray(p_grad[:, 3]) == 0)


@pytest.mark.parametrize("name", ["linear", "sharded"])
def test_softcap_keeps_masks_in_the_block_losses(name):
    x = jnp.array([[1.0, 2.0, 0.5, 0.0], [-3.0, 0.0, 4.0, 1.0]])
    labels = jnp.array([1, 2])
    f = lambda x: LOSSES[name](x, labels, softcap=1.5)
    value, grad = jax.jit(jax.value_and_grad(f))(x[:, :3])
    p_value, p_grad = jax.jit(jax.value_and_grad(f))(x.at[:, 3].set(-jnp.inf))
    assert_close(p_value, value, dtype="float32", quantity="loss")
    assert_close(p_grad[:, :3], grad, dtype="float32", quantity="grad")
    assert np.all(np.asarray(p_grad[:, 3]) == 0)


PAD_OPTIONS = {
    "smoothing": dict(label_smoothing=0.3),
    "everything": dict(label_smoothing=0.1, weight=True, softcap=2.0, z_loss=1e-2),
    "full-smoothing": dict(label_smoothing=1.0, weight=True),
}


def _pad_problem(key, options, classes=5, pad=3, rows=6):
    rng = seeded_rng("pad", key)
    x = rng.normal(size=(rows, classes)) * 2
    # The padding holds anything: large logits, and weights that would change the loss.
    x_pad = np.concatenate([x, np.full((rows, pad), 7.0)], axis=1)
    labels = rng.integers(0, classes, size=rows)
    labels[1] = -100
    opts = {k: v for k, v in options.items() if k != "weight"}
    weight = weight_pad = None
    if options.get("weight"):
        w = rng.uniform(0.5, 2.0, size=classes)
        weight, weight_pad = jnp.asarray(w), jnp.asarray(np.concatenate([w, np.full(pad, 3.0)]))
    return jnp.asarray(x), jnp.asarray(x_pad), jnp.asarray(labels), weight, weight_pad, opts


def _pad_program(name, option_set):
    """(program, args): value and gradients unpadded, then padded with ``num_classes``."""
    fn = LOSSES[name]
    x, x_pad, labels, w, w_pad, opts = _pad_problem((name, option_set), PAD_OPTIONS[option_set])
    args = (x, w) if w is not None else (x,)
    args_pad = (x_pad, w_pad) if w is not None else (x_pad,)
    argnums = tuple(range(len(args)))

    def f(x, w=None, **extra):
        return fn(x, labels, weight=w, **opts, **extra)

    unpadded = jax.value_and_grad(f, argnums)
    padded = jax.value_and_grad(lambda *a: f(*a, num_classes=5), argnums)
    return (lambda args, args_pad: (unpadded(*args), padded(*args_pad))), (args, args_pad)


@pytest.fixture(scope="module")
def pad_results(tmp_path_factory):
    """Every padded-vocabulary case as one program (see tests/batch.py)."""

    def compute(_):
        cases = [(n, o) for n in LOSSES for o in PAD_OPTIONS]
        return run_together({f"{n}-{o}": _pad_program(n, o) for n, o in cases})

    return shared_groups(tmp_path_factory, "padding-num-classes", compute)


@pytest.mark.parametrize("option_set", list(PAD_OPTIONS))
@pytest.mark.parametrize("name", list(LOSSES))
def test_padded_vocabulary_with_num_classes_equals_unpadded(name, option_set, pad_results):
    (value, grads), (p_value, p_grads) = result(pad_results(), f"{name}-{option_set}")
    assert_close(p_value, value, dtype="float32", quantity="loss", context=option_set)
    for got, want in zip(p_grads, grads, strict=True):
        assert_close(got[..., :5], want, dtype="float32", quantity="grad", context=option_set)
        assert np.all(np.asarray(got[..., 5:]) == 0), "padding gets no gradient"


def test_padded_probabilities_with_num_classes_equal_unpadded():
    rng = seeded_rng("pad-probs")
    x = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    t = jnp.asarray(rng.dirichlet(np.ones(5), size=4), jnp.float32)
    x_pad, t_pad = _padded(x, 9.0, 3), _padded(t, 0.0, 3)
    opts = dict(label_smoothing=0.2, softcap=3.0, weight=jnp.linspace(0.5, 2, 5))
    pad_opts = dict(opts, weight=jnp.concatenate([opts["weight"], jnp.ones(3)]), num_classes=5)
    f = lambda o: jax.jit(jax.value_and_grad(lambda x, t: loss.cross_entropy(x, t, **o), (0, 1)))
    value, (gx, gt) = f(opts)(x, t)
    p_value, (p_gx, p_gt) = f(pad_opts)(x_pad, t_pad)
    assert_close(p_value, value, dtype="float32", quantity="loss")
    assert_close(p_gx[:, :5], gx, dtype="float32", quantity="grad")
    assert_close(p_gt[:, :5], gt, dtype="float32", quantity="grad")
    assert np.all(np.asarray(p_gx[:, 5:]) == 0) and np.all(np.asarray(p_gt[:, 5:]) == 0)


def test_padding_without_num_classes_counts_in_the_smoothing():
    """The documented reason for num_classes: -inf padding alone is exact only without
    smoothing (eps / C would count the padding)."""
    x = jnp.array([[1.0, 2.0, 0.5]])
    x_pad = _padded(x, -jnp.inf)
    y = jnp.array([1])
    w_pad = jnp.array([1.0, 1.0, 1.0, 0.0])
    plain = loss.cross_entropy(x, y, label_smoothing=0.2)
    assert_close(
        loss.cross_entropy(x_pad, y), loss.cross_entropy(x, y), dtype="float32", quantity="loss"
    )
    assert (
        abs(float(loss.cross_entropy(x_pad, y, label_smoothing=0.2, weight=w_pad)) - float(plain))
        > 1e-3
    )
    assert_close(
        loss.cross_entropy(x_pad, y, label_smoothing=0.2, num_classes=3), plain,
        dtype="float32", quantity="loss",
    )  # fmt: skip


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("batch", [4, 0])
def test_zero_classes_match_torch(reduction, batch):
    """pytorch#73165: probability targets over zero classes give NaN for the mean, 0 else."""
    x = torch.zeros(batch, 0, requires_grad=True)
    want = torch.nn.functional.cross_entropy(x, torch.zeros(batch, 0), reduction=reduction)
    got = loss.cross_entropy(jnp.zeros((batch, 0)), jnp.zeros((batch, 0)), reduction=reduction)
    assert got.shape == tuple(want.shape)
    assert_close(got, want.detach().numpy(), dtype="float32", quantity="loss")
    ignored = torch.full((batch,), -100)
    want_ignored = torch.nn.functional.cross_entropy(x, ignored, reduction=reduction)
    got_ignored = loss.cross_entropy(
        jnp.zeros((batch, 0)), jnp.full(batch, -100), reduction=reduction
    )
    assert_close(got_ignored, want_ignored.detach().numpy(), dtype="float32", quantity="loss")
    grad = jax.grad(lambda x: loss.cross_entropy(x, jnp.zeros((batch, 0)), reduction="sum"))
    assert grad(jnp.zeros((batch, 0))).shape == (batch, 0)


def test_zero_classes_with_a_class_index_raise_like_torch():
    with pytest.raises(IndexError, match="out of bounds"):
        torch.nn.functional.cross_entropy(torch.zeros(4, 0), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="0 classes"):
        loss.cross_entropy(jnp.zeros((4, 0)), jnp.zeros(4, jnp.int32))


@pytest.mark.parametrize("ignore_index", [0, 2, -1, -5])
def test_ignore_index_with_probabilities_against_torch_2_13(ignore_index):
    """torch raises for ignore_index >= 0 and ignores a negative one; jaxce raises for both."""
    x, t = torch.zeros(2, 3), torch.full((2, 3), 1 / 3)
    if ignore_index >= 0:
        with pytest.raises(RuntimeError, match="ignore_index is not supported"):
            torch.nn.functional.cross_entropy(x, t, ignore_index=ignore_index)
    else:
        torch.nn.functional.cross_entropy(x, t, ignore_index=ignore_index)  # silently unused
    with pytest.raises(ValueError, match=f"ignore_index={ignore_index} applies to class indices"):
        loss.cross_entropy(jnp.zeros((2, 3)), jnp.full((2, 3), 1 / 3), ignore_index=ignore_index)
