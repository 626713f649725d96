"""Checks of ``sharded_cross_entropy``'s mesh axis, and of which inputs vary over it.

Inside ``jax.shard_map`` (``check_vma=True``) JAX types every value with the mesh axes it
varies over. The sharded loss needs its logits and class weights split over ``mesh_axis``
(each device holds some classes) and its labels and ``where`` mask the same on every device
of it (each device holds the same examples); a wrong split is a wrong loss, so each is refused
before any work, with the ``in_specs`` entry that fixes it.
"""

from __future__ import annotations

import jax
from jax import lax

from jaxce._vma import varying_axes


def check_mesh_axis(mesh_axis, logits) -> int:
    names = names_of(mesh_axis)
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(
            f"mesh_axis must be a mesh axis name (str) or a non-empty tuple of names; got "
            f"{mesh_axis!r}."
        )
    if len(set(names)) < len(names):
        raise ValueError(
            f"mesh_axis must name each mesh axis once; got {mesh_axis!r}. Pass "
            f"{tuple(dict.fromkeys(names))!r}."
        )
    try:
        size = lax.axis_size(mesh_axis)
    except NameError as err:
        raise ValueError(
            f"sharded_cross_entropy(mesh_axis={mesh_axis!r}) must run inside jax.shard_map "
            f"over a mesh with axis {mesh_axis!r}, with the logits' class axis split over it "
            f"({err}). Outside shard_map, use cross_entropy."
        ) from None
    if not_varying(logits, names):
        why = (
            f" With check_vma=False, JAX splits the loss's cotangent over the {size} devices "
            f"and the gradient would come out {size} times too small."
            if size > 1
            else ""
        )
        raise ValueError(
            f"logits_shard must vary over mesh_axis={mesh_axis!r} (its class axis split "
            f"over it, e.g. in_specs=P(None, {mesh_axis!r})), and jax.shard_map must keep "
            f"check_vma=True (the default); got a value of type {jax.typeof(logits)}.{why}"
        )
    return size


def check_varying_weight(weight, mesh_axis) -> None:
    """A ValueError if ``weight`` is the same on every device of ``mesh_axis``: each device's
    weights are those of its own classes, so one replicated vector would weigh every shard's
    classes alike (a wrong loss, silently)."""
    if isinstance(weight, jax.Array) and not_varying(weight, names_of(mesh_axis)):
        raise ValueError(
            f"weight must vary over mesh_axis={mesh_axis!r}: each device passes the weights of "
            f"its own classes; got a value of type {jax.typeof(weight)}, the same on every "
            f"device. Shard the class weights like the logits' class axis "
            f"(in_specs=P({mesh_axis!r})), or, for a vector made inside the function that is "
            f"meant per shard, mark it with jax.lax.pcast(weight, {mesh_axis!r}, to='varying')."
        )


def check_rows_follow_labels(logits, labels, mesh_axis) -> None:
    """A ValueError if the logits vary over a mesh axis that neither ``mesh_axis`` names nor
    the labels vary over: split over it, the class axis would be cut in pieces the loss
    never joins (each group of devices taking its classes for the whole vocabulary), a wrong
    loss, silently. Rows split over a data axis vary there with their labels."""
    if not isinstance(labels, jax.Array):
        return
    extra = varying_axes(logits) - set(names_of(mesh_axis)) - varying_axes(labels)
    if extra:
        raise ValueError(
            f"logits_shard varies over mesh axes {sorted(extra)} that neither mesh_axis="
            f"{mesh_axis!r} names nor the labels vary over; got logits of type "
            f"{jax.typeof(logits)} and labels of type {jax.typeof(labels)}. If the class axis "
            f"is split over them too, name every axis it is split over in mesh_axis, in the "
            f'order of the logits\' in_specs entry (e.g. mesh_axis=("data", "model") for '
            f'P(None, ("data", "model"))); if the rows are, split the labels over them too.'
        )


def names_of(mesh_axis) -> tuple:
    return mesh_axis if isinstance(mesh_axis, tuple) else (mesh_axis,)


def not_varying(array, names: tuple) -> bool:
    """Whether JAX tracks ``array``'s varying axes (``check_vma``) and they miss some of
    ``names``."""
    aval = jax.typeof(array)
    tracked = hasattr(aval, "mat") or hasattr(aval, "vma")
    return tracked and not set(names) <= varying_axes(array)


def check_replicated(array, name: str, mesh_axis) -> None:
    """A ValueError if ``array`` varies over ``mesh_axis`` (JAX tracks it with check_vma)."""
    tracked = isinstance(array, jax.Array)
    varying = set(names_of(mesh_axis)) & varying_axes(array) if tracked else set()
    if varying:
        raise ValueError(
            f"{name} must be the same on every device of mesh_axis={mesh_axis!r} (each device "
            f"holds some classes of the same examples); got a value of type "
            f"{jax.typeof(array)}, varying over {sorted(varying)}. Leave {sorted(varying)} out "
            f"of {name}'s in_specs entry (e.g. P() or P('data'))."
        )
