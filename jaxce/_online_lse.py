"""Online log-sum-exp over a class axis split into blocks: what one block of classes adds.

A device's shard of the vocabulary (``sharded_cross_entropy``) sees only some classes.
Shifted by the global row maximum ``m`` (one ``pmax``), each block contributes three row sums
that add up over blocks (one ``psum``):

- ``se = sum_c exp(s_c)``, so the shifted log-sum-exp is ``lse0 = log(sum of se)``;
- ``s_y``, the shifted target logit (0 in blocks without the label), so ``nll = lse0 - s_y``;
- ``neg_s_w = -sum_c w_c s_c`` (label smoothing only), so ``sum_c w_c (-log p_c) = W lse0 +
  neg_s_w`` with ``W`` the summed class weight: the smoothing term needs every class, not only
  the local ones.

``row_terms`` turns the summed blocks into the row terms of ``jaxce._row_math``, whose
``row_loss`` and ``row_grad`` then give the loss and each block's gradients, so every variant
shares one formula. Blocks are (rows, classes), classes last.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxce._row_math import Options, RowTerms

BLOCK_AXIS = 1  # classes of a (rows, classes) block


class BlockSums(NamedTuple):
    se: jax.Array  # (rows, 1)
    s_y: jax.Array  # (rows, 1)
    neg_s_w: jax.Array | None  # (rows, 1); None without label smoothing


def onehot(index: jax.Array, offset, size: int) -> jax.Array:
    """(rows, size) bool: the label ``index`` (rows,) falls on classes [offset, offset + size)."""
    classes = lax.broadcasted_iota(jnp.int32, (1, size), 1) + offset
    return classes == index[:, None]


def block_sums(opts: Options, s, hot, weight) -> BlockSums:
    """Row sums of one block of shifted logits ``s``; ``weight`` is the block's (or None)."""
    se = jnp.sum(jnp.exp(s), axis=1, keepdims=True)
    s_y = jnp.sum(jnp.where(hot, s, 0), axis=1, keepdims=True)
    neg_s_w = None
    if opts.label_smoothing:
        ws = s if weight is None else jnp.where(weight == 0, 0, weight.astype(s.dtype) * s)
        neg_s_w = -jnp.sum(ws, axis=1, keepdims=True)
    return BlockSums(se, s_y, neg_s_w)


def row_terms(sums: BlockSums, w_sum, in_range, w_y) -> tuple[jax.Array, jax.Array, RowTerms]:
    """(lse0, smooth, terms) over all classes from the blocks' summed sums.

    ``smooth`` is ``sum_c w_c (-log p_c)`` (None without label smoothing), with ``w_sum`` the
    summed class weight; ``terms.onehot`` is left None (each block forms its own).
    """
    lse0 = jnp.log(sums.se)
    smooth = None if sums.neg_s_w is None else w_sum * lse0 + sums.neg_s_w
    return lse0, smooth, RowTerms(in_range, None, w_y, lse0 - sums.s_y)
