"""Cross-entropy over a class axis split into blocks: what one block of classes contributes.

A vocabulary chunk (``linear_cross_entropy``) or a device's shard (``sharded_cross_entropy``)
sees only some classes. Shifted by a per-row reference ``m`` (the row maximum, or the maximum
over the classes seen so far), each block contributes three row sums that add up over blocks:

- ``se = sum_c exp(s_c)``, so the shifted log-sum-exp is ``lse0 = log(sum of se)``;
- ``s_y``, the shifted target logit (0 in blocks without the label), so ``nll = lse0 - s_y``;
- ``neg_s_w = -sum_c w_c s_c`` (label smoothing only), so ``sum_c w_c (-log p_c) = W lse0 +
  neg_s_w`` with ``W`` the summed class weight: the smoothing term needs every class, not only
  the local ones.

The per-row loss and a block's gradients then come from the core kernel's ``index_loss`` and
``index_grad``, so all variants share one formula. Blocks are (rows, classes), classes last.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxce import _kernels

BLOCK_AXIS = 1  # classes of a (rows, classes) block


class BlockSums(NamedTuple):
    se: jax.Array  # (rows, 1)
    s_y: jax.Array  # (rows, 1)
    neg_s_w: jax.Array | None  # (rows, 1); None without label smoothing


def onehot(labels: jax.Array, offset, size: int) -> jax.Array:
    """(rows, size) bool: the label falls on this block's classes [offset, offset + size)."""
    classes = lax.broadcasted_iota(jnp.int32, (1, size), 1) + offset
    return classes == labels[:, None]


def block_sums(opts: _kernels.Options, s, hot, weight) -> BlockSums:
    """Row sums of one block of shifted logits ``s``; ``weight`` is the block's (or None)."""
    se = jnp.sum(jnp.exp(s), axis=1, keepdims=True)
    s_y = jnp.sum(jnp.where(hot, s, 0), axis=1, keepdims=True)
    neg_s_w = None
    if opts.label_smoothing:
        ws = s if weight is None else jnp.where(weight == 0, 0, weight.astype(s.dtype) * s)
        neg_s_w = -jnp.sum(ws, axis=1, keepdims=True)
    return BlockSums(se, s_y, neg_s_w)


def add(a: BlockSums, b: BlockSums) -> BlockSums:
    return jax.tree.map(jnp.add, a, b)


def rebase(sums: BlockSums, delta, seen, w_seen) -> BlockSums:
    """The sums after the reference ``m`` grows by ``delta`` (rows, 1) >= 0.

    ``seen`` (rows, 1) is 1 where the label was among the summed classes; ``w_seen`` is the
    summed weight (or count) of the summed classes.
    """
    neg_s_w = None if sums.neg_s_w is None else sums.neg_s_w + delta * w_seen
    return BlockSums(sums.se * jnp.exp(-delta), sums.s_y - delta * seen, neg_s_w)


def row_terms(opts, num_classes: int, w_sum, sums: BlockSums, in_range, w_y, hot=None):
    """(lse0, smooth, terms) over all classes from summed block sums; ``hot`` for gradients."""
    lse0 = jnp.log(sums.se)
    smooth = None if sums.neg_s_w is None else w_sum * lse0 + sums.neg_s_w
    terms = _kernels.IndexTerms(None, in_range, hot, w_y, lse0 - sums.s_y)
    return lse0, smooth, terms


def reduce_rows(rows, row_weight, reduction: str, dtype):
    """torch's reductions: "none", "sum", or "mean" dividing by the kept rows' summed weight."""
    if reduction == "none":
        return rows.astype(dtype)
    total = jnp.sum(rows)
    if reduction == "mean":
        total = total / jnp.sum(row_weight)
    return total.astype(dtype)
