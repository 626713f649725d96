"""The implementation under test (jaxce by default) and optax, run on a case's inputs.

``Runner`` is the one JAX-side runner of the reports (the fused linear loss subclasses it).

Both run under ``jax.jit``, the loss and its VJP of a whole group of cases in one compiled
function (see ``Runner``). The ``NdC`` layout hands over the arrays with the class axis moved
last and calls with ``axis=-1``; results come back in torch's layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from parity._cases import Case, Inputs
from parity._compare import Misbehaved
from parity._reference import Result
from parity._tolerances import numpy_dtype


def _class_last(case: Case, inputs: Inputs) -> tuple[np.ndarray, np.ndarray, int]:
    """The arrays as the implementation sees them, and the axis it is called with."""
    x, t = inputs.logits, inputs.labels
    if case.layout == "NdC":
        x = np.moveaxis(x, 1, -1)
        t = np.moveaxis(t, 1, -1) if case.target == "prob" else t
        return x, t, -1
    return x, t, (1 if case.layout == "NCd" else -1)


def _device_inputs(case: Case, inputs: Inputs):
    """numpy arrays in the case's dtype (jit takes them as they are: no per-shape transfers)."""
    dt = numpy_dtype(case.dtype)
    x, t, axis = _class_last(case, inputs)
    t = t.astype(dt) if case.target == "prob" else t.astype(np.int32)
    w = None if inputs.weight is None else inputs.weight.astype(dt)
    return x.astype(dt), t, w, np.asarray(inputs.cotangent.astype(dt)), axis


def _back_to_torch_layout(case: Case, out: Result) -> Result:
    def host(a, move):
        if a is None:
            return None
        a = np.asarray(a).astype(np.float64)  # on the host: no compilation per shape
        return np.moveaxis(a, -1, 1) if move else a

    move = case.layout == "NdC"
    return Result(
        host(out.value, False),
        host(out.grad_logits, move),
        host(out.grad_target, move and case.target == "prob"),
    )


def _static(case: Case, axis: int) -> tuple:
    """What the traced program depends on besides shapes and dtypes."""
    return (case.target, axis, case.ignore_index, case.reduction, case.smoothing)


class _Unit(NamedTuple):
    """Cases of one signature (options, shapes, dtypes): traced once, run over stacked inputs."""

    static: tuple
    positions: list[int]  # where its cases sit in the group
    args: tuple  # the call's arrays, each stacked along a new leading axis (or None)


def _units(statics: list[tuple], prepared: list[tuple]) -> list[_Unit]:
    by_signature: dict[tuple, list[int]] = {}
    for i, (static, args) in enumerate(zip(statics, prepared, strict=True)):
        avals = tuple(None if a is None else (a.shape, a.dtype.name) for a in args)
        by_signature.setdefault((static, avals), []).append(i)
    units = []
    for (static, _), positions in by_signature.items():
        stacked = tuple(
            None if prepared[positions[0]][k] is None
            else np.stack([prepared[i][k] for i in positions])
            for k in range(len(prepared[positions[0]]))
        )  # fmt: skip
        units.append(_Unit(static, positions, stacked))
    return units


def checked_call(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` for the implementation under test; what would otherwise end the
    run (``sys.exit``) or read as the harness's own error is a `Misbehaved`."""
    try:
        return fn(*args, **kwargs)
    except SystemExit as err:
        raise Misbehaved(f"called sys.exit({err.code!r})") from None
    except GeneratorExit:
        raise Misbehaved("raised GeneratorExit") from None
    except jax.errors.JAXTypeError as err:  # e.g. np.asarray of a traced array
        raise Misbehaved(
            f"cannot be traced: the runner calls it under jax.jit ({type(err).__name__})"
        ) from None


def _check_loss(out, x, axis: int, reduction: str):
    """The loss as torch's contract has it: an array of the logits' dtype, the shape of the
    examples with reduction="none", else a scalar."""
    if not isinstance(out, jax.Array):
        raise Misbehaved(f"returned a {type(out).__name__}, not a JAX array")
    want = tuple(int(d) for d in np.delete(x.shape, axis % x.ndim)) if reduction == "none" else ()
    if out.shape != want:
        raise Misbehaved(f"returned shape {out.shape} for reduction={reduction!r}, expected {want}")
    if out.dtype != x.dtype:
        raise Misbehaved(f"returned {out.dtype} for {x.dtype} logits (torch keeps their dtype)")
    return out


class Runner:
    """Runs a cross_entropy-like callable on groups of cases, one compiled program per group.

    What a case's call is lives in three methods: ``_prepare`` (the case's static options and
    its arrays), ``_one`` (the loss and its VJP on one case's arrays) and ``_back`` (the result
    in torch's layout, float64); ``parity._linear_jax.LinearRunner`` overrides them for the fused
    linear loss and shares the rest.

    XLA's fixed cost per compilation dominates small cases, so a group is traced into one
    program, and cases of one signature (the same options, shapes and dtypes) share one traced
    body, run case after case by ``lax.map`` (not vmap: each case runs the unbatched
    computation a user's call runs). float64 cases run with ``jax_enable_x64`` on, the others
    with it off (JAX's default), so each dtype sees the configuration users run it under. A
    signature whose tracing raises fails its own cases (the implementation rejected them) and
    the rest of the group still runs as one program.
    """

    def __init__(self, loss_fn: Callable):
        self._loss_fn = loss_fn
        self._compiled: dict[tuple, Callable] = {}

    def _prepare(self, case: Case, inputs: Inputs) -> tuple[tuple, tuple]:
        """(static, arrays) of a case: what its traced program depends on, and its inputs."""
        x, t, w, cot, axis = _device_inputs(case, inputs)
        return _static(case, axis), (x, t, w, cot)

    def _one(self, static: tuple, x, t, w, cot) -> Result:
        target, axis, ignore_index, reduction, smoothing = static
        kwargs = {"axis": axis, "reduction": reduction, "label_smoothing": smoothing}
        if target == "index" or ignore_index != -100:
            kwargs["ignore_index"] = ignore_index

        def loss(x, t):
            out = checked_call(self._loss_fn, x, t, weight=w, **kwargs)
            return _check_loss(out, x, axis, reduction)

        if target == "prob":
            value, vjp = jax.vjp(loss, x, t)
            gx, gt = vjp(cot)
            return Result(value, gx, gt)
        value, vjp = jax.vjp(lambda x: loss(x, t), x)
        return Result(value, vjp(cot)[0], None)

    def _back(self, case: Case, out):
        """A result as float64 numpy arrays in torch's layout."""
        return _back_to_torch_layout(case, out)

    def _unit_fn(self, static: tuple, count: int) -> Callable:
        if count == 1:
            return lambda *args: jax.tree.map(
                lambda a: a[None], self._one(static, *(None if a is None else a[0] for a in args))
            )
        return lambda *args: jax.lax.map(lambda a: self._one(static, *a), args)

    def _run(self, units: list[_Unit], x64: bool) -> list:
        key = (x64, *((u.static, len(u.positions)) for u in units))
        if key not in self._compiled:
            fns = [self._unit_fn(u.static, len(u.positions)) for u in units]
            self._compiled[key] = jax.jit(
                lambda args: [f(*a) for f, a in zip(fns, args, strict=True)]
            )
        with jax.enable_x64(x64):
            return jax.device_get(self._compiled[key]([u.args for u in units]))

    def _traces(self, unit: _Unit, x64: bool) -> Exception | None:
        """None if the unit traces, else what the implementation raised while tracing."""
        try:
            with jax.enable_x64(x64):
                jax.eval_shape(self._unit_fn(unit.static, len(unit.positions)), *unit.args)
        except Exception as err:  # the implementation under test is arbitrary code
            return err
        return None

    def run_group(self, items: list[tuple[Case, Inputs]]) -> list[Result | Exception]:
        """Results in torch's layout, or the exception a case raised."""
        out: list[Result | Exception | None] = [None] * len(items)
        for x64 in (False, True):
            positions = [i for i, (c, _) in enumerate(items) if (c.dtype == "float64") == x64]
            if positions:
                sub = [items[i] for i in positions]
                for i, o in zip(positions, self._run_same_x64(sub, x64), strict=True):
                    out[i] = o
        return [
            o if isinstance(o, Exception) else self._back(case, o)
            for (case, _), o in zip(items, out, strict=True)
        ]

    def _run_same_x64(self, items, x64: bool) -> list:
        prepared = [self._prepare(case, inputs) for case, inputs in items]
        units = _units([p[0] for p in prepared], [p[1] for p in prepared])
        out: list = [None] * len(items)
        try:
            results = self._run(units, x64)
        except Exception:  # find the signatures the implementation rejects; run the rest
            failed = {id(u): self._traces(u, x64) for u in units}
            good = [u for u in units if failed[id(u)] is None]
            for u in units:
                for i in u.positions:
                    out[i] = failed[id(u)]
            results = self._run_each(good, x64)
            units = good
        for unit, result in zip(units, results, strict=True):
            if isinstance(result, Exception):
                for i in unit.positions:
                    out[i] = result
                continue
            for k, i in enumerate(unit.positions):
                out[i] = jax.tree.map(lambda a, k=k: a[k], result)
        return out

    def _run_each(self, units: list[_Unit], x64: bool) -> list:
        """The units that trace, together; if that still fails (at run time), one by one."""
        if not units:
            return []
        try:
            return self._run(units, x64)
        except Exception:
            results = []
            for u in units:
                try:
                    results.append(self._run([u], x64)[0])
                except Exception as err:  # the implementation under test is arbitrary code
                    results.append(err)
            return results


def optax_supports(case: Case) -> bool:
    """optax has no class weights, no ignore_index and no smoothing of integer labels."""
    no_smoothing = case.target == "prob" or case.smoothing == 0.0
    return not case.weight and case.ignore == "none" and case.ignore_index == -100 and no_smoothing


def optax_cross_entropy(
    logits,
    labels,
    *,
    axis=-1,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
):
    """optax's per-example losses with the reduction computed around them (supported cases)."""
    del weight, ignore_index  # optax_supports() keeps cases that use them away
    x = jnp.moveaxis(logits, axis, -1)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        per_example = optax.softmax_cross_entropy_with_integer_labels(x, labels)
    else:
        t = jnp.moveaxis(labels, axis, -1)
        t = optax.smooth_labels(t, label_smoothing) if label_smoothing else t
        per_example = optax.softmax_cross_entropy(x, t)
    if reduction == "none":
        return per_example
    return jnp.sum(per_example) if reduction == "sum" else jnp.mean(per_example)
