"""The fused linear loss's sweep: row chunks, each through all classes, and its gradients.

``sweep`` walks the N rows of ``hidden`` in chunks of ``row_chunk`` rows. A chunk sees every
class at once, so its log-sum-exp is exact and its gradient is known immediately:

1. its logits ``x = h @ kernel + bias``, (rows, C) in the compute dtype, are formed
   ``class_chunk`` kernel columns per matmul (the matmuls' operand copies stay small);
2. the dense loss's own custom VJP (``jaxce._dense_vjp.index_rows`` or ``soft_rows``: the
   per-row math written once) gives the chunk's per-example losses and, given the examples'
   cotangent ``g``, the logits' gradient ``dx`` and the class-weight and target gradients;
3. ``dx`` is contracted at once, again ``class_chunk`` columns at a time: its rows of
   ``d hidden = dx @ kernel^T`` are written, and ``d kernel += h^T dx``, ``d bias += sum dx``
   are accumulated in the loop's carry (updated in place).

So the gradients cost three matmuls (the unfused loss's count) and at most (row_chunk, C)
logits and their gradient exist at a time. Without ``g`` only step 1 and the losses run (one
matmul). With ``out_features`` (torch's K-dimensional loss) every row holds P positions, each
its own softmax over the C classes: the arrays carry a trailing positions axis, the kernel is
(D, C, P) and the chunk's logits (rows, C, P), with the classes on axis 1 throughout.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxce import _chunks as ch
from jaxce import _row_math as rm
from jaxce._dense_vjp import index_rows, index_value, soft_rows, soft_value
from jaxce._vma import axes_of, vary_over, varying_axes

CLASS_AXIS = 1  # of a chunk's logits (rows, C[, P]), the probabilities and a (D, C[, P]) kernel
ALIGN = 128  # default class chunks are multiples of this
CLASS_CHUNK = 2048  # default kernel columns per matmul
# The default row chunk holds about 4M logits (16 MiB in float32), but at least 64 rows. Each
# chunk streams the whole kernel and its float32 gradient accumulator once, whatever its rows,
# so fewer chunks are faster: at N=4096, D=512, C=32768 on a 2-core AMD EPYC (family 26),
# 128-row chunks took 1.39-1.79 s and 140-240 MiB (float32, bfloat16), 64-row chunks
# 1.85-2.08 s and 107-213 MiB (python -m benchmarks.linear).
_ROW_CHUNK_LOGITS = 1 << 22
_MIN_ROW_CHUNK = 64


class Static(NamedTuple):
    """Hashable static configuration of one call."""

    opts: rm.Options  # axis is CLASS_AXIS
    num_classes: int  # the real classes: the kernel's first columns
    row_chunk: int  # rows per chunk
    class_chunk: int  # kernel columns per matmul
    soft: bool  # labels are class probabilities (else int32 indices, -1 out of range)
    torch_layout: bool = False  # kernel (C[, P], D) as torch's linear_weight, else (D, C[, P])
    # classes per chunk when a differentiated call sweeps class chunks (_linear_classes);
    # 0: it sweeps row chunks
    class_sweep_chunk: int = 0


class Needs(NamedTuple):
    """Which gradients to form (the others are None)."""

    hidden: bool = True
    kernel: bool = True
    bias: bool = True
    weight: bool = True
    labels: bool = True


ALL = Needs()


class Grads(NamedTuple):
    hidden: jax.Array | None  # (N, D), hidden's dtype
    kernel: jax.Array | None  # the kernel's shape, in ``acc`` (see ``sweep``)
    bias: jax.Array | None
    weight: jax.Array | None
    labels: jax.Array | None  # probabilities only


def default_row_chunk(num_rows: int, num_classes: int, positions: int) -> int:
    """Rows per chunk: ~4M logits a chunk, at least 64 rows, at most all of them."""
    per_row = max(num_classes * positions, 1)
    return max(1, min(num_rows, max(_MIN_ROW_CHUNK, _ROW_CHUNK_LOGITS // per_row)))


def default_class_chunk(num_classes: int) -> int:
    return max(1, min(num_classes, CLASS_CHUNK))


def _merge_rows(new, block, old):
    """The rows of ``block`` that are ``new``, the already written ``old`` elsewhere."""
    return jnp.where(ch.along(new, 0, block.ndim), block, old)


def kernel_axes(static, kernel) -> tuple[int, int]:
    """(class axis, feature axis) of the kernel."""
    return (0, kernel.ndim - 1) if static.torch_layout else (1, 0)


def _rows(array, offset, size):
    return lax.dynamic_slice_in_dim(array, offset, size, axis=0)


def _positions(array) -> tuple[int, ...]:
    return tuple(range(2, array.ndim))


def column_logits(static, h, kernel, bias, offset, size, ct):
    """The logits (rows, size[, P]) of rows ``h`` for classes [offset, offset + size)."""
    classes, features = kernel_axes(static, kernel)
    x = ch.dot(h, ch.cols(kernel, offset, size, classes), [1], [features], ct)
    if bias is not None:
        x = x + ch.cols(bias, offset, size, 0).astype(ct)[None]
    return x


def _logits(static, h, kernel, bias, ct, vary):
    """(rows, C[, P]) logits of rows ``h``, ``class_chunk`` kernel columns per matmul."""
    c, pos = static.num_classes, kernel.shape[1:-1] if static.torch_layout else kernel.shape[2:]

    def fill(logits, kernel, offset, size, new):
        del new  # columns seen before are computed again, to the same numbers
        x = column_logits(static, h, kernel, bias, offset, size, ct)
        return lax.dynamic_update_slice_in_dim(logits, x, offset, CLASS_AXIS)

    init = jnp.zeros((h.shape[0], c, *pos), ct)
    return ch.for_kernel_chunks(c, static.class_chunk, fill, init, kernel, vary=vary)


def _chunk_vjp(static, logits, labels, weight, keep, g, needs):
    """The dense loss of one row chunk: losses and, with ``g``, (d logits, d weight, d labels)."""
    opts = static.opts
    if g is None:  # the value alone, as a plain function: forward over reverse sees through it
        value = soft_value if static.soft else index_value
        return value(opts, logits, labels, weight, keep), None
    rows = soft_rows if static.soft else index_rows

    def loss(diff):
        w, y = diff.get("weight", weight), diff.get("labels", labels)
        return rows(opts, diff["logits"], y, w, keep)

    diff = {"logits": logits}
    if needs.weight and weight is not None:
        diff["weight"] = weight
    if needs.labels and static.soft:
        diff["labels"] = labels
    out, vjp = jax.vjp(loss, diff)
    return out, vjp(vary_over(g.astype(out.dtype), varying_axes(out)))[0]


def compute_dtype(static: Static, hidden, kernel, bias, labels) -> jnp.dtype:
    """The dtype of the sweep's arithmetic: of the matmul operands, and of probabilities."""
    arrays = [a for a in (hidden, kernel, bias) if a is not None]
    extra = [labels.dtype] if static.soft else []
    return rm.compute_dtype(*[a.dtype for a in arrays], *extra)


def sweep(static: Static, hidden, kernel, bias, labels, weight, keep, g=None, needs=ALL):
    """Per-example losses (N[, P]) in the compute dtype and, given ``g``, their gradients.

    ``hidden`` is (N, D), ``kernel`` (D, Cp[, P]) with the real classes in its first
    ``num_classes`` columns (the rest is padding: never read, gradient 0), ``bias`` (Cp[, P]) or
    None, ``weight`` (Cp,) or None, ``labels`` int32 indices (N[, P]) or probabilities
    (N, Cp[, P]), ``keep`` bool (N[, P]) and ``g`` the cotangent of the per-example losses
    (N[, P]) or None. Returns ``(losses, Grads)``; ``Grads`` is None without ``g``. The kernel
    gradient is accumulated in the compute dtype and returned in it.
    """
    n, c = hidden.shape[0], static.num_classes
    ct = compute_dtype(static, hidden, kernel, bias, labels)
    vary = axes_of(hidden, kernel, bias, labels, weight, keep, g)  # inside shard_map
    mm = jnp.result_type(hidden.dtype, kernel.dtype)  # operand dtype of the gradient matmuls
    weight_c = None if weight is None else weight[:c]
    example_shape = keep.shape
    grads = g is not None
    need_dk, need_dh = grads and needs.kernel, grads and needs.hidden
    need_db = grads and needs.bias and bias is not None
    need_dw = grads and needs.weight and weight is not None
    need_dl = grads and needs.labels and static.soft

    def step(carry, kernel, start, size, new):
        losses, dh, dk, db, dw, dl = carry
        h = _rows(hidden, start, size)
        y = _rows(labels, start, size)
        if static.soft:
            y = lax.slice_in_dim(y, 0, c, axis=CLASS_AXIS)
        keep_rows = _rows(keep, start, size)
        if new is not None:  # rows seen before count as ignored: their gradients are exactly 0
            keep_rows = keep_rows & ch.along(new, 0, keep_rows.ndim)
        logits = _logits(static, h, kernel, bias, ct, vary)
        g_rows = None if g is None else _rows(g, start, size)
        out, cot = _chunk_vjp(static, logits, y, weight_c, keep_rows, g_rows, needs)
        out = out.astype(ct)
        if new is not None:
            out = _merge_rows(new, out, _rows(losses, start, size))
        losses = lax.dynamic_update_slice_in_dim(losses, out, start, 0)
        if cot is None:
            return losses, dh, dk, db, dw, dl
        dx = cot["logits"]
        if need_db:
            db = db + _pad(jnp.sum(dx, axis=0), db.shape).astype(ct)
        if need_dw:
            dw = dw + _pad(cot["weight"].astype(ct), dw.shape)
        if need_dl:
            block = cot["labels"].astype(dl.dtype)
            index = [jnp.asarray(start, jnp.int32)] + [jnp.int32(0)] * (dl.ndim - 1)
            if new is not None:
                block = _merge_rows(new, block, lax.dynamic_slice(dl, index, block.shape))
            dl = lax.dynamic_update_slice(dl, block, index)
        if need_dh or need_dk:
            dh_rows, dk = _contract(static, h, kernel, dx.astype(mm), dk, need_dh, ct, vary)
            if need_dh:
                dh_rows = dh_rows.astype(dh.dtype)
                if new is not None:
                    dh_rows = _merge_rows(new, dh_rows, _rows(dh, start, size))
                dh = lax.dynamic_update_slice_in_dim(dh, dh_rows, start, 0)
        return losses, dh, dk, db, dw, dl

    zeros = lambda shape, dtype, needed: jnp.zeros(shape, dtype) if needed else None
    init = (
        jnp.zeros(example_shape, ct),
        zeros(hidden.shape, hidden.dtype, need_dh),
        zeros(kernel.shape, ct, need_dk),
        zeros(None if bias is None else bias.shape, ct, need_db),
        zeros(None if weight is None else weight.shape, ct, need_dw),
        zeros(labels.shape, labels.dtype, need_dl),
    )
    losses, dh, dk, db, dw, dl = ch.for_kernel_chunks(
        n, static.row_chunk, step, init, kernel, vary=vary
    )
    if not grads:
        return losses, None
    db = None if db is None else db.astype(bias.dtype)
    dw = None if dw is None else dw.astype(weight.dtype)
    return losses, Grads(dh, dk, db, dw, dl)


def _pad(block, shape):
    """A (C[, P]) block of classes, zero-padded along the classes to ``shape``."""
    if block.shape == tuple(shape):
        return block
    widths = [(0, full - part, 0) for part, full in zip(block.shape, shape, strict=True)]
    return lax.pad(block, jnp.zeros((), block.dtype), widths)


def _contract(static, h, kernel, dx, dk, need_dh: bool, ct, vary):
    """``dx @ kernel^T`` (rows, D) and ``dk += h^T dx``, ``class_chunk`` columns at a time."""
    classes, features = kernel_axes(static, kernel)
    pos = _positions(dx)
    # the kernel's class and position axes, matched with dx's (1, *pos)
    k_axes = [classes, *(classes + 1 + i for i in range(len(pos)))]
    dh0 = jnp.zeros((h.shape[0], kernel.shape[features]), ct) if need_dh else None

    def step(carry, kernel, offset, size, new):
        dh, dk = carry
        part = ch.cols(dx, offset, size, CLASS_AXIS)
        if new is not None:  # columns seen before add nothing again
            part = jnp.where(ch.along(new, CLASS_AXIS, part.ndim), part, 0)
        if dh is not None:
            dh = dh + ch.dot(part, ch.cols(kernel, offset, size, classes), [1, *pos], k_axes, ct)
        if dk is not None:
            # (size[, P], D) in torch's layout, else (D, size[, P])
            a, b = (part, h) if static.torch_layout else (h, part)
            update = ch.cols(dk, offset, size, classes) + ch.dot(a, b, [0], [0], ct)
            dk = lax.dynamic_update_slice_in_dim(dk, update.astype(dk.dtype), offset, classes)
        return dh, dk

    carry = (dh0, dk)
    return ch.for_kernel_chunks(
        static.num_classes, static.class_chunk, step, carry, kernel, vary=vary
    )
