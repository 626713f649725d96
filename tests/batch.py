"""Many small cases compiled as one program, and computed once per test session.

For small cases most of XLA's compile time is a cost per program, not per operation: the 54
custom-VJP-against-reference gradient checks compile in about 7 s as one program and in about
23 s as 108. A module gathers a group of cases' computations into one jitted program
(`run_together`); the first test that needs a group computes it, and under pytest-xdist the
other worker reads the group's results from a file written under a lock (`shared_groups`), so
a group whose tests are split between the workers still compiles once.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Hashable
from typing import Any

import jax
from filelock import FileLock


class CaseError(RuntimeError):
    """What a case raised while it was traced, compiled or run alone (kept as text, so that a
    group's results pickle whatever the exception was)."""


def run_together(cases: dict[str, tuple[Callable, tuple]]) -> dict[str, Any]:
    """``{key: fn(*args)}`` for every ``key: (fn, args)``, compiled and run as one program.

    Results come back as numpy arrays (same pytree structure). If the program as a whole fails
    to trace, compile or run, each case runs alone: a case that fails alone gets a `CaseError`
    naming what it raised as its result (`result` raises it), the others their results. If
    none fails alone, the cases cannot share a program: that raises (a mistake of the caller).
    """
    args = {key: a for key, (_, a) in cases.items()}
    try:
        return jax.device_get(
            jax.jit(lambda args: {key: fn(*args[key]) for key, (fn, _) in cases.items()})(args)
        )
    except Exception as group_error:  # find the case(s) at fault; the others still run
        out = {}
        for key, (fn, a) in cases.items():
            try:
                out[key] = jax.device_get(jax.jit(fn)(*a))
            except Exception as err:
                out[key] = CaseError(f"{type(err).__name__}: {err}")
        if not any(isinstance(v, CaseError) for v in out.values()):
            raise RuntimeError(
                "these cases fail as one program but each runs alone (cases that cannot share "
                f"a program, e.g. on different meshes?): {sorted(cases)}"
            ) from group_error
        return out


def result(results: dict[str, Any], key: str) -> Any:
    """The result of case ``key``, or the `CaseError` it raised, raised."""
    value = results[key]
    if isinstance(value, CaseError):
        raise value
    return value


def shared_groups(tmp_path_factory, name: str, compute: Callable[[Hashable], dict]):
    """A function ``group -> compute(group)``, computed once per test session.

    Memoised in this process; under pytest-xdist the result goes through a pickle in the
    session's directory (common to its workers), written under a lock by the first worker that
    needs it. ``name`` (unique per calling module) and the group's ``repr`` name the file. A
    group whose computation raised raises the same error for its other tests, at once.
    """
    done: dict[Hashable, dict | Exception] = {}
    shared = None
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "batched-groups"
        shared.mkdir(exist_ok=True)

    def load(group: Hashable) -> dict:
        if shared is None:
            return compute(group)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}-{group!r}")
        path = shared / f"{stem}.pickle"
        with FileLock(f"{path}.lock"):
            if not path.exists():
                path.write_bytes(pickle.dumps(compute(group)))
            return pickle.loads(path.read_bytes())

    def get(group: Hashable = None) -> dict:
        if group not in done:
            try:
                done[group] = load(group)
            except Exception as err:
                done[group] = err
        if isinstance(done[group], Exception):
            raise done[group]
        return done[group]

    return get
