"""Fused linear + cross-entropy against the unfused jit path: time and peak memory.

``python -m benchmarks.linear [--quick] [--json FILE]``

Both variants compute, in float32, the mean cross-entropy of ``hidden @ kernel + bias``
(hidden (N, D), kernel (D, C), bias (C,), integer labels) and its gradients w.r.t. hidden,
kernel and bias, in one ``jax.jit(jax.value_and_grad(...))`` step:

- ``fused``: ``jaxce.loss.linear_cross_entropy(hidden, kernel, labels, bias=bias)``;
- ``unfused``: ``jaxce.loss.cross_entropy(hidden @ kernel + bias, labels)``, the path XLA
  compiles when the logits are materialised.

Each (C, variant) runs in a fresh process pinned to ``--threads`` CPUs (``benchmarks._harness``):
compile (timed apart), one first call, ``--warmup`` calls, then ``--repeats`` timed calls
(wall and process CPU seconds; medians). Memory (MiB): ``call_extra`` is the peak RSS growth
during the first call, i.e. the gradients plus every temporary (the inputs already exist);
``xla_temp`` / ``xla_output`` come from XLA's compiled memory analysis; on GPUs the device's
peak bytes in use is reported too. Ratios are fused / unfused; the targets of issue 4 are
``call_extra`` at most 1/8 and median time at most 1.5x at C = 131072.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from tqdm import tqdm

from benchmarks import _harness as h

VARIANTS = ("fused", "unfused")


@dataclass(frozen=True)
class Config:
    rows: int = 4096
    features: int = 512
    classes: tuple[int, ...] = (32768, 131072)
    chunk_size: int | None = None  # None: linear_cross_entropy's default
    repeats: int = 5
    warmup: int = 1
    threads: int = 2
    timeout_s: float = 1800.0
    json_path: str | None = None


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="python -m benchmarks.linear", description=__doc__[:60])
    p.add_argument("--quick", action="store_true", help="N=1024, C=32768, 2 repeats (~1 min)")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write everything here")
    p.add_argument("--classes", type=int, nargs="+", metavar="C")
    for name in ("rows", "features", "chunk_size", "repeats", "warmup", "threads"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, metavar="INT")
    args = vars(p.parse_args(argv))
    quick = args.pop("quick")
    base = Config(rows=1024, classes=(32768,), repeats=2, warmup=0) if quick else Config()
    chosen = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if v is not None}
    for name in ("rows", "features", "repeats", "threads"):
        if chosen.get(name, 1) < 1:
            p.error(f"--{name} must be >= 1, got {chosen[name]}")
    return Config(**{**asdict(base), **chosen})


def _measure(spec: dict) -> dict:
    """One variant in this (fresh) process."""
    cpus = h.pin_threads(spec["threads"])
    import jax
    import jax.numpy as jnp

    from jaxce import loss

    jnp.ones(8).block_until_ready()
    idle = h.rss_mib()
    n, d, c = spec["rows"], spec["features"], spec["classes"]
    kh, kk, kb, ky = jax.random.split(jax.random.key(0), 4)
    args = jax.block_until_ready(
        (
            jax.random.normal(kh, (n, d)),
            jax.random.normal(kk, (d, c)) / d**0.5,
            jax.random.normal(kb, (c,)) * 0.1,
            jax.random.randint(ky, (n,), 0, c),
        )
    )
    inputs = h.rss_mib()

    def fused(hidden, kernel, bias, labels):
        return loss.linear_cross_entropy(
            hidden, kernel, labels, bias=bias, chunk_size=spec["chunk_size"]
        )

    def unfused(hidden, kernel, bias, labels):
        return loss.cross_entropy(hidden @ kernel + bias, labels)

    fn = fused if spec["variant"] == "fused" else unfused
    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2))).lower(*args).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    h.reset_peak()
    before = h.rss_mib()
    device_before = _device_peak(jax)
    value, grads = jax.block_until_ready(compiled(*args))
    call_extra = h.peak_mib() - before
    device_peak = _device_peak(jax)
    for _ in range(spec["warmup"]):
        jax.block_until_ready(compiled(*args))
    cpu: list[float] = []
    times = h.time_calls(lambda: jax.block_until_ready(compiled(*args)), spec["repeats"], cpu)
    mib = 1 / 2**20
    return {
        "ok": True,
        "cpus": cpus,
        "device": str(jax.devices()[0]),
        "compile_s": compile_s,
        "time": h.stats_dict(times),
        "cpu_time": h.stats_dict(cpu),
        "loss": float(value),
        "grad_abs_sums": [float(jnp.abs(g).sum()) for g in grads],
        "memory_mib": {
            "idle": idle,
            "inputs": inputs - idle,
            "call_extra": call_extra,
            "process_peak": h.peak_mib() - idle,
            "xla_temp": None if analysis is None else analysis.temp_size_in_bytes * mib,
            "xla_output": None if analysis is None else analysis.output_size_in_bytes * mib,
            "device_peak": None if device_peak is None else device_peak - (device_before or 0),
        },
    }


def _device_peak(jax) -> float | None:
    stats = jax.local_devices()[0].memory_stats()
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def _child(spec_json: str) -> None:
    try:
        result = _measure(json.loads(spec_json))
    except Exception as err:  # reported, never raised: the parent records the failure
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"[:2000]}
    h.emit(result)


def _run_child(spec: dict, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.linear", "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=h.child_env(spec["threads"]),
            timeout=timeout_s, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(h.RESULT_MARKER):
            return json.loads(line[len(h.RESULT_MARKER) :])
    return {"ok": False, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-600:]}"}


def summarize(results: dict) -> list[dict]:
    """Per C: fused / unfused ratios of median time and call memory, and the targets."""
    rows = []
    for c, by_variant in results.items():
        f, u = by_variant.get("fused", {}), by_variant.get("unfused", {})
        if not (f.get("ok") and u.get("ok")):
            rows.append({"classes": c, "ok": False})
            continue
        fm, um = f["memory_mib"], u["memory_mib"]
        row = {
            "classes": c,
            "ok": True,
            "fused_ms": f["time"]["median_ms"],
            "unfused_ms": u["time"]["median_ms"],
            "time_ratio": f["time"]["median_ms"] / u["time"]["median_ms"],
            "cpu_time_ratio": f["cpu_time"]["median_ms"] / u["cpu_time"]["median_ms"],
            "fused_call_mib": fm["call_extra"],
            "unfused_call_mib": um["call_extra"],
            "memory_ratio": fm["call_extra"] / um["call_extra"],
            "xla_temp_mib": [fm["xla_temp"], um["xla_temp"]],
            "loss_rel_diff": abs(f["loss"] - u["loss"]) / abs(u["loss"]),
        }
        if c == 131072:
            row["target_memory_met"] = row["memory_ratio"] <= 1 / 8
            row["target_time_met"] = row["time_ratio"] <= 1.5
        rows.append(row)
    return rows


def run(cfg: Config) -> dict:
    base = {k: v for k, v in asdict(cfg).items() if k not in ("classes", "json_path", "timeout_s")}
    jobs = [(c, v) for c in cfg.classes for v in VARIANTS]
    results: dict = {}
    for c, variant in tqdm(jobs, desc="variants", unit="proc"):
        spec = {**base, "classes": c, "variant": variant}
        results.setdefault(c, {})[variant] = _run_child(spec, cfg.timeout_s)
    return {"summary": summarize(results), "results": results}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1])
    cfg = parse_args(argv)
    started, load = time.time(), os.getloadavg()
    out = run(cfg)
    doc = {"command": "python -m benchmarks.linear " + " ".join(argv), "config": asdict(cfg)}
    doc.update(out, loadavg=[load, os.getloadavg()], wall_s=time.time() - started)
    print(json.dumps(out["summary"], indent=1))
    h.write_json(cfg.json_path, doc)


if __name__ == "__main__":
    main()
