"""The row reductions of the loss along the class axis, and the one switch to XLA:CPU's forms.

``row_stats(xs, axis)`` returns ``m = max(xs)`` (``row_max``: finite for a row of only -inf) and
``lse0 = log(sum(exp(xs - m)))``, both with the class axis kept at size 1;
``softmax(s, lse0, axis)`` rebuilds ``exp(s - lse0)`` from them in the backward pass;
``shifted_sum`` (label smoothing) and ``target_sum`` (probability targets) are the other row
sums of the forward pass, ``target_value`` a probability-target loss value alone. Here they are
written in their textbook form.

On XLA:CPU the same quantities run several times faster in the forms of ``jaxce._xla_cpu``
(rows split into parts; an exponential shared between forward and backward, which
``shared_row_stats`` asks for where the gradient follows). ``_by_backend``
is the only place that chooses: on a CPU backend it picks the CPU form (through
``lax.platform_dependent``, so a program lowered for GPU or TPU holds only the textbook form),
everywhere else the textbook one.

Switch: set the environment variable ``JAXCE_XLA_CPU_FORMS=0`` to use the textbook forms on
CPU too (``1``, the default, uses the CPU forms). It is read when a loss is traced, and jit
caches traces, so set it before the first call in a process. Deleting the CPU workaround is
deleting ``jaxce/_xla_cpu.py`` and ``_by_backend``.

Autodiff: ``row_stats`` and ``target_sum`` carry a ``jax.custom_jvp`` with the textbook
derivatives (``d lse0 = sum(softmax * d xs)``, ``m`` a constant shift), so plain autodiff
(``cross_entropy(..., custom_vjp=False)``, every mode and order) differentiates the math, not
the form that computes it: no per-part exponentials are saved, and forward and reverse mode
cost what the custom VJP costs.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxce import _xla_cpu

CPU_FORMS_VARIABLE = "JAXCE_XLA_CPU_FORMS"


def xla_cpu_forms_enabled() -> bool:
    """Whether a CPU backend runs the forms of ``jaxce._xla_cpu`` (``JAXCE_XLA_CPU_FORMS``)."""
    value = os.environ.get(CPU_FORMS_VARIABLE, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(
            f"{CPU_FORMS_VARIABLE} must be 1 (XLA:CPU's fast forms, the default) or 0 (the "
            f"textbook forms on every backend); got {value!r}. Unset it or set it to 0 or 1."
        )
    return value == "1"


def _by_backend(cpu_form, textbook_form, *args):
    """The one switch: ``cpu_form(*args)`` on a CPU backend when enabled, else the textbook."""
    if not xla_cpu_forms_enabled():
        return textbook_form(*args)
    return lax.platform_dependent(*args, cpu=cpu_form, default=textbook_form)


def row_max(xs: jax.Array, axis: int) -> jax.Array:
    """The maximum along ``axis`` (kept at size 1), at least the dtype's lowest finite value.

    A row of only -inf gets that finite shift, so ``xs - m`` is -inf there, not NaN. It is
    the reduction's initial value, not a select after it: XLA:CPU then fuses the maximum, the
    sum of exp and what follows into one kernel (a select on the maximum splits them).
    """
    return jnp.max(xs, axis=axis, keepdims=True, initial=jnp.finfo(xs.dtype).min)


def textbook_row_stats(xs: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    m = row_max(xs, axis)
    return m, jnp.log(jnp.sum(jnp.exp(xs - m), axis=axis, keepdims=True))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def row_stats(xs: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """(m, lse0) of ``xs`` along ``axis``, both with ``axis`` kept at size 1, for a loss value."""
    return _by_backend(
        functools.partial(_xla_cpu.row_stats, axis=axis, textbook=textbook_row_stats),
        functools.partial(textbook_row_stats, axis=axis),
        xs,
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def shared_row_stats(xs: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """``row_stats`` where the gradient follows in the same program (``softmax`` of them).

    The same values; the CPU form writes ``exp(xs - m)`` once for the forward's sum and the
    backward's ``softmax`` (``row_stats``, for a value alone, does not write it).
    """
    return _by_backend(
        functools.partial(_xla_cpu.shared_row_stats, axis=axis),
        functools.partial(textbook_row_stats, axis=axis),
        xs,
    )


def _row_stats_jvp(axis, primals, tangents):
    """Both forms' derivative: ``d lse0 = sum(softmax * d xs)``, ``m`` a constant shift."""
    (xs,), (dxs,) = primals, tangents
    m, lse0 = shared_row_stats(xs, axis)
    d_lse0 = jnp.sum(softmax(xs - m, lse0, axis) * dxs, axis=axis, keepdims=True)
    return (m, lse0), (jnp.zeros_like(m), d_lse0)


row_stats.defjvp(_row_stats_jvp)
shared_row_stats.defjvp(_row_stats_jvp)


def capped_row_stats(logits: jax.Array, xs: jax.Array, cap, axis: int, *, shared: bool = False):
    """``row_stats(xs, axis)`` for ``xs = cap(logits)`` with ``cap`` non-decreasing (softcap).

    Off CPU the maximum is taken of the raw logits, ``m = cap(max(logits))`` (equal to
    ``max(xs)``, as ``cap`` keeps the order), so the capped logits feed one reduction, the sum
    of exp, into which XLA fuses them; shared by two reductions, XLA:GPU writes them out as an
    (N, C) float32 temporary (``cap`` holds a tanh, which XLA does not duplicate). ``m`` is a
    constant shift (no gradient), as in ``row_stats``. ``shared``: ``shared_row_stats`` on CPU.
    """

    def textbook(logits, xs):
        m = cap(lax.stop_gradient(row_max(logits, axis)))
        return m, jnp.log(jnp.sum(jnp.exp(xs - m), axis=axis, keepdims=True))

    on_cpu = shared_row_stats if shared else row_stats
    return _by_backend(lambda logits, xs: on_cpu(xs, axis), textbook, logits, xs)


def fresh(x: jax.Array, *tag: jax.Array) -> jax.Array:
    """``x``, hidden from common-subexpression elimination off CPU (tagged: one per use).

    What is computed from it is recomputed, not shared with another use of ``x``: off CPU, a
    soft-capped copy of the logits shared by two kernels is an (N, C) float32 temporary. On
    CPU the forms of ``jaxce._xla_cpu`` share on purpose, so it is ``x`` itself there.
    """
    return _by_backend(
        lambda x, *tag: x, lambda x, *tag: lax.optimization_barrier((x, *tag))[0], x, *tag
    )


def softmax(s: jax.Array, lse0: jax.Array, axis: int) -> jax.Array:
    """``exp(s - lse0)`` from the shifted logits ``s = xs - m`` and ``lse0`` of ``row_stats``."""
    return _by_backend(
        functools.partial(_xla_cpu.softmax, axis=axis), lambda s, lse0: jnp.exp(s - lse0), s, lse0
    )


def shifted_sum(xs: jax.Array, m: jax.Array, axis: int) -> jax.Array:
    """``sum(xs - m)`` along ``axis`` (reduced away), ``m`` a row term of ``row_stats``."""
    return _by_backend(
        functools.partial(_xla_cpu.shifted_sum, axis=axis),
        lambda xs, m: jnp.sum(xs - m, axis=axis),
        xs,
        m,
    )


def target_value(q: jax.Array, logits: jax.Array, axis: int, *, cap, default) -> jax.Array:
    """``sum_c q_c (lse0 - s_c)`` per row (the class axis reduced away) of ``cap(logits)``
    for targets ``q``, with 0 where ``q_c`` is 0 and the logit -inf: a loss value alone.

    ``default(q, logits)`` computes it from the row statistics (off CPU, and on CPU where
    XLA:CPU's one-pass form does not apply). Not for differentiation: the custom VJPs never
    differentiate it, and plain autodiff runs ``default`` itself.
    """
    cpu = functools.partial(_xla_cpu.target_value, axis=axis, cap=cap, fallback=default)
    return _by_backend(cpu, default, q, logits)


def _guarded_shift(q: jax.Array, xs: jax.Array, m: jax.Array) -> jax.Array:
    """``xs - m`` with 0 where ``q`` is 0 and the logit -inf, so that ``q * s`` is 0 there."""
    s = xs - m
    return jnp.where((q == 0) & (s == -jnp.inf), 0, s)


def guarded_target_sum(q, xs, m, axis):
    return jnp.sum(q * _guarded_shift(q, xs, m), axis=axis, keepdims=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def target_sum(q: jax.Array, xs: jax.Array, m: jax.Array, axis: int) -> jax.Array:
    """``sum(q * (xs - m))`` along ``axis`` (kept), with ``0 * -inf = 0`` (no mass, masked)."""
    guarded = functools.partial(guarded_target_sum, axis=axis)
    cpu = functools.partial(_xla_cpu.target_sum, axis=axis, guarded=guarded)
    return _by_backend(cpu, guarded, q, xs, m)


def _target_sum_jvp(axis, primals, tangents):
    (q, xs, m), (dq, dxs, dm) = primals, tangents
    out = target_sum(q, xs, m, axis)
    d_out = jnp.zeros_like(out)
    if not isinstance(dq, SymbolicZero):
        d_out = d_out + jnp.sum(dq * _guarded_shift(q, xs, m), axis=axis, keepdims=True)
    if not isinstance(dxs, SymbolicZero):
        d_out = d_out + jnp.sum(q * dxs, axis=axis, keepdims=True)
    if not isinstance(dm, SymbolicZero):
        d_out = d_out - jnp.sum(q, axis=axis, keepdims=True) * dm
    return out, d_out


target_sum.defjvp(_target_sum_jvp, symbolic_zeros=True)
