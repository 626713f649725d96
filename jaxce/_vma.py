"""Cotangents inside ``jax.shard_map`` (``check_vma=True``): typed as their primals.

Inside ``shard_map`` JAX records which mesh axes a value varies over. An input replicated over
a data axis (class weights, a kernel) that meets per-device rows is implicitly broadcast, and
autodiff transposes that broadcast into a sum over the axis. A custom VJP must do the same
itself: its backward rule returns each cotangent with its primal's type, else JAX refuses it.
"""

from __future__ import annotations

import jax
from jax import lax


def varying_axes(x) -> frozenset:
    """The mesh axes ``x`` varies over inside shard_map (empty outside, or with check_vma off)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)
    return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def axes_of(*arrays) -> frozenset:
    """The mesh axes any of ``arrays`` (None skipped) varies over."""
    return frozenset().union(*(varying_axes(a) for a in arrays if a is not None))


def sum_to_type(cotangent, primal):
    """``cotangent`` summed over the mesh axes it varies over and ``primal`` does not (the
    transpose of the implicit broadcast); unchanged outside shard_map. None stays None."""
    return None if cotangent is None else sum_to_axes(cotangent, varying_axes(primal))


def sum_to_axes(cotangent, axes: frozenset):
    """``cotangent`` summed over the mesh axes it varies over beyond ``axes`` (a primal's)."""
    extra = varying_axes(cotangent) - axes
    return lax.psum(cotangent, tuple(sorted(extra))) if extra else cotangent


def vary_over(x, axes: frozenset):
    """``x`` typed as varying over ``axes`` too (JAX's implicit broadcast, made explicit)."""
    if x is None:
        return None
    extra = axes - varying_axes(x)
    return lax.pcast(x, tuple(sorted(extra)), to="varying") if extra else x


def all_varying(arrays) -> tuple[tuple, tuple]:
    """``(arrays varying over every axis any of them does, each one's own axes)``: a custom
    VJP computes per-device cotangents from the first and sums each to its primal's axes once
    (``sum_to_axes``), however the computation mixes replicated and per-device inputs."""
    axes = tuple(frozenset() if a is None else varying_axes(a) for a in arrays)
    every = frozenset().union(*axes)
    return tuple(vary_over(a, every) for a in arrays), axes
