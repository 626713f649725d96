"""`python -m parity --quick`: the quick matrix passes and writes the three reports.

The quick matrix includes a slice of the fused linear cases (jaxce's fused loss against
``torch.nn.functional.linear_cross_entropy``); each is asserted here by its id.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from parity._cases import build_matrix
from parity._compare import LINEAR_QUANTITIES
from parity._html import loss_html
from parity._intentional import INTENTIONAL
from parity._linear_cases import build_linear
from parity._report import markdown

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The command as a user types it; its stderr is a pipe, so no progress bar is drawn."""
    out = tmp_path_factory.mktemp("parity")
    proc = subprocess.run(
        [sys.executable, "-m", "parity", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc, out


@pytest.mark.slow
def test_quick_matrix_passes_with_summary_line(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"(\d+) passed, 0 failed, (\d+) intentional differences", last)
    assert match, f"last line {last!r}"
    report = json.loads((out / "report.json").read_text())
    summary = report["summary"]
    assert summary["line"] == last
    assert int(match.group(1)) == summary["passed"] > 0
    assert summary["passed"] + summary["intentional"] == summary["cases"]
    assert summary["cases"] == len(build_matrix(quick=True, seed=0))
    assert "loss parity" not in proc.stderr and "\r" not in proc.stderr, "quiet when piped"


@pytest.mark.slow
def test_report_json_records_every_case_and_the_environment(quick_run):
    _, out = quick_run
    report = json.loads((out / "report.json").read_text())
    env = report["environment"]
    for key in (
        "jax",
        "torch",
        "numpy",
        "jax_device",
        "jax_default_matmul_precision",
        "torch_float32_matmul_precision",
        "git_commit",
    ):
        assert env[key] is not None, key
    assert report["config"]["seed"] == 0 and report["config"]["quick"] is True
    ids = [r["id"] for r in report["cases"]]
    assert ids == [c.id for c in build_matrix(quick=True, seed=0)]
    for r in report["cases"]:
        if r["raised"]:  # the implementation refused the input: nothing to measure
            assert r["id"].startswith("edge-ignore-index-prob/") and "impl" in r["raised"]
            continue
        if r["group"] == "linear":
            assert set(r["errors"]) >= {"value", "grad_input", "grad_weight"}, r["id"]
            assert ("grad_bias" in r["errors"]) == r["bias"], r["id"]
            assert set(r["errors"]) <= set(LINEAR_QUANTITIES), r["id"]
        else:
            assert set(r["errors"]) >= {"value", "grad_logits"}, r["id"]
        assert ("grad_target" in r["errors"]) == (r["target"] == "prob"), r["id"]
        for pairs in r["errors"].values():
            assert {"impl_vs_torch", "impl_vs_reference", "torch_vs_reference"} <= set(pairs)
    assert all(row["reason"] for row in report["tolerances"])


@pytest.mark.slow
def test_intentional_differences_are_listed_not_passed(quick_run):
    _, out = quick_run
    report = json.loads((out / "report.json").read_text())
    intentional = [r for r in report["cases"] if r["status"] == "intentional"]
    assert {r["intentional"] for r in intentional} == set(INTENTIONAL)
    for r in intentional:  # torch disagrees somewhere; there jaxce is closer to float64
        if r["raised"]:  # jaxce refuses an input torch accepts (ignore_index_prob)
            assert set(r["raised"]) == {"impl"}, r["id"]
            assert r["raised"]["impl"].startswith("ValueError: ignore_index="), r["id"]
            continue
        differing = [q for q, e in r["errors"].items() if not e["impl_vs_torch"]["ok"]]
        assert differing, r["id"]
        assert r["errors"]["value"]["impl_vs_reference"]["ok"], r["id"]
        assert r["closer"][differing[0]] == "impl", (r["id"], differing[0])
    md = (out / "report.md").read_text()
    for key, why in INTENTIONAL.items():
        assert f"**{key}**: {why}" in md


QUICK_LINEAR = build_linear(quick=True, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("case", QUICK_LINEAR, ids=[c.id for c in QUICK_LINEAR])
def test_quick_linear_case_matches_torch_and_float64(quick_run, case):
    """Each fused linear case of the quick matrix: every quantity within the tolerance rule of
    torch's F.linear_cross_entropy (on the case's path) and of the float64 reference."""
    _, out = quick_run
    by_id = {r["id"]: r for r in json.loads((out / "report.json").read_text())["cases"]}
    r = by_id[case.id]
    assert (r["api"], r["torch_path"], r["group"]) == (case.api, case.path, "linear")
    assert not r["raised"] and not r["failures"], r["failures"] or r["raised"]
    assert r["status"] == ("intentional" if case.intentional else "passed")
    for q, pairs in r["errors"].items():
        assert pairs["impl_vs_reference"]["ok"], (q, pairs["impl_vs_reference"])
        assert pairs["impl_vs_torch"]["ok"] or case.intentional, (q, pairs["impl_vs_torch"])


@pytest.mark.slow
def test_markdown_and_self_contained_html(quick_run):
    _, out = quick_run
    summary = json.loads((out / "report.json").read_text())["summary"]
    md = (out / "report.md").read_text()
    assert f"**{summary['line']}**" in md
    assert "| float16 |" in md and "## Tolerances" in md
    linear = summary["linear"]
    assert linear["cases"] == len(QUICK_LINEAR) and linear["failed"] == 0
    heading = "Fused linear cross-entropy vs "
    assert f"## {heading}`torch.nn.functional.linear_cross_entropy`" in md
    assert all(f"`{c.id}`" in md for c in QUICK_LINEAR)
    assert "not differentiable with respect to argument weight" in md, "class weight note"
    page = (out / "report.html").read_text()
    assert summary["line"] in page and heading in page
    assert page.count("src='data:image/png;base64,") == 2
    assert not re.search(r"(src|href)=['\"]?https?:", page), "no external resources"


@pytest.mark.slow
def test_a_report_made_outside_a_git_checkout_says_so(quick_run):
    _, out = quick_run
    payload = json.loads((out / "report.json").read_text())
    payload["environment"].update(git_commit=None, git_dirty=None)
    assert "; git (not a git checkout)" in markdown(payload)  # it read "git None"
    assert "git <code>(not a git checkout)</code>" in loss_html(payload)


@pytest.mark.slow
def test_torch_2_13_behaviours_hold(quick_run):
    """Zero classes match torch; both refuse ignore_index >= 0 with probabilities."""
    _, out = quick_run
    cases = json.loads((out / "report.json").read_text())["cases"]
    zero = [r for r in cases if r["id"].startswith("edge-zero-classes/")]
    assert zero and all(r["status"] == "passed" and not r["raised"] for r in zero)
    assert any(r["reduction"] == "mean" for r in zero)
    both = [
        r for r in cases if r["id"].startswith("edge-ignore-index-prob/") and not r["intentional"]
    ]
    assert both and all(r["status"] == "passed" for r in both)
    assert all(set(r["raised"]) == {"impl", "torch"} for r in both)
    assert all("RuntimeError" in r["raised"]["torch"] for r in both)
