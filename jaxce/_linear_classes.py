"""The fused linear loss's gradient sweep over class chunks, for no more rows than classes.

``jaxce._linear_sweep.sweep`` holds a chunk of rows with all their classes; each chunk reads
the whole kernel and updates the whole (compute dtype) kernel gradient. With fewer rows than
classes (a language-model head: a few thousand tokens, tens of thousands of classes) it is
cheaper the other way round: hold a chunk of classes with all the rows, and read ``hidden``
and update its gradient per chunk, (N, D) arrays smaller than the (D, C) kernel. Class
indices only, without ``out_features``:

1. for each chunk of ``class_sweep_chunk`` classes, the logits of every row: an online row maximum
   ``m`` and sum of ``exp(s)``, the label's logit and (label smoothing) the weighted sum of
   ``s``, each rescaled when ``m`` grows. Their totals are the row terms of
   ``jaxce._row_math``, whose ``row_loss`` gives the losses (as the sharded loss's shards do);
2. for each chunk again: its logits, ``row_grad``'s gradient ``dx`` (N, chunk) of the block,
   then ``d kernel[chunk] = h^T dx`` written once in the kernel's own dtype (no float32 copy
   of the kernel gradient for 16-bit kernels), ``d bias`` and ``d weight`` of the block
   written once, and ``d hidden += dx kernel[chunk]^T`` accumulated in the compute dtype.

Inside ``jax.shard_map`` the loops' carries vary over the mesh axes the inputs vary over; a
16-bit kernel gradient is written as its bits on XLA:CPU (``store``), differentiated (second
order) as the plain form.

Four matmuls (the logits twice) against the row sweep's three, but every one with all N rows
and no kernel-sized accumulator: faster and smaller where N <= C (``applies``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxce import _chunks as ch
from jaxce import _linear_sweep as ls
from jaxce import _online_lse as ol
from jaxce import _row_math as rm
from jaxce._reductions import _by_backend, row_max
from jaxce._vma import axes_of

# The default class chunk holds about 1M logits (4 MiB in float32) of all rows: at N=4096,
# D=512, C=32768 on a 2-core AMD EPYC (family 26), 256 classes took 1.50-1.58 s and 90-91 MiB
# (float32), 512 classes 1.45-1.55 s and 95-98 MiB, 1024 classes 1.53-1.56 s and 112 MiB
# (python -m benchmarks.linear --chunk-size): the memory target is 1.5x the 64 MiB gradient.
_CHUNK_LOGITS = 1 << 20


def applies(soft: bool, rows: int, positions: int, num_classes: int) -> bool:
    """Whether a differentiated call sweeps class chunks (else row chunks)."""
    return not soft and positions == 1 and 0 < rows <= num_classes


def default_class_chunk(rows: int, num_classes: int) -> int:
    """Classes per chunk: ~1M logits of all rows, a multiple of 128 within [128, 2048]."""
    chunk = (_CHUNK_LOGITS // max(rows, 1)) // ls.ALIGN * ls.ALIGN
    return max(1, min(num_classes, max(ls.ALIGN, min(chunk, ls.CLASS_CHUNK))))


def sweep(static: ls.Static, hidden, kernel, bias, labels, weight, keep, g, needs=ls.ALL):
    """``ls.sweep``'s ``(losses, Grads)`` for (N,) class indices, given the cotangent ``g``."""
    c, opts = static.num_classes, static.opts
    ct = ls.compute_dtype(static, hidden, kernel, bias, labels)
    weight_c = None if weight is None else weight[:c].astype(ct)
    rows = lambda v: v[:, None]  # (N,) -> (N, 1): row terms keep the class axis
    in_range = rows(labels >= 0)
    w_y = rows(rm.label_weight(weight_c, labels, labels >= 0, ct))
    w_sum = jnp.asarray(c, ct) if weight is None else jnp.sum(weight_c)
    vary = axes_of(hidden, kernel, bias, labels, weight, keep, g)  # inside shard_map
    m, sums = _row_sums(static, hidden, kernel, bias, labels, weight_c, ct, vary)
    lse0, smooth, t = ol.row_terms(sums, w_sum, in_range, w_y)
    loss = rm.row_loss(opts, c, t, m, lse0, smooth, rows(keep), weighted=weight is not None)
    arrays = (hidden, kernel, bias, labels, weight, (m, lse0, t, w_sum), rows(keep))
    arrays = (*arrays, rows(g).astype(ct))
    if needs.kernel and ch.is_16bit(kernel.dtype):  # XLA:CPU: the gradient's bits (store)
        bits = lambda: _bit_gradients(static, needs, vary, arrays)
        return loss[:, 0], _by_backend(bits, lambda: _gradients(static, needs, vary, arrays))
    return loss[:, 0], _gradients(static, needs, vary, arrays)


def _block(static, h, kernel, bias, offset, size, ct):
    """The capped logits (N, size) of classes [offset, offset + size)."""
    return rm.softcap(static.opts, ls.column_logits(static, h, kernel, bias, offset, size, ct), ct)


def _row_sums(static, hidden, kernel, bias, labels, weight, ct, vary):
    """Pass 1: the row maximum ``m`` and the rows' ``BlockSums`` over every class, shifted by
    ``m``."""
    n, smoothing = hidden.shape[0], bool(static.opts.label_smoothing)
    row = lambda value: jnp.full((n, 1), value, ct)

    def step(carry, kernel, offset, size, new):
        m, se, x_y, sw, w_seen = carry
        xs = _block(static, hidden, kernel, bias, offset, size, ct)
        w = None if weight is None else ch.cols(weight, offset, size, 0)
        if new is not None:  # classes seen in the chunk before count once
            xs_new = jnp.where(new, xs, -jnp.inf)
            w = jnp.where(new, 1.0 if w is None else w, 0).astype(ct)
        else:
            xs_new = xs
        # a constant shift (no derivative through the maximum, as row_stats and the sharded
        # loss): finite for a row of only -inf logits
        m_new = lax.stop_gradient(jnp.maximum(m, row_max(xs_new, 1)))
        hot = ol.onehot(labels, offset, size)
        if new is not None:
            hot = hot & new
        sums = ol.block_sums(static.opts, xs_new - m_new, hot, w)
        se = se * jnp.exp(m - m_new) + sums.se
        x_y = x_y + jnp.sum(jnp.where(hot, xs, 0), axis=1, keepdims=True)
        if smoothing:  # sum_c w_c (xs_c - m) over the classes seen, shifted to the new m
            shift = jnp.where(w_seen == 0, 0, w_seen * (m - m_new))
            sw = sw + shift - sums.neg_s_w
            w_seen = w_seen + (size if w is None else jnp.sum(w))
        return m_new, se, x_y, sw, w_seen

    init = (row(jnp.finfo(ct).min), row(0), row(0), row(0), jnp.zeros((), ct))
    m, se, x_y, sw, _ = for_kernel_chunks(static, kernel, step, init, vary)
    return m, ol.BlockSums(se, x_y - m, -sw if smoothing else None)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _bit_gradients(static, needs, vary, arrays):
    """``_gradients`` with a 16-bit kernel's gradient written as uint16 bits (see ``store``),
    differentiated (second order) as the plain form: bits carry no derivative."""
    return _gradients(static, needs, vary, arrays, bits=True)


@_bit_gradients.defjvp
def _bit_gradients_jvp(static, needs, vary, primals, tangents):
    plain = lambda arrays: _gradients(static, needs, vary, arrays)
    return _bit_gradients(static, needs, vary, *primals), jax.jvp(plain, primals, tangents)[1]


def _gradients(static, needs, vary, arrays, bits=False):
    """Pass 2: ``ls.Grads`` from the row terms, the blocks' gradients written once each
    (``bits``: a 16-bit kernel's as uint16, see ``store``)."""
    hidden, kernel, bias, labels, weight, (m, lse0, t, w_sum), keep, g = arrays
    ct = g.dtype
    c, opts = static.num_classes, static.opts
    classes = ls.kernel_axes(static, kernel)[0]
    mm = jnp.result_type(hidden.dtype, kernel.dtype)
    need_dh, need_dk = needs.hidden, needs.kernel
    need_db, need_dw = needs.bias and bias is not None, needs.weight and weight is not None
    weight_c = None if weight is None else weight[:c]
    # XLA:CPU multiplies 16-bit operands as they are only in a plain (M, K) x (K, N) product;
    # contracting the rows of both it converts them to float32 first, hidden once (an (N, D)
    # float32 copy) and dx per chunk. In float32 the transpose would be the extra copy.
    plain_products = ch.is_16bit(mm)
    hidden_t = hidden.T if plain_products and not static.torch_layout else None

    def step(carry, kernel, offset, size, new):
        dh, dk, db, dw = carry
        s = _block(static, hidden, kernel, bias, offset, size, ct) - m
        block_t = t._replace(onehot=ol.onehot(labels, offset, size))
        w = None if weight_c is None else ch.cols(weight_c, offset, size, 0)
        dx, dw_block = rm.row_grad(opts, c, w_sum, s, m, lse0, block_t, w, g, keep)
        if need_dk:  # an overlapping last chunk writes its classes seen before once more
            part = dx.astype(mm)
            # (size, D) in torch's layout, else (D, size)
            if plain_products:  # (size, N) x (N, D), or (D, N) x (N, size)
                a, b = (part.T, hidden) if static.torch_layout else (hidden_t, part)
                block = ch.dot(a, b, [1], [0], ct)
            else:  # the rows contracted in place, as the row sweep's _contract
                a, b = (part, hidden) if static.torch_layout else (hidden, part)
                block = ch.dot(a, b, [0], [0], ct)
            dk = store(dk, block, offset, classes, kernel.dtype)
        if need_db:
            db = store(db, jnp.sum(dx, axis=0), offset, 0, ct)
        if need_dw:
            dw = store(dw, dw_block, offset, 0, ct)
        if need_dh:
            if new is not None:  # classes seen before add nothing again
                dx = jnp.where(new, dx, 0)
            k = ch.cols(kernel, offset, size, classes)
            dh = dh + ch.dot(dx.astype(mm), k, [1], [classes], ct)
        return dh, dk, db, dw

    init = (
        jnp.zeros((hidden.shape[0], hidden.shape[1]), ct) if need_dh else None,
        jnp.zeros(kernel.shape, jnp.uint16 if bits else kernel.dtype) if need_dk else None,
        jnp.zeros(bias.shape, ct) if need_db else None,
        jnp.zeros(weight.shape, ct) if need_dw else None,
    )
    dh, dk, db, dw = for_kernel_chunks(static, kernel, step, init, vary)
    return ls.Grads(
        None if dh is None else dh.astype(hidden.dtype),
        None if dk is None else loaded(dk, kernel.dtype),
        None if db is None else db.astype(bias.dtype),
        None if dw is None else dw.astype(weight.dtype),
        None,
    )


def for_kernel_chunks(static, kernel, step, carry, vary):
    chunk = static.class_sweep_chunk
    return ch.for_kernel_chunks(static.num_classes, chunk, step, carry, kernel, vary=vary)


def store(buffer, block, offset, axis, dtype):
    """``block`` rounded to ``dtype``, written at ``offset`` along ``axis`` of ``buffer``.

    A uint16 buffer holds the bits of a 16-bit ``dtype``: XLA:CPU has no float16/bfloat16
    dynamic-update-slice, and would convert the whole buffer to float32 and back for each
    chunk written (time quadratic in C). Its bits cost one copy when the sweep ends.
    """
    block = block.astype(dtype)
    if buffer.dtype != dtype:
        block = lax.bitcast_convert_type(block, buffer.dtype)
    return lax.dynamic_update_slice_in_dim(buffer, block, offset, axis)


def loaded(buffer, dtype):
    """The finished buffer in ``dtype``."""
    if buffer.dtype != dtype:
        return lax.bitcast_convert_type(buffer, dtype)
    return buffer
