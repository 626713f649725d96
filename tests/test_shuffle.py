"""The epoch order's permutation: a bijection, a function of the key alone, and random-looking.

The statistics are computed over fixed keys, so each check is deterministic; its bound is the
chi-square quantile a uniformly random shuffle would exceed with probability 0.001.
"""

from __future__ import annotations

import math
from collections import Counter

import jax
import numpy as np
import pytest

from training._shuffle import permutation


def orders(n: int, count: int, seed: int = 0) -> np.ndarray:
    keys = jax.random.split(jax.random.key(seed), count)
    return np.asarray(jax.jit(jax.vmap(lambda key: permutation(key, n)))(keys))


def chi2(observed: np.ndarray) -> float:
    expected = observed.sum() / observed.size
    return float(((observed - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 1000, 4096, 4097, 60000])
def test_every_index_once(n):
    order = np.asarray(permutation(jax.random.key(n), n))
    assert order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


def test_a_function_of_the_key_alone():
    first = np.asarray(permutation(jax.random.key(7), 1000))
    np.testing.assert_array_equal(np.asarray(jax.jit(permutation, static_argnums=1)(
        jax.random.key(7), 1000)), first)  # fmt: skip
    assert not np.array_equal(np.asarray(permutation(jax.random.key(8), 1000)), first)


@pytest.mark.parametrize(("n", "bound"), [(3, 18.5), (4, 27.9), (5, 39.3), (13, 202.2)])
def test_small_orders_put_every_index_everywhere_alike(n, bound):
    # (position, index) counts over 20000 orders; bound: chi-square, (n-1)^2 dof, p = 0.001
    drawn = orders(n, 20000)
    counts = np.stack([np.bincount(drawn[:, i], minlength=n) for i in range(n)])
    assert chi2(counts) < bound


@pytest.mark.parametrize(("n", "bound"), [(4, 49.7), (5, 172.4)])
def test_every_small_permutation_is_about_as_likely(n, bound):
    # all n! orders over 20000 draws; bound: chi-square, n! - 1 dof, p = 0.001
    seen = Counter(map(tuple, orders(n, 20000, seed=1)))
    assert len(seen) == math.factorial(n)
    assert chi2(np.array(list(seen.values()))) < bound


def test_a_large_order_has_no_visible_structure():
    n, drawn = 60000, orders(60000, 100, seed=2)
    # where an example lands does not depend on its index: 10 x 10 cells of (position, index),
    # bound: chi-square, 81 dof, p = 0.001
    cells = sum(
        np.histogram2d(np.arange(n) * 10 // n, order * 10 // n, bins=10, range=[[0, 10]] * 2)[0]
        for order in drawn
    )
    assert chi2(cells) < 126.1
    # neighbours in the order are not neighbours in the data (a random order: 20/n of them)
    near = (np.abs(np.diff(drawn.astype(np.int64), axis=1)) <= 10).mean()
    assert near < 2 * 20 / n
    assert abs((drawn[:, 1:] % 2 == drawn[:, :-1] % 2).mean() - 0.5) < 0.01


@pytest.mark.parametrize("n", [0, -1, 2**31])
def test_sizes_out_of_range_are_refused(n):
    with pytest.raises(ValueError, match=rf"n must be in \[1, 2\*\*31\), got {n}"):
        permutation(jax.random.key(0), n)
