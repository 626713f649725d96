"""A planted bug must make `python -m parity --impl ...` fail and name exactly the broken cases.

The bug: jaxce's loss whose label-smoothing term ignores the class weights (torch weights it).
It only changes class-index targets with both ``weight`` and ``label_smoothing``.
"""

from __future__ import annotations

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

from jaxce import loss
from parity._cli import main

SUBSET = "grid/float32/*"  # the quick matrix' float32 grid: every layout, target and option


def smoothing_ignores_weights(
    logits,
    labels,
    *,
    axis=-1,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    **kwargs,
):
    """jaxce's cross_entropy, except that the smoothing term of class indices is unweighted."""
    soft = jnp.issubdtype(jnp.asarray(labels).dtype, jnp.floating)
    if weight is None or label_smoothing == 0.0 or soft:
        return loss.cross_entropy(
            logits,
            labels,
            axis=axis,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            **kwargs,
        )
    common = {"axis": axis, "ignore_index": ignore_index, "reduction": "none", **kwargs}
    nll = loss.cross_entropy(logits, labels, weight=weight, **common)
    uniform = loss.cross_entropy(logits, labels, label_smoothing=1.0, **common)  # the bug
    per_example = (1.0 - label_smoothing) * nll.astype(jnp.float32) + (
        label_smoothing * uniform.astype(jnp.float32)
    )
    if reduction == "none":
        return per_example.astype(logits.dtype)
    total = jnp.sum(per_example)
    if reduction == "mean":
        kept = labels != ignore_index
        total = total / jnp.sum(jnp.where(kept, weight[jnp.where(kept, labels, 0)], 0.0))
    return total.astype(logits.dtype)


def _expected_failures() -> set[str]:
    """Cases the bug changes: class indices, weight, smoothing, at least one kept example."""
    from parity._cases import build_matrix, make_inputs

    expected = set()
    for case in build_matrix(quick=True, seed=0):
        if not re.fullmatch(SUBSET.replace("*", ".*"), case.id):
            continue
        if case.target == "index" and case.weight and case.smoothing > 0:
            labels = make_inputs(case).labels
            if np.any(labels != case.ignore_index) and case.shape[case.class_axis] > 1:
                expected.add(case.id)
    return expected


@pytest.mark.slow
def test_planted_bug_fails_the_run_and_names_the_broken_cases(tmp_path, capsys):
    out = tmp_path / "report"
    impl = f"{__name__}:smoothing_ignores_weights"
    argv = ["--quick", "--only", SUBSET, "--no-progress", "--impl", impl, "--out", str(out)]
    assert main(argv) == 1  # in-process: the same main() as `python -m parity`
    stdout = capsys.readouterr().out
    last = stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"(\d+) passed, (\d+) failed, (\d+) intentional differences", last)
    assert match, f"last line {last!r}"
    report = json.loads((out / "report.json").read_text())
    failed = set(report["summary"]["failed_cases"])
    expected = _expected_failures()
    assert expected, "the subset must contain cases the bug breaks"
    assert failed == expected
    assert int(match.group(2)) == len(expected)
    assert int(match.group(1)) == report["summary"]["cases"] - len(expected)
    for case_id in expected:  # named on the terminal and in the markdown report
        assert f"FAILED {case_id}" in stdout
        assert f"`{case_id}`" in (out / "report.md").read_text()
    by_id = {r["id"]: r for r in report["cases"]}
    assert all(any(f.startswith("value ") for f in by_id[i]["failures"]) for i in expected)
