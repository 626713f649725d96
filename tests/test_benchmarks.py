"""Smoke tests of the loss benchmark harness: a tiny shape, one repeat, the JSON schema."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from benchmarks import _harness, _jax_variants, _report, _torch_variants
from benchmarks import loss as bench
from tests.conftest import main_in_fresh_process
from tests.tolerances import assert_close

TINY_VARIANTS = ("jaxce", "torch_eager", "bound_copy", "bound_read")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """One real run of the CLI on a 64x16 problem (8 fresh processes, one timed call each)."""
    path = tmp_path_factory.mktemp("bench") / "loss.json"
    argv = ["--shapes", "64x16", "--targets", "index", "--variants", *TINY_VARIANTS]
    argv += ["--repeats", "1", "--warmup", "1", "--rounds", "1", "--json", str(path)]
    bench.main(argv)
    assert sorted(p.name for p in path.parent.iterdir()) == ["loss.json"], "no .partial left"
    with open(path) as f:
        return json.load(f)


def test_json_top_level_schema(tiny_run):
    keys = {"command", "config", "machine", "headline", "summary", "targets", "results"}
    assert set(tiny_run) >= keys | {"table_markdown"}
    assert tiny_run["complete"] is True
    assert tiny_run["config"]["shapes"] == [[64, 16]]
    assert tiny_run["config"]["targets"] == ["index"]
    machine = tiny_run["machine"]
    assert machine["jax_backend"] and machine["cpu"] and machine["cpus_available"] >= 1
    assert len(machine["loadavg_start"]) == len(machine["loadavg_end"]) == 3
    assert {"python", "jax", "jaxlib", "optax", "torch"} <= set(machine["versions"])
    if sys.platform == "linux":  # caches from /sys: L1-L3 on every x86 and arm64 host we use
        assert {c["level"] for c in machine["caches"]} >= {1, 2}
    assert tiny_run["table_markdown"].startswith(f"Machine: {machine['cpu']} (")


def test_an_interrupted_run_keeps_the_results_so_far(tmp_path, monkeypatch):
    """The results so far are rewritten to FILE.partial after every job: stopped at the third,
    it holds the first two, and the earlier complete FILE is kept as it was."""
    calls = []

    def child(spec, *, timeout_s):
        calls.append(spec.variant)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return {"ok": False, "error": f"not run: {spec.variant}"}

    monkeypatch.setattr(bench.h, "run_child", child)
    path = tmp_path / "loss.json"
    path.write_text('{"an": "earlier run"}')
    argv = ["--shapes", "64x16", "--targets", "index", "--variants", "jaxce", "bound_copy"]
    with pytest.raises(KeyboardInterrupt):
        bench.main([*argv, "--settings", "outside", "forward", "--json", str(path)])
    assert path.read_text() == '{"an": "earlier run"}'
    doc = json.loads((tmp_path / "loss.json.partial").read_text())
    assert doc["complete"] is False and doc["config"]["shapes"] == [[64, 16]]
    assert [(r["setting"], r["variant"]) for r in doc["results"]] == [
        ("outside", "jaxce"),
        ("outside", "bound_copy"),
    ]
    assert doc["results"][0]["raw"] == [{"ok": False, "error": "not run: jaxce"}]
    assert not list(tmp_path.glob("*.tmp")), "no temporary file left behind"


def test_every_job_ran_once_with_timing_and_memory(tiny_run):
    jobs = {(r["setting"], r["variant"]) for r in tiny_run["results"]}
    expected = {("outside", v) for v in ("jaxce", "torch_eager", "bound_copy")}
    expected |= {("in_step", v) for v in ("jaxce", "bound_copy")}  # torch_eager_out in a step
    expected |= {("forward", v) for v in ("jaxce", "torch_eager", "bound_read")}
    assert jobs == expected
    for r in tiny_run["results"]:
        assert r["ok"], r
        assert r["time"]["repeats"] == 1 and r["time"]["median_ms"] > 0
        assert set(r["memory_mib"]) == {"idle", "inputs", "call_extra", "process_peak"}
        assert r["raw"][0]["cpus"], "the child did not report its pinned CPUs"


def test_summary_ratios_follow_the_medians(tiny_run):
    cell = tiny_run["summary"]["index"]["64x16"]["outside"]
    med = cell["median_ms"]
    assert cell["speedup_vs_torch_eager"]["jaxce"] == pytest.approx(
        med["torch_eager"] / med["jaxce"]
    )
    assert cell["x_bound_copy"]["jaxce"] == pytest.approx(med["jaxce"] / med["bound_copy"])
    in_step = tiny_run["summary"]["index"]["64x16"]["in_step"]
    assert "speedup_vs_torch_eager" not in in_step  # its reference (torch_eager_out) did not run


def test_forward_ratios_use_its_reference_and_read_bound(tiny_run):
    cell = tiny_run["summary"]["index"]["64x16"]["forward"]
    med = cell["median_ms"]
    assert cell["torch_eager_reference"] == "torch_eager" and cell["bound"] == "bound_read"
    assert cell["speedup_vs_torch_eager"]["jaxce"] == pytest.approx(
        med["torch_eager"] / med["jaxce"]
    )
    assert cell["x_bound_read"]["jaxce"] == pytest.approx(med["jaxce"] / med["bound_read"])
    assert "x_bound_copy" not in cell
    row = next(line for line in tiny_run["table_markdown"].splitlines() if "| forward |" in line)
    assert row.endswith(f"| {cell['x_bound_read']['jaxce']:.2f} (read) |")


def test_headline_quotes_jaxce_ratios(tiny_run):
    """The headline rounds to 3 decimals the summary's medians and the ratios of unrounded ones."""
    rows = {row["setting"]: row for row in tiny_run["headline"]}
    assert set(rows) == {"outside", "in_step", "forward"}
    assert {row["targets"] for row in tiny_run["headline"]} == {"index"}
    summary = tiny_run["summary"]["index"]["64x16"]
    for setting, key, num, den in [
        ("forward", "jaxce_x_bound_read", "jaxce", "bound_read"),
        ("outside", "jaxce_speedup_vs_torch_eager", "torch_eager", "jaxce"),
        ("outside", "jaxce_x_bound_copy", "jaxce", "bound_copy"),
    ]:
        med = summary[setting]["median_ms"]
        assert rows[setting]["ms"] == {v: round(t, 3) for v, t in med.items()}
        assert rows[setting][key] == pytest.approx(med[num] / med[den], abs=5e-4)


def test_targets_listed_per_setting(tiny_run):
    names = {(t["setting"], t["target"]) for t in tiny_run["targets"]}
    assert ("outside", "jaxce >= 2x faster than torch eager") in names
    assert ("forward", "jaxce >= 2x faster than torch eager") in names
    assert all(t["met"] in (True, False, None) for t in tiny_run["targets"])


def test_bound_target_only_in_step():
    times = {"jaxce": 2.5, "optax": 5.0, "jnp_autodiff": 2.5, "torch_eager": 10.0}
    times |= {"torch_eager_out": 10.0, "bound_copy": 1.0, "bound_read": 1.0}
    combined = {
        ("probs", "8x4096", setting, v): {"ok": True, "time": _harness.stats_dict([t / 1e3])}
        for setting in bench.SETTINGS
        for v, t in times.items()
    }
    rows = _report.check_targets(_report.summarize(combined))
    targets = {s: [r["target"] for r in rows if r["setting"] == s] for s in bench.SETTINGS}
    every = [
        "jaxce >= 2x faster than torch eager",
        "jaxce time <= optax (IQR ties)",
        "jaxce time <= jnp_autodiff (IQR ties)",
    ]
    assert targets == {
        "outside": every,
        "in_step": [*every, "jaxce <= 2.5x bound"],
        "forward": every,
    }
    assert all(r["met"] and r["targets"] == "probs" for r in rows)


def test_failed_variant_is_reported_not_raised():
    spec = _harness.Spec("no_such_variant", "outside", 8, 4, repeats=1, warmup=1, threads=1)
    result = _harness.run_child(spec, timeout_s=120)
    assert result["ok"] is False
    assert "no_such_variant" in result["error"]


@pytest.mark.parametrize(
    ("times", "met"),
    [
        pytest.param({"jaxce": 10.0, "torch_eager": 25.0, "optax": 12.0}, True, id="fast"),
        pytest.param({"jaxce": 20.0, "torch_eager": 25.0, "optax": 12.0}, False, id="slow"),
    ],
)
def test_check_targets_thresholds(times, met):
    cell = {v: {"ok": True, "time": _harness.stats_dict([t / 1e3])} for v, t in times.items()}
    summary = _report.summarize({("index", "8x4", "outside", v): r for v, r in cell.items()})
    rows = _report.check_targets(summary)
    assert [r["met"] for r in rows] == [met, met, None]  # jnp_autodiff did not run


def test_slower_than_a_peer_within_the_iqr_is_a_tie():
    """jaxce's median 5% above optax's: a tie when jaxce's IQR is 1.1 ms (limit 1 + 1.1 / 20),
    not when both IQRs are at most 0.5 ms (limit 1.025)."""

    def cell(jaxce_times):
        times = {"jaxce": jaxce_times, "optax": [19.5, 20.0, 20.5], "torch_eager": [50.0]}
        combined = {
            ("index", "8x4", "in_step", v): {"ok": True, "time": _harness.stats_dict(ts)}
            for v, ts in times.items()
        }
        rows = _report.check_targets(_report.summarize(combined))
        return next(r for r in rows if r["target"].startswith("jaxce time <= optax"))

    tie = cell([20.0, 21.0, 22.2])
    assert tie["value"] == pytest.approx(1.05) and tie["threshold"] == pytest.approx(1.055)
    assert tie["met"] is True
    slower = cell([20.99, 21.0, 21.01])
    assert slower["threshold"] == pytest.approx(1.025) and slower["met"] is False


def test_bad_shape_is_rejected():
    with pytest.raises(SystemExit) as exit:
        bench.parse_args(["--shapes", "64by16"])
    assert exit.value.code == 2


def test_target_lines_judge_each_measured_check_and_count_the_rest_in_one_line():
    cell = ("index", "8192x1000", "in_step")
    targets = [
        _report._target(cell, "jaxce time <= optax (IQR ties)", 0.9, 1.1, low=True),
        _report._target(cell, "jaxce >= 2x faster than torch eager", 1.5, 2.0),
        _report._target(cell, "jaxce >= 2x faster than torch eager", None, 2.0),
        _report._target(cell, "jaxce time <= jnp_autodiff (IQR ties)", None, 1.1, low=True),
        _report._target(cell, "jaxce >= 2x faster than torch eager", None, 2.0),
    ]
    assert bench.target_lines(targets) == [
        "MET     index    8192x1000  in_step jaxce time <= optax (IQR ties): 0.90 (limit 1.10)",
        "MISS    index    8192x1000  in_step jaxce >= 2x faster than torch eager: 1.50 "
        "(limit 2.00)",
        "not judged: 3 target checks whose variants were not run or failed (jaxce >= 2x faster "
        "than torch eager, jaxce time <= jnp_autodiff (IQR ties)); the JSON lists them with met "
        "null",
    ]


def test_quick_config_is_small():
    cfg = bench.parse_args(["--quick"])
    assert cfg.rounds == 1 and cfg.repeats <= 3
    assert cfg.settings == ("outside", "in_step", "forward") and cfg.targets == ("index",)
    assert len(bench.jobs(cfg)) <= 24


def test_forward_runs_only_its_variants():
    cfg = bench.parse_args(["--shapes", "8x4", "--settings", "forward", "--targets", "index"])
    assert [v for *_, v in bench.jobs(cfg)] == [
        "jaxce", "jnp_autodiff", "optax", "torch_eager", "torch_compile", "bound_read"
    ]  # fmt: skip


def test_smoothed_and_probability_targets_run_the_judged_variants():
    cfg = bench.parse_args(["--shapes", "8x4", "--settings", "in_step"])
    by_targets = {t: [v for tt, *_, v in bench.jobs(cfg) if tt == t] for t in cfg.targets}
    judged = ["jaxce", "jnp_autodiff", "optax", "torch_eager_out", "bound_copy"]
    assert by_targets == {
        "index": ["jaxce", "jaxce_autodiff", *judged[1:], "bound_exp"],
        "smoothed": judged,
        "probs": judged,
    }
    chosen = bench.parse_args(["--variants", "jaxce", "bound_exp", "--targets", "probs"])
    assert {v for *_, v in bench.jobs(chosen)} == {"jaxce", "bound_exp"}


@pytest.mark.parametrize("targets", _jax_variants.TARGETS)
def test_jax_variants_agree_with_torch(targets):
    """Every JAX loss of the benchmark, and torch's out= kernels, compute torch's loss and
    gradient for each kind of target."""
    import torch

    logits, target = _jax_variants.make_inputs(32, 8, seed=1, targets=targets)
    x = torch.tensor(np.asarray(logits), requires_grad=True)
    t = torch.tensor(np.asarray(target)).to(torch.float32 if targets == "probs" else torch.int64)
    reference = _torch_variants.prepare("torch_eager", "outside", x, t, targets)
    want = reference.loss_fn(x, t)
    (want_grad,) = torch.autograd.grad(want, x)
    want, want_grad = want.detach().numpy(), want_grad.numpy()
    for name in ("jaxce", "jaxce_autodiff", "jnp_autodiff", "optax"):
        got, grad = _jax_variants.prepare(name, "outside", logits, target, targets)[0].call()
        assert_close(got, want, dtype="float32", quantity="loss", context=name)
        assert_close(grad, want_grad, dtype="float32", quantity="grad", context=name)
    out = _torch_variants.prepare("torch_eager_out", "in_step", x, t, targets)
    assert_close(out.call().numpy(), want, dtype="float32", quantity="loss")
    assert_close(out.bufs[2].numpy(), want_grad, dtype="float32", quantity="grad")


def test_a_child_measures_probability_targets():
    spec = _harness.Spec("jaxce", "in_step", 16, 8, 1, 1, threads=1, targets="probs")
    result = _harness.run_child(spec, timeout_s=120)
    assert result["ok"], result
    assert result["time"]["repeats"] == 1 and not result["note"]


@pytest.mark.parametrize("variant", ["jaxce", "jnp_autodiff", "optax"])
def test_jax_forward_variants_return_the_loss(variant):
    logits, labels = _jax_variants.make_inputs(32, 8, seed=1)
    prepared, _, _ = _jax_variants.prepare(variant, "forward", logits, labels)
    expected = _jax_variants.prepare("optax", "outside", logits, labels)[0].call()[0]
    assert_close(prepared.call(), expected, dtype="float32", quantity="loss")


def test_torch_forward_is_the_no_grad_loss():
    logits, labels = _torch_variants.make_inputs(32, 8, seed=1)
    prepared = _torch_variants.prepare("torch_eager", "forward", logits, labels)
    loss = prepared.call()
    assert not loss.requires_grad and loss.grad_fn is None
    expected = _torch_variants.prepare("torch_eager", "outside", logits, labels).call()
    assert_close(loss.numpy(), expected.numpy(), dtype="float32", quantity="loss")


@pytest.mark.parametrize(
    ("variant", "setting", "classes", "reads", "writes", "exp_passes"),
    [
        pytest.param("bound_copy", "in_step", 40000, 1, 1, 0, id="bound-copy"),
        pytest.param("bound_read", "forward", 40000, 1, 0, 0, id="bound-read"),
        # The CPU memory plan (jaxce._xla_cpu). Rows longer than 32768 classes, in parts: max,
        # sum of exp, then the gradient (two exp passes, no (N, C) write but the gradient).
        pytest.param("jaxce", "in_step", 40000, 3, 1, 2, id="jaxce-step-split"),
        pytest.param("jaxce", "forward", 40000, 2, 0, 1, id="jaxce-forward-split"),
        # Up to 32768 classes, a step writes exp(x - m) once and the gradient reuses it (one
        # exp pass); the value alone writes nothing.
        pytest.param("jaxce", "in_step", 4096, 4, 2, 1, id="jaxce-step-shared-exp"),
        pytest.param("jaxce", "forward", 4096, 2, 0, 1, id="jaxce-forward-textbook"),
    ],
)
def test_profile_counts_passes_over_the_logits(
    variant, setting, classes, reads, writes, exp_passes
):
    """The HLO pass counter on real compiled variants (256 rows; 40000 classes: 2 parts)."""
    from benchmarks import _profile

    rows = _profile.passes(_jax_variants.hlo_text(variant, setting, 256, classes), 256, classes)
    assert (sum(r.reads for r in rows), sum(r.writes for r in rows)) == (reads, writes)
    assert sum(bool(r.exps) for r in rows) == exp_passes


def test_profile_reductions_table():
    from benchmarks import _profile

    table = _profile.reductions(total=1 << 17, repeats=1)
    assert [row[0] for row in table] == [1024, 8192, 32768, 65536, 131072]
    assert all(len(row) == 4 and min(row[1:]) > 0 for row in table)


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("loss", ["--help"]),
        ("loss", ["--shapes", "8x"]),
        ("loss", ["--shapes", "-5x10"]),
        ("loss", ["--repeats", "0"]),
        ("loss", ["--json", "no-such-dir/loss.json"]),
        ("train_epoch", ["--help"]),
        ("train_epoch", ["--batch-size", "x"]),
        ("train_epoch", ["--repeats", "0"]),
        ("train_epoch", ["--json", "benchmarks"]),
    ],
    ids=[
        "loss-help",
        "loss-bad-shape",
        "loss-negative-shape",
        "loss-no-repeats",
        "loss-json-in-missing-dir",
        "train_epoch-help",
        "train_epoch-bad-batch-size",
        "train_epoch-no-repeats",
        "train_epoch-json-is-a-dir",
    ],
)
def test_the_command_line_answers_before_importing_the_frameworks(module, argv):
    """--help and a bad flag answer at once: jax, optax and torch load only to measure."""
    imported, status, stderr = main_in_fresh_process(
        f"benchmarks.{module}", argv, ("jax", "optax", "torch", "matplotlib")
    )
    assert (imported, status) == ([], 0 if argv == ["--help"] else 2), stderr
    if status == 2:
        assert f"python -m benchmarks.{module}: error: " in stderr, stderr
