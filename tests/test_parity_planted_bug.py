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


# -- implementations that break the call's contract fail their cases, each with its reason ----


def raises(logits, labels, **kwargs):
    raise RuntimeError("planted failure")


def exits(logits, labels, **kwargs):
    raise SystemExit(0)


def returns_a_float(logits, labels, **kwargs):
    return 1.0


def returns_two(logits, labels, **kwargs):
    out = loss.cross_entropy(logits, labels, **kwargs)
    return jnp.stack([out, out])


def returns_float16(logits, labels, **kwargs):
    return loss.cross_entropy(logits, labels, **kwargs).astype(jnp.float16)


def returns_numpy(logits, labels, **kwargs):
    return np.asarray(loss.cross_entropy(logits, labels, **kwargs))


NEG_INF_PROB = "edge-neg-inf/float32/NC/prob/mean/neg_inf/8x6"  # an intentional difference
MEAN = "grid/float32/NC/index/mean"


@pytest.mark.parametrize(
    ("impl", "case", "reason"),
    [
        ("raises", NEG_INF_PROB, "implementation raised RuntimeError: planted failure"),
        ("raises", MEAN, "implementation raised RuntimeError: planted failure"),
        ("exits", MEAN, "implementation called sys.exit(0)"),
        ("returns_a_float", MEAN, "implementation returned a float, not a JAX array"),
        (
            "returns_two",
            MEAN,
            "implementation returned shape (2,) for reduction='mean', expected ()",
        ),
        (
            "returns_float16",
            MEAN,
            "implementation returned float16 for float32 logits (torch keeps their dtype)",
        ),
        (
            "returns_numpy",
            MEAN,
            "implementation cannot be traced: the runner calls it under jax.jit "
            "(TracerArrayConversionError)",
        ),
    ],
)
def test_an_implementation_breaking_the_contract_fails_the_case(
    tmp_path, capsys, impl, case, reason
):
    # Raising passed an intentional difference (exit 0); sys.exit(0) ended the run with 0 and no
    # report; a bad return value read as the harness's own error.
    out = tmp_path / "r"
    argv = ["--quick", "--only", case, "--no-progress", "--out", str(out)]
    assert main([*argv, "--impl", f"tests.test_parity_planted_bug:{impl}"]) == 1
    assert capsys.readouterr().out.splitlines()[0] == f"FAILED {case}"
    (record,) = json.loads((out / "report.json").read_text())["cases"]
    assert record["status"] == "failed" and record["failures"] == [reason]


def test_the_reports_say_when_only_some_cases_ran(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["--quick", "--only", MEAN, "--no-progress", "--out", str(out)]) == 0
    scope = f"1 of the 140 cases of the quick matrix matching --only '{MEAN}'"
    assert scope in (out / "report.md").read_text()
    assert scope.replace("'", "&#x27;") in (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["config"]["matrix_cases"] == 140


def test_an_impl_with_only_fused_linear_cases_is_a_usage_error(tmp_path, capsys):
    # the fused linear cases always test jaxce's own functions: the --impl would never run
    argv = ["--quick", "--only", "linear/*", "--out", str(tmp_path / "r")]
    assert main([*argv, "--impl", "tests.test_parity_planted_bug:raises"]) == 2
    err = capsys.readouterr().err
    assert "selects only fused linear cases, which test jaxce's own fused functions" in err
    assert not (tmp_path / "r").exists()
