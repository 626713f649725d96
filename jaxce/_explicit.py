"""Inputs sharded over explicit mesh axes: the losses run in auto mode over those axes.

``jax.make_mesh`` makes ``AxisType.Explicit`` axes by default. An array sharded over one carries
its sharding in its type, and every operation on it must then have an unambiguous output
sharding, which a gather of class weights at sharded labels or the fused loss's dynamic row
slices do not have. Rather than spell shardings out operation by operation, ``call`` runs a
loss's compiled function under ``jax.sharding.auto_axes`` over the explicit axes its inputs
carry, so XLA partitions it as in auto mode, and states the outputs' shardings: a reduced loss
replicated, per-example losses sharded as the examples are. Gradients come back sharded as
their inputs. The same holds inside ``jax.sharding.set_mesh`` with explicit axes, whatever the
inputs' own types. Otherwise (auto mode, one device, inside ``shard_map``) the call is plain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P


def _explicit(arrays: Sequence) -> tuple[object, tuple[str, ...]] | None:
    """The mesh and explicit axis names of the first array whose type has any, else of the
    context mesh (``jax.sharding.set_mesh``: new arrays made inside the loss take its axes),
    else None."""
    meshes = [jax.typeof(a).sharding.mesh for a in arrays if isinstance(a, jax.Array)]
    distinct = {m for m in meshes if AxisType.Explicit in m.axis_types}
    if len(distinct) > 1:
        raise ValueError(
            f"the arrays given to one loss must be on one mesh; got arrays on {len(distinct)} "
            f"meshes ({'; '.join(sorted(map(str, distinct)))}). Put them on the same mesh, "
            f"e.g. with jax.device_put or jax.sharding.reshard."
        )
    for mesh in (*meshes, jax.sharding.get_abstract_mesh()):
        names = tuple(
            name
            for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
            if kind == AxisType.Explicit
        )
        if names:
            return mesh, names
    return None


def examples_spec(array, drop: Sequence[int] = ()) -> P:
    """``array``'s partition spec, one entry per axis, without the axes in ``drop``."""
    if not isinstance(array, jax.Array):
        return P()
    spec = tuple(jax.typeof(array).sharding.spec)
    spec += (None,) * (array.ndim - len(spec))
    return P(*(entry for i, entry in enumerate(spec) if i not in drop))


def call(fn: Callable, args: Sequence, out_spec: P | Callable[[], P]):
    """``fn(*args)``; under ``auto_axes`` with output sharding ``out_spec`` if an input has
    explicit mesh axes. ``out_spec`` may be a function, called only then."""
    found = _explicit(args)
    if found is None:
        return fn(*args)
    mesh, names = found
    spec = out_spec() if callable(out_spec) else out_spec
    auto = jax.sharding.auto_axes(fn, axes=names, out_sharding=NamedSharding(mesh, spec))
    return auto(*args)
