"""Smoke tests of the loss benchmark harness: a tiny shape, one repeat, the JSON schema."""

from __future__ import annotations

import json

import pytest

from benchmarks import _harness, _report
from benchmarks import loss as bench


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """One real run of the CLI on a 64x16 problem (5 fresh processes, one timed call each)."""
    path = tmp_path_factory.mktemp("bench") / "loss.json"
    argv = ["--shapes", "64x16", "--variants", "jaxce", "torch_eager", "bound_copy"]
    argv += ["--repeats", "1", "--warmup", "1", "--rounds", "1", "--json", str(path)]
    bench.main(argv)
    with open(path) as f:
        return json.load(f)


def test_json_top_level_schema(tiny_run):
    keys = {"command", "config", "machine", "headline", "summary", "targets", "results"}
    assert set(tiny_run) >= keys | {"table_markdown"}
    assert tiny_run["config"]["shapes"] == [[64, 16]]
    assert tiny_run["machine"]["jax_backend"]


def test_every_job_ran_once_with_timing_and_memory(tiny_run):
    jobs = {(r["setting"], r["variant"]) for r in tiny_run["results"]}
    expected = {("outside", v) for v in ("jaxce", "torch_eager", "bound_copy")}
    expected |= {("in_step", v) for v in ("jaxce", "bound_copy")}  # torch_eager: outside only
    assert jobs == expected
    for r in tiny_run["results"]:
        assert r["ok"], r
        assert r["time"]["repeats"] == 1 and r["time"]["median_ms"] > 0
        assert set(r["memory_mib"]) == {"idle", "inputs", "call_extra", "process_peak"}
        assert r["raw"][0]["cpus"], "the child did not report its pinned CPUs"


def test_summary_ratios_follow_the_medians(tiny_run):
    cell = tiny_run["summary"]["64x16"]["outside"]
    med = cell["median_ms"]
    assert cell["speedup_vs_torch_eager"]["jaxce"] == pytest.approx(
        med["torch_eager"] / med["jaxce"]
    )
    assert cell["x_bound_copy"]["jaxce"] == pytest.approx(med["jaxce"] / med["bound_copy"])
    in_step = tiny_run["summary"]["64x16"]["in_step"]
    assert "speedup_vs_torch_eager" not in in_step  # its reference (torch_eager_out) did not run


def test_headline_quotes_jaxce_ratios(tiny_run):
    rows = {row["setting"]: row for row in tiny_run["headline"]}
    assert set(rows) == {"outside", "in_step"}
    outside = rows["outside"]
    ms = outside["ms"]
    assert outside["jaxce_speedup_vs_torch_eager"] == pytest.approx(
        ms["torch_eager"] / ms["jaxce"], rel=1e-2
    )
    assert outside["jaxce_x_bound_copy"] == pytest.approx(ms["jaxce"] / ms["bound_copy"], rel=1e-2)


def test_targets_listed_per_setting(tiny_run):
    names = {(t["setting"], t["target"]) for t in tiny_run["targets"]}
    assert ("outside", "jaxce >= 2x faster than torch eager") in names
    assert all(t["met"] in (True, False, None) for t in tiny_run["targets"])


def test_failed_variant_is_reported_not_raised():
    spec = _harness.Spec("no_such_variant", "outside", 8, 4, repeats=1, warmup=1, threads=1)
    result = _harness.run_child(spec, timeout_s=120)
    assert result["ok"] is False
    assert "no_such_variant" in result["error"]


@pytest.mark.parametrize(
    ("targets", "met"),
    [
        pytest.param({"jaxce": 10.0, "torch_eager": 25.0, "optax": 12.0}, True, id="fast"),
        pytest.param({"jaxce": 20.0, "torch_eager": 25.0, "optax": 12.0}, False, id="slow"),
    ],
)
def test_check_targets_thresholds(targets, met):
    cell = {v: {"ok": True, "time": _harness.stats_dict([t / 1e3])} for v, t in targets.items()}
    summary = _report.summarize({("8x4", "outside", v): r for v, r in cell.items()})
    rows = _report.check_targets(summary)
    assert [r["met"] for r in rows] == [met, met]


def test_bad_shape_is_rejected():
    with pytest.raises(SystemExit):
        bench.parse_args(["--shapes", "64by16"])


def test_quick_config_is_small():
    cfg = bench.parse_args(["--quick"])
    assert cfg.rounds == 1 and cfg.repeats <= 3
    assert len(cfg.shapes) * len(cfg.settings) * len(cfg.variants) <= 20
