"""Smoke tests of ``python -m benchmarks.linear``: a tiny shape, every variant, the JSON."""

from __future__ import annotations

import json

import pytest

from benchmarks import linear as bench
from benchmarks._linear_variants import VARIANTS


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """One real run of the CLI on N=64, D=16, C=256 (4 fresh processes, one timed call each)."""
    path = tmp_path_factory.mktemp("bench") / "linear.json"
    argv = ["--rows", "64", "--features", "16", "--classes", "256", "--dtypes", "float32"]
    bench.main([*argv, "--repeats", "1", "--warmup", "0", "--json", str(path)])
    with open(path) as f:
        return json.load(f)


def test_json_records_machine_config_and_every_variant(tiny_run):
    assert tiny_run["complete"] is True
    assert tiny_run["machine"]["cpu"] and tiny_run["machine"]["versions"]["torch"]
    assert "loadavg_end" in tiny_run["machine"]
    assert tiny_run["config"]["classes"] == [256]
    results = tiny_run["results"]["256/float32"]
    assert set(results) == set(VARIANTS)
    for name, r in results.items():
        assert r["ok"], (name, r)
        assert r["time"]["median_ms"] > 0 and r["memory_mib"]["call_extra"] >= 0


def test_every_variant_computes_the_same_loss(tiny_run):
    """Same seeded inputs in both frameworks: the four losses agree (float32)."""
    losses = [r["loss"] for r in tiny_run["results"]["256/float32"].values()]
    assert max(losses) - min(losses) <= 1e-5 * abs(losses[0]), losses


def test_targets_follow_the_measurements(tiny_run):
    (row,) = tiny_run["summary"]
    ms, mib = row["median_ms"], row["call_mib"]
    assert row["floor_mib"] == 256 * 16 * 4 / 2**20
    by_name = {t["target"]: t for t in tiny_run["targets"]}
    assert by_name["time <= 1.2x jaxce unfused"]["ratio"] == pytest.approx(
        ms["jaxce_fused"] / ms["jaxce_unfused"]
    )
    assert by_name["memory <= 0.75x torch chunked"]["ratio"] == pytest.approx(
        mib["jaxce_fused"] / mib["torch_chunked"]
    )
    for t in tiny_run["targets"]:
        assert t["met"] == (t["ratio"] <= t["limit"])
    assert "| 256 | float32 |" in tiny_run["table_markdown"]


def test_summarize_without_a_variant_leaves_its_targets_unmeasured():
    result = {"ok": True, "time": {"median_ms": 10.0}, "memory_mib": {"call_extra": 50.0}}
    rows, targets = bench.summarize({"128/float32": {"jaxce_fused": result}}, features=4)
    assert rows[0]["call_mib"] == {"jaxce_fused": 50.0}
    floor = next(t for t in targets if "floor" in t["target"])
    assert floor["ratio"] == pytest.approx(50.0 / (128 * 4 * 4 / 2**20)) and floor["met"] is False
    assert {t["met"] for t in targets if "floor" not in t["target"]} == {None}


def test_quick_config_is_small_and_bad_flags_are_refused():
    cfg = bench.parse_args(["--quick"])
    assert (cfg.rows, cfg.classes, cfg.dtypes, cfg.repeats) == (1024, (32768,), ("float32",), 2)
    for argv in (["--rows", "0"], ["--classes", "0"], ["--dtypes", "float16"], ["--warmup", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
