"""The tests' batching helper: one program for many cases, and a failing case kept to itself."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tests.batch import CaseError, result, run_together, shared_groups


def test_results_equal_each_case_alone():
    x = jnp.arange(6.0).reshape(2, 3)
    cases = {"sum": (lambda a: a.sum(axis=1), (x,)), "pair": (lambda a, b: (a * b, b), (x, 2.0))}
    got = run_together(cases)
    np.testing.assert_array_equal(result(got, "sum"), [3.0, 12.0])
    product, factor = result(got, "pair")
    np.testing.assert_array_equal(product, np.arange(6.0).reshape(2, 3) * 2)
    assert isinstance(product, np.ndarray) and factor == 2.0


def test_a_case_that_raises_fails_alone():
    def bad(a):
        raise ValueError("planted")

    got = run_together({"good": (lambda a: a + 1, (jnp.ones(2),)), "bad": (bad, (jnp.ones(2),))})
    np.testing.assert_array_equal(result(got, "good"), [2.0, 2.0])
    with pytest.raises(CaseError, match="ValueError: planted"):
        result(got, "bad")


def test_cases_that_cannot_share_a_program_raise():
    """Every case runs alone but the program of all fails: the caller's mistake, not hidden
    behind the slower case-by-case results (simulated: a case that fails its first trace)."""
    traces = []

    def fails_first(a):
        traces.append(a)
        if len(traces) == 1:
            raise ValueError("planted")
        return a * 2

    cases = {"fine": (lambda a: a + 1, (jnp.ones(2),)), "first": (fails_first, (jnp.ones(2),))}
    with pytest.raises(RuntimeError, match="fail as one program but each runs alone"):
        run_together(cases)


def test_a_group_is_computed_once_per_process(tmp_path_factory):
    calls = []

    def compute(group):
        calls.append(group)
        return {"n": group}

    get = shared_groups(tmp_path_factory, "test-batch", compute)
    assert get("a") == get("a") == {"n": "a"}
    assert get(None) == {"n": None}
    assert calls == ["a", None]


def test_a_group_that_raised_is_not_computed_again(tmp_path_factory):
    calls = []

    def compute(group):
        calls.append(group)
        raise ValueError("planted")

    get = shared_groups(tmp_path_factory, "test-batch-raises", compute)
    for _ in range(2):
        with pytest.raises(ValueError, match="planted"):
            get()
    assert calls == [None]
