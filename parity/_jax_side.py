"""The implementation under test (jaxce by default) and optax, run on a case's inputs.

Both run under ``jax.jit``, the loss and its VJP of a whole group of cases in one compiled
function. The ``NdC`` layout hands over the arrays with the class axis moved last and calls
with ``axis=-1``; results come back in torch's layout.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from parity._cases import Case, Inputs
from parity._reference import Result
from parity._tolerances import numpy_dtype

DEFAULT_IMPL = "jaxce.loss:cross_entropy"


def load_impl(spec: str) -> Callable:
    """Imports ``MODULE:FUNCTION``; raises ValueError naming the spec when it does not resolve."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(
            f"--impl must look like MODULE:FUNCTION (e.g. {DEFAULT_IMPL}); got {spec!r}."
        )
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--impl {spec!r} does not resolve: {err}") from err
    if not callable(fn):
        raise ValueError(f"--impl {spec!r} is a {type(fn).__name__}, not a function.")
    return fn


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


class Runner:
    """Runs a cross_entropy-like callable on groups of cases, one jit per group.

    XLA's fixed cost per compilation dominates small cases, so a group of cases is traced into
    one program (the cases stay independent: separate inputs, separate outputs). If the group
    raises, each case is retried on its own, so the error lands on the case that caused it.
    """

    def __init__(self, loss_fn: Callable):
        self._loss_fn = loss_fn
        self._compiled: dict[tuple, Callable] = {}

    def _one(self, static: tuple, x, t, w, cot) -> Result:
        target, axis, ignore_index, reduction, smoothing = static
        kwargs = {"axis": axis, "reduction": reduction, "label_smoothing": smoothing}
        if target == "index":
            kwargs["ignore_index"] = ignore_index

        def loss(x, t):
            return self._loss_fn(x, t, weight=w, **kwargs)

        if target == "prob":
            value, vjp = jax.vjp(loss, x, t)
            gx, gt = vjp(cot)
            return Result(value, gx, gt)
        value, vjp = jax.vjp(lambda x: loss(x, t), x)
        return Result(value, vjp(cot)[0], None)

    def _run(self, statics: tuple, args: list) -> list[Result]:
        if statics not in self._compiled:
            self._compiled[statics] = jax.jit(
                lambda args: [self._one(st, *a) for st, a in zip(statics, args, strict=True)]
            )
        return jax.device_get(self._compiled[statics](args))

    def run_group(self, items: list[tuple[Case, Inputs]]) -> list[Result | Exception]:
        """Results in torch's layout, or the exception a case raised."""
        prepared = [_device_inputs(case, inputs) for case, inputs in items]
        statics = tuple(_static(case, p[4]) for (case, _), p in zip(items, prepared, strict=True))
        try:
            outs = self._run(statics, [p[:4] for p in prepared])
        except Exception:  # find the culprit(s): retry one by one
            outs = []
            for static, p in zip(statics, prepared, strict=True):
                try:
                    outs.append(self._run((static,), [p[:4]])[0])
                except Exception as err:  # the implementation under test is arbitrary code
                    outs.append(err)
        return [
            o if isinstance(o, Exception) else _back_to_torch_layout(case, o)
            for (case, _), o in zip(items, outs, strict=True)
        ]


def optax_supports(case: Case) -> bool:
    """optax has no class weights, no ignore_index and no smoothing of integer labels."""
    no_smoothing = case.target == "prob" or case.smoothing == 0.0
    return not case.weight and case.ignore == "none" and case.ignore_index < 0 and no_smoothing


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
