"""The fused linear loss's two custom VJPs: reduced to a scalar, and per example.

``reduced``: ``sum(s * loss) / divisor`` ("mean" and "sum"), with ``s`` the sample weights
(1 without them). Its cotangent is a scalar, so the forward rule runs the sweep once with the
examples' cotangent ``s / divisor`` and keeps the finished gradients (three matmuls, the
residuals being the gradients themselves); the backward rule only scales them by ``g``
(exact for ``g = 1``). The primal alone, undifferentiated, is the forward sweep (one matmul).
The divisor (the summed weight of the kept examples, or the caller's) is part of the function,
so the gradients w.r.t. class and sample weights include its dependence on them.

``per_example``: the losses themselves ("none"). The forward rule keeps only its inputs; the
backward rule runs the sweep with the per-example cotangent (the logits once more, then the
two gradient matmuls).

Both use ``symbolic_zeros``: gradients nobody asked for (a frozen kernel, integer labels, a
bias held constant) are never formed.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxce import _linear_classes, _linear_sweep
from jaxce import _row_math as rm
from jaxce._linear_sweep import Needs, compute_dtype, sweep
from jaxce._vma import all_varying, sum_to_axes, sum_to_type


def _gradients(static, *arrays_and_g, needs):
    """The sweep that forms gradients: over class chunks where the call was found to suit it
    (``static.class_sweep_chunk``), else over row chunks."""
    if static.class_sweep_chunk:
        return _linear_classes.sweep(static, *arrays_and_g, needs)
    return _linear_sweep.sweep(static, *arrays_and_g, needs)


def _values(args):
    return [None if a is None else a.value for a in args]


def _needs(static, hidden, kernel, bias, labels, weight) -> Needs:
    perturbed = lambda a: a is not None and a.perturbed
    return Needs(
        perturbed(hidden), perturbed(kernel), perturbed(bias), perturbed(weight),
        static.soft and perturbed(labels),
    )  # fmt: skip


def _scale(cotangent, g, dtype):
    """``g * cotangent`` in ``dtype`` (the multiplication in the compute dtype)."""
    if cotangent is None:
        return None
    ct = rm.compute_dtype(cotangent.dtype)
    return (g.astype(ct) * cotangent.astype(ct)).astype(dtype)


def example_weights(static, labels, weight, keep, sample_weight, ct):
    """Each example's share of the mean's divisor: ``w_y * s`` if kept, else 0."""
    share = keep.astype(ct)
    if not static.soft:
        share = rm.label_weight(weight, labels, labels >= 0, ct)
    if sample_weight is not None:
        share = share * sample_weight.astype(ct)
    return jnp.where(keep, share, 0)


def _divisor(static, mean, labels, weight, keep, sample_weight, divisor, ct):
    if not mean:
        return jnp.ones((), ct)
    if divisor is not None:
        return divisor.astype(ct)
    return jnp.sum(example_weights(static, labels, weight, keep, sample_weight, ct))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def reduced(static, mean, hidden, kernel, bias, labels, weight, keep, sample_weight, divisor):
    """``sum(sample_weight * loss) / divisor`` ("sum": divisor 1) in the compute dtype."""
    ct = compute_dtype(static, hidden, kernel, bias, labels)
    losses, _ = sweep(static, hidden, kernel, bias, labels, weight, keep)
    total = jnp.sum(losses if sample_weight is None else losses * sample_weight.astype(ct))
    div = _divisor(static, mean, labels, weight, keep, sample_weight, divisor, ct)
    return rm.divide(total, div)  # a mean over no weight is NaN, as differentiated


def _reduced_fwd(static, mean, *args):
    # inside shard_map, per-device gradients throughout; each summed to its primal's type once
    values, axes = all_varying(_values(args))
    hidden, kernel, bias, labels, weight, keep, sample_weight, divisor = values
    needs = _needs(static, *args[:5])
    ct = compute_dtype(static, hidden, kernel, bias, labels)

    def divisor_of(weight, sample_weight, divisor):
        return _divisor(static, mean, labels, weight, keep, sample_weight, divisor, ct)

    div, div_vjp = jax.vjp(divisor_of, weight, sample_weight, divisor)
    s = jnp.ones(keep.shape, ct) if sample_weight is None else sample_weight.astype(ct)
    # a mean over no weight is NaN, its gradients too (1 / 0 would make some of them inf)
    per_div = rm.nan_at_zero(div) / div
    losses, grads = _gradients(
        static, hidden, kernel, bias, labels, weight, keep, s * per_div, needs=needs
    )
    loss = jnp.sum(losses * s) * per_div
    # through the divisor (typed as it: a divisor that varies over no axis is a constant)
    d_weight, d_sample, d_divisor = div_vjp(sum_to_type(-loss / div, div))
    if grads.weight is not None:
        d_weight = grads.weight + d_weight.astype(grads.weight.dtype)
    d_sample = None if sample_weight is None else d_sample + losses / div
    res = (
        grads.hidden,
        None if grads.kernel is None else grads.kernel.astype(kernel.dtype),
        grads.bias,
        grads.labels,
        d_weight if needs.weight else None,
        d_sample if args[6] is not None and args[6].perturbed else None,
        d_divisor if args[7] is not None and args[7].perturbed else None,
    )
    # A gradient nobody asked for is a placeholder, not None, where its input exists: JAX (0.10)
    # reuses a jitted call's forward rule traced for other perturbed inputs after jax.checkpoint,
    # and a residual count that follows the perturbed inputs then fails inside JAX.
    inputs = (*args[:5], *args[6:])
    res = tuple(
        _unused() if r is None and a is not None else r for r, a in zip(res, inputs, strict=True)
    )
    primal_axes = (*axes[:5], *axes[6:])  # of the inputs with a gradient (not keep)
    return loss, _Gradients(res, primal_axes)


def _unused() -> jax.Array:
    """The placeholder of a gradient not formed: bool, which no gradient is."""
    return jnp.zeros((0,), jnp.bool_)


def _formed(r) -> bool:
    return r is not None and r.dtype != jnp.bool_


@functools.partial(jax.tree_util.register_dataclass, data_fields=["grads"], meta_fields=["axes"])
@dataclasses.dataclass(frozen=True)
class _Gradients:
    """The finished gradients, and the mesh axes each one's primal varies over (shard_map)."""

    grads: tuple
    axes: tuple


def _reduced_bwd(static, mean, res, g):
    scaled = [
        sum_to_axes(_scale(r, g, r.dtype), axes) if _formed(r) else None
        for r, axes in zip(res.grads, res.axes, strict=True)
    ]
    d_hidden, d_kernel, d_bias, d_labels, d_weight, d_sample, d_divisor = scaled
    return d_hidden, d_kernel, d_bias, d_labels, d_weight, None, d_sample, d_divisor


reduced.defvjp(_reduced_fwd, _reduced_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def per_example(static, hidden, kernel, bias, labels, weight, keep):
    """The per-example losses (N[, P]) in the compute dtype."""
    return sweep(static, hidden, kernel, bias, labels, weight, keep)[0]


# Which gradients to form travels as data, in the shapes of empty marks ((1,): form it), not
# as static metadata of the residuals: after eager gradients for two different sets of inputs,
# JAX (0.10) ran `grad(jit(f))` with residuals whose static fields came from an earlier
# trace, and the gradients asked for were silently never formed (all zeros).
def _marks(needs: Needs) -> tuple:
    return tuple(jnp.zeros((int(n),), jnp.bool_) for n in needs)


def _per_example_fwd(static, *args):
    values = _values(args)
    losses = sweep(static, *values)[0]
    return losses, (tuple(values), _marks(_needs(static, *args[:5])))


def _per_example_bwd(static, saved, g):
    arrays, marks = saved
    needs = Needs(*(m.shape[0] == 1 for m in marks))
    (*arrays, g), axes = all_varying((*arrays, g))  # per-device, as in _reduced_fwd
    hidden, kernel, bias, labels, weight, keep = arrays
    grads = _gradients(static, hidden, kernel, bias, labels, weight, keep, g, needs=needs)[1]
    d_kernel = None if grads.kernel is None else grads.kernel.astype(kernel.dtype)
    out = (grads.hidden, d_kernel, grads.bias, grads.labels, grads.weight)
    typed = (None if d is None else sum_to_axes(d, a) for d, a in zip(out, axes[:5], strict=True))
    return (*typed, None)


per_example.defvjp(_per_example_fwd, _per_example_bwd, symbolic_zeros=True)
