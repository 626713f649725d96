"""The value of a loss and its VJP, compiled as one program (the tests' shared helper)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _with_vjp(fn: Callable[[dict], jax.Array]) -> Callable:
    """``(diff, rest, cotangent) -> (fn({**rest, **diff}), its VJP w.r.t. diff)``; a scalar
    value takes the cotangent's first entry."""

    def program(diff, rest, cotangent):
        out, vjp = jax.vjp(lambda d: fn({**rest, **d}), diff)
        ct = (cotangent if out.ndim else jnp.ravel(cotangent)[0]).astype(out.dtype)
        return out, vjp(ct)[0]

    return program


def vjp_program(fn: Callable[[dict], jax.Array], diff: dict, rest: dict, cotangent):
    """``(program, args)``: ``program(*args)`` is ``fn({**rest, **diff})`` and its VJP with
    respect to ``diff`` for ``cotangent`` (a scalar value takes the cotangent's first entry),
    for `value_and_vjp` to compile alone or `tests.batch.run_together` with other cases."""
    return _with_vjp(fn), (diff, rest, jnp.asarray(cotangent))


def vjp_programs(fns: tuple[Callable[[dict], jax.Array], ...], diff: dict, rest: dict, cotangent):
    """``(program, args)`` like `vjp_program`, for several functions of the same inputs:
    ``program(*args)`` is the tuple of each function's value and VJP (e.g. a loss and its
    reference, compared)."""
    programs = [_with_vjp(fn) for fn in fns]
    return (lambda *args: tuple(p(*args) for p in programs)), (diff, rest, jnp.asarray(cotangent))


def value_and_vjp(fn: Callable[[dict], jax.Array], diff: dict, rest: dict, cotangent):
    """``fn({**rest, **diff})`` and its VJP with respect to ``diff`` for ``cotangent``.

    One compiled program (jit), not the operations one by one: the suite's many small cases
    spend their time compiling. A scalar value takes the cotangent's first entry.
    """
    program, args = vjp_program(fn, diff, rest, cotangent)
    return jax.jit(program)(*args)
