"""One call of the fused linear loss, in either kernel layout: checks, then the compiled work.

``linear_loss`` serves ``linear_cross_entropy`` (kernel (D, C, *out_features), as a Flax
``Linear`` kernel) and ``torch_linear_cross_entropy`` (torch's ``linear_weight``
(C, *out_features, D)). It checks every static property once, with errors naming the
argument, the value got and the fix, then flattens the batch to N rows and the
``out_features`` to P positions and runs ``jaxce._linear_vjp`` under ``jit``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxce import _explicit, _labels, _options, _validation, _weighting
from jaxce import _linear_classes as lc
from jaxce import _linear_sweep as ls
from jaxce import _row_math as rm
from jaxce._linear_vjp import per_example, reduced


class Shapes(NamedTuple):
    batch: tuple[int, ...]  # hidden.shape[:-1]
    columns: int  # the kernel's class axis (padding included)
    out_features: tuple[int, ...]  # torch's K-dimensional positions
    soft: bool  # labels are probabilities

    @property
    def examples(self) -> tuple[int, ...]:
        return self.batch + self.out_features


def check_arrays(hidden, kernel, labels, *, torch_layout: bool, names) -> Shapes:
    """Dtypes and shapes of hidden (..., D), the kernel and the labels (indices or probs)."""
    h_name, k_name, y_name = names
    _validation.check_floating(hidden, h_name)
    _validation.check_floating(kernel, k_name)
    if hidden.ndim == 0:
        raise ValueError(f"{h_name} must have shape (..., D) with D features; got a scalar.")
    for array, name in ((hidden, h_name), (kernel, k_name)):
        symbolic = [d for d in array.shape if not isinstance(d, int)]
        if symbolic:  # jax.export shape polymorphism
            raise ValueError(
                f"{name} must have a static shape: the fused loss fixes its row and class "
                f"chunks when traced; got the symbolic dimension {symbolic[0]} in "
                f"{array.shape}. Export it with concrete shapes, or use cross_entropy on the "
                "logits, which takes a symbolic batch."
            )
    d = hidden.shape[-1]
    if torch_layout:
        layout, fix = f"(C, *out_features, D) = (num_classes, ..., {d})", "its last axis is D"
        fits = kernel.ndim >= 2 and kernel.shape[-1] == d
        columns, out = (kernel.shape[0], kernel.shape[1:-1]) if fits else (0, ())
    else:
        layout = f"(D, C, *out_features) = ({d}, num_classes, ...)"
        fix = "a torch nn.Linear weight is (C, D): pass its transpose"
        fits = kernel.ndim >= 2 and kernel.shape[0] == d
        columns, out = (kernel.shape[1], kernel.shape[2:]) if fits else (0, ())
    if not fits:
        raise ValueError(
            f"{k_name} must have shape {layout}, D from {h_name} {hidden.shape}; got "
            f"{kernel.shape} ({fix})."
        )
    batch = hidden.shape[:-1]
    examples, probs = batch + out, (*batch, columns, *out)
    soft = _validation.label_kind(
        labels, y_name, indices=examples, probs=probs,
        indices_as=f"shape {examples} ({h_name}.shape[:-1] + out_features)",
        probs_as=f"shape {probs} ({h_name}.shape[:-1] + (C,) + out_features)",
    )  # fmt: skip
    return Shapes(batch, columns, out, soft)


def check_bias(bias, shapes: Shapes, name: str):
    if bias is None:
        return None
    bias = _validation.as_array(bias, name)
    _validation.check_floating(bias, name)
    expected = (shapes.columns, *shapes.out_features)
    if bias.shape != expected:
        raise ValueError(
            f"{name} must have shape (C, *out_features) = {expected}, one entry per kernel "
            f"column; got {bias.shape}."
        )
    return bias


def check_chunk(value, name: str, limit: int, what: str) -> int | None:
    if value is None:
        return None
    chunk = _validation.check_int(value, name, f"Pass {what}, or None for the default.")
    if chunk < 1:
        raise ValueError(f"{name} must be >= 1 ({what}) or None for the default; got {chunk}.")
    return max(1, min(chunk, limit))


def linear_loss(hidden, kernel, labels, *, torch_layout: bool, names=("hidden", "kernel",
                "labels"), bias=None, weight=None, ignore_index=-100, reduction="mean",
                label_smoothing=0.0, z_loss=0.0, softcap=None, where=None, sample_weight=None,
                divisor=None, num_classes=None, chunk_size=None, row_chunk_size=None,
                bias_name="bias") -> jax.Array:  # fmt: skip
    """Checks a fused linear loss call (either layout) and runs it; see linear_cross_entropy."""
    hidden = _validation.as_array(hidden, names[0])
    kernel = _validation.as_array(kernel, names[1])
    labels = _validation.as_unconverted(labels, names[2])
    shapes = check_arrays(hidden, kernel, labels, torch_layout=torch_layout, names=names)
    count = _validation.check_num_classes(num_classes, shapes.columns, "kernel's class axis")
    bias = check_bias(bias, shapes, bias_name)
    operands = [a.dtype for a in (hidden, kernel, bias) if a is not None]
    ct = rm.compute_dtype(*operands, *([labels.dtype] if shapes.soft else []))
    weight = _validation.check_class_vector(
        weight, "weight", shapes.columns, "Pass one weight per class.", compute=ct
    )
    ignore_index = _validation.check_ignore_index(ignore_index, labels, names[2])
    smoothing, z, cap = _options.check_options(label_smoothing, z_loss, softcap, ct)
    reduction = _validation.check_reduction(reduction)
    where = _validation.check_where(where, shapes.examples)
    sample_weight = _weighting.check_sample_weight(sample_weight, shapes.examples)
    divisor = _weighting.check_divisor(divisor, reduction)
    class_chunk = check_chunk(chunk_size, "chunk_size", max(count, 1), "classes per matmul")
    rows, positions = math.prod(shapes.batch), math.prod(shapes.out_features)
    row_chunk = check_chunk(row_chunk_size, "row_chunk_size", max(rows, 1), "rows per chunk")
    class_sweep = 0
    if lc.applies(shapes.soft, rows, positions, count):
        class_sweep = class_chunk or lc.default_class_chunk(rows, count)
    static = ls.Static(
        rm.Options(ls.CLASS_AXIS, smoothing, z, cap),
        count,
        row_chunk or ls.default_row_chunk(rows, count, positions),
        class_chunk or ls.default_class_chunk(count),
        shapes.soft,
        torch_layout,
        class_sweep,
    )
    if shapes.soft:
        labels = jnp.asarray(labels)
    else:
        labels, ignore_index = _labels.prepare(
            labels, count, ignore_index, check_traced=False, name=names[2]
        )
    name = "torch_linear_cross_entropy" if torch_layout else "linear_cross_entropy"
    fix = "For forward mode use cross_entropy(logits, ..., custom_vjp=False) on the logits."
    core = functools.partial(
        _run, static=static, shapes=shapes, reduction=reduction, ignore_index=ignore_index
    )
    args = (hidden, kernel, bias, labels, weight, where, sample_weight, divisor)
    # per-example losses: sharded as hidden's batch axes, the out_features positions whole
    rows = lambda: _explicit.examples_spec(hidden, [hidden.ndim - 1])
    out = lambda: P() if reduction != "none" else P(*rows(), *[None] * len(shapes.out_features))
    with _validation.reverse_mode_only(name, fix):
        return _explicit.call(core, args, out)


@functools.partial(jax.jit, static_argnames=("static", "shapes", "reduction", "ignore_index"))
def _run(hidden, kernel, bias, labels, weight, where, sample_weight, divisor, *, static, shapes,
         reduction, ignore_index):  # fmt: skip
    n, p = math.prod(shapes.batch), math.prod(shapes.out_features)
    pos = (p,) if shapes.out_features else ()  # the trailing positions axis, if any
    hidden = hidden.reshape(n, hidden.shape[-1])
    if static.torch_layout:
        kernel = kernel.reshape(shapes.columns, *pos, kernel.shape[-1])
    else:
        kernel = kernel.reshape(kernel.shape[0], shapes.columns, *pos)
    bias = None if bias is None else bias.reshape(shapes.columns, *pos)
    keep = jnp.ones((n, *pos), bool) if where is None else where.reshape(n, *pos)
    if static.soft:
        labels = labels.reshape(n, shapes.columns, *pos)
    else:
        labels, ignored = _labels.normalize(labels.reshape(n, *pos), static.num_classes,
                                            ignore_index)  # fmt: skip
        keep = keep & ~ignored
    arrays = [a.dtype for a in (hidden, kernel, bias) if a is not None]
    out_dtype, ct = jnp.result_type(*arrays), rm.compute_dtype(*arrays)
    # float16/bfloat16 weights and divisors get their gradient's parts (the loss's, the
    # divisor's) added in float32, and rounded once
    weight, sample_weight, divisor = (
        None if a is None else rm.widened(a) for a in (weight, sample_weight, divisor)
    )
    if sample_weight is not None:
        sample_weight = jnp.where(keep, sample_weight.reshape(n, *pos), 0)
    if static.num_classes == 0:  # no class: as cross_entropy (NaN where a label is kept)
        losses = jnp.zeros(keep.shape, ct) if static.soft else jnp.where(keep, jnp.nan, 0)
        share = jnp.zeros(keep.shape, ct)
        if sample_weight is not None:
            losses = losses * sample_weight.astype(ct)
        return rm.reduce_rows(
            losses.reshape(shapes.examples), share, reduction, out_dtype, divisor=divisor
        )
    arrays = (hidden, kernel, bias, labels, weight, keep)
    if reduction == "none":
        losses = per_example(static, *arrays)
        if sample_weight is not None:
            losses = losses * sample_weight.astype(ct)
        return losses.reshape(shapes.examples).astype(out_dtype)
    total = reduced(static, reduction == "mean", *arrays, sample_weight, divisor)
    return total.astype(out_dtype)
