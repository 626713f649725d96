"""Fused linear + cross-entropy: jaxce against torch 2.13's own, time and peak memory.

``python -m benchmarks.linear [--quick] [--json FILE] [--classes C ...] [--dtypes ...]``

One training step of a language-model head: the mean cross-entropy of ``hidden @ W^T + b``
(hidden (N, D), integer labels) and its gradients w.r.t. hidden, W and b, in float32 and
bfloat16, for four variants (``benchmarks._linear_variants``): torch's reference path, torch's
chunked path (``LinearCrossEntropyOptions()``), jaxce's unfused path (the logits
materialised) and jaxce's fused ``linear_cross_entropy``.

Each (C, dtype, variant) runs in a fresh process pinned to ``--threads`` CPUs: a small matmul
warms the framework up, the inputs are made, then (JAX) the step is compiled (timed apart), a
first call is measured for memory, then ``--warmup`` calls and ``--repeats`` timed calls
(wall and process CPU seconds; medians). Memory (MiB): ``call_extra`` is the peak RSS growth
during the first call, i.e. the gradients plus every temporary (the inputs already exist);
on a GPU, the device's peak growth instead.

Targets (issue 12), at every C and dtype, for ``jaxce_fused``: memory at most 0.75x torch's
chunked path and at most 1.5x the kernel-gradient floor (C x D float32 values: 64 MiB at
C = 32768, D = 512); median time at most 0.5x torch's chunked path and at most 1.2x
``jaxce_unfused``. The JSON records the machine (CPU model, load, versions), every variant's
memory and time, and each target met or missed.

Exit status: 0 when every variant ran, whether the targets were met or not; 1 when any failed
(an error, out of memory or a timeout in its process; each is printed with its reason as it
ends, and the JSON is written all the same); 2 for a bad flag, refused before anything runs.
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

from benchmarks import _cli, _machine
from benchmarks import _harness as h
from benchmarks import _linear_variants as lv

EPILOG = __doc__.rstrip().split("\n\n")[-1]  # the exit statuses, for --help
DTYPES = ("float32", "bfloat16")
MIB = 2**20


@dataclass(frozen=True)
class Config:
    rows: int = 4096
    features: int = 512
    classes: tuple[int, ...] = (32768, 131072)
    dtypes: tuple[str, ...] = DTYPES
    variants: tuple[str, ...] = lv.VARIANTS
    chunk_size: int | None = None  # None: linear_cross_entropy's default
    row_chunk_size: int | None = None  # None: linear_cross_entropy's default
    repeats: int = 5
    warmup: int = 1
    threads: int = 2
    timeout_s: float = 3600.0
    json_path: str | None = None


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.linear", description=__doc__[:60], epilog=EPILOG
    )
    p.add_argument("--quick", action="store_true", help="N=1024, C=32768, float32, 2 repeats")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write everything here")
    p.add_argument("--classes", type=int, nargs="+", metavar="C", help="default: 32768 131072")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, help="default: both")
    p.add_argument("--variants", nargs="+", choices=lv.VARIANTS, help="default: all four")
    helps = {
        "rows": "N, the hidden states' rows (default 4096)",
        "features": "D (default 512)",
        "chunk_size": "linear_cross_entropy's chunk_size: classes per chunk where the gradients "
        "sweep class chunks (N <= C), else kernel columns per matmul (default: its own)",
        "row_chunk_size": "linear_cross_entropy's row_chunk_size (default: its own)",
        "repeats": "timed calls per variant (default 5)",
        "warmup": "untimed calls before them (default 1)",
        "threads": "CPUs each variant's process is pinned to (default 2)",
    }
    for name, text in helps.items():
        p.add_argument(_cli.flag(name), dest=name, type=int, metavar="INT", help=text)
    args = vars(p.parse_args(argv))
    quick = args.pop("quick")
    base = Config()
    if quick:
        base = Config(rows=1024, classes=(32768,), dtypes=("float32",), repeats=2, warmup=0)
    chosen = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if v is not None}
    _cli.check_counts(p, chosen, rows=1, features=1, classes=1, repeats=1, threads=1,
                      chunk_size=1, row_chunk_size=1, warmup=0)  # fmt: skip
    _cli.check_output_file(p, chosen.get("json_path"), partial=True)
    _cli.check_threads(p, chosen)
    _cli.check_no_repeats(p, chosen, "classes", "dtypes", "variants")
    cfg = Config(**{**asdict(base), **chosen})
    available = h.available_mib()
    big = max(cfg.rows, cfg.features)
    for classes in cfg.classes:  # the hidden states; the unfused logits, the kernel
        arrays = (("rows x features", cfg.rows, cfg.features), (f"{big} x {classes}", big, classes))
        for what, a, b in arrays:
            need = a * b * 4 / 2**20
            if available is not None and need > available:
                p.error(
                    f"--rows/--features/--classes must fit in memory, got {cfg.rows} x "
                    f"{cfg.features} x {classes} (a {what} float32 array alone takes "
                    f"{need / 1024:.1f} GiB, {available / 1024:.1f} GiB available): lower them"
                )
    return cfg


def _measure(spec: dict) -> dict:
    """One variant in this (fresh) process."""
    cpus = h.pin_threads(spec["threads"])
    lv.warm_up(spec["variant"], spec["dtype"], spec["threads"])
    idle = h.rss_mib()
    call, compile_s = lv.prepare(spec)
    inputs = h.rss_mib()
    h.reset_peak()
    before, device_before = h.rss_mib(), lv.device_peak_mib(spec["variant"])
    start = time.perf_counter()
    out = call()
    first_s = time.perf_counter() - start
    call_extra = h.peak_mib() - before
    device_after = lv.device_peak_mib(spec["variant"])
    value = lv.loss_value(out)
    del out
    for _ in range(spec["warmup"]):
        call()
    cpu: list[float] = []
    times = h.time_calls(call, spec["repeats"], cpu)
    return {
        "ok": True,
        "cpus": cpus,
        "compile_s": compile_s,
        "first_call_s": first_s,
        "time": h.stats_dict(times),
        "cpu_time": h.stats_dict(cpu),
        "loss": value,
        "memory_mib": {"idle": idle, "inputs": inputs - idle, "call_extra": call_extra},
        # on a GPU: the device's peak use after the first call (JAX cannot reset the peak)
        "device_peak_mib": device_after,
        "device_peak_before_mib": device_before,
    }


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


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def call_mib(result: dict) -> float:
    """A call's memory: the device's peak growth on a GPU, else the host's peak RSS growth."""
    if result.get("device_peak_mib") is not None:
        return result["device_peak_mib"] - (result.get("device_peak_before_mib") or 0.0)
    return result["memory_mib"]["call_extra"]


def summarize(results: dict, features: int) -> tuple[list[dict], list[dict]]:
    """Per (C, dtype): each variant's median time and call memory; the targets, met or not."""
    rows, targets = [], []
    for key, by_variant in results.items():
        c, dtype = key.split("/")
        c = int(c)
        ms = {v: r["time"]["median_ms"] for v, r in by_variant.items() if r.get("ok")}
        mib = {v: call_mib(r) for v, r in by_variant.items() if r.get("ok")}
        floor = c * features * 4 / MIB
        row = {"classes": c, "dtype": dtype, "median_ms": ms, "call_mib": mib,
               "floor_mib": floor}  # fmt: skip
        rows.append(row)
        fused_ms, fused_mib = ms.get("jaxce_fused"), mib.get("jaxce_fused")
        checks = [
            ("memory <= 0.75x torch chunked", _ratio(fused_mib, mib.get("torch_chunked")), 0.75),
            ("memory <= 1.5x kernel-gradient floor", _ratio(fused_mib, floor), 1.5),
            ("time <= 0.5x torch chunked", _ratio(fused_ms, ms.get("torch_chunked")), 0.5),
            ("time <= 1.2x jaxce unfused", _ratio(fused_ms, ms.get("jaxce_unfused")), 1.2),
        ]
        for name, ratio, limit in checks:
            met = None if ratio is None else ratio <= limit
            targets.append({"classes": c, "dtype": dtype, "target": name, "ratio": ratio,
                            "limit": limit, "met": met})  # fmt: skip
    return rows, targets


def table(rows: list[dict]) -> str:
    """The measured table, one line per (C, dtype): MiB and seconds of each variant."""
    head = "| C | dtype | " + " | ".join(v.replace("_", " ") for v in lv.VARIANTS) + " |"
    lines = [head, "|" + " --- |" * (2 + len(lv.VARIANTS))]
    for row in rows:
        cells = []
        for v in lv.VARIANTS:
            if v in row["median_ms"]:
                cells.append(f"{row['call_mib'][v]:.0f} MiB, {row['median_ms'][v] / 1e3:.2f} s")
            else:
                cells.append("-")
        lines.append(f"| {row['classes']} | {row['dtype']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _line(c: int, dtype: str, variant: str, result: dict) -> str:
    if not result.get("ok"):
        return f"C={c} {dtype} {variant}: failed: {result.get('error')}"
    mem, t = call_mib(result), result["time"]["median_ms"] / 1e3
    return f"C={c} {dtype} {variant}: {mem:.0f} MiB, {t:.2f} s"


def run(cfg: Config, on_result=None) -> dict:
    """Every (C, dtype, variant) in its own process; ``on_result(doc)`` after each one."""
    base = {k: v for k, v in asdict(cfg).items()
            if k not in ("classes", "dtypes", "variants", "json_path", "timeout_s")}  # fmt: skip
    jobs = [(c, d, v) for c in cfg.classes for d in cfg.dtypes for v in cfg.variants]
    results: dict = {}
    for c, dtype, variant in tqdm(jobs, desc="variants", unit="proc", disable=None):
        spec = {**base, "classes": c, "dtype": dtype, "variant": variant}
        result = _run_child(spec, cfg.timeout_s)
        results.setdefault(f"{c}/{dtype}", {})[variant] = result
        tqdm.write(_line(c, dtype, variant, result))
        if on_result is not None:
            on_result(_document(results, cfg))
    return _document(results, cfg)


def _document(results: dict, cfg: Config) -> dict:
    rows, targets = summarize(results, cfg.features)
    return {"summary": rows, "targets": targets, "table_markdown": table(rows),
            "results": results}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # the parent's own call: one variant's spec as JSON
        if len(argv) != 2:  # a usage error: exit status 2
            print(
                "python -m benchmarks.linear: error: --child is internal (one measurement's "
                "spec as JSON, from the parent process); run it without --child",
                file=sys.stderr,
            )
            raise SystemExit(2)
        return _child(argv[1])
    cfg = parse_args(argv)
    started, machine = time.time(), _machine.describe()
    head = {"command": "python -m benchmarks.linear " + " ".join(argv), "config": asdict(cfg),
            "machine": machine}  # fmt: skip
    out = run(cfg, on_result=h.partial_writer(cfg.json_path, head))
    machine["loadavg_end"] = list(os.getloadavg())
    doc = {**head, **out, "complete": True, "wall_s": time.time() - started}
    print(_machine.summary_line(machine))
    print(out["table_markdown"])
    for t in out["targets"]:
        ratio = "n/a" if t["ratio"] is None else f"{t['ratio']:.2f}"
        state = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        print(f"C={t['classes']} {t['dtype']}: {t['target']}: {ratio} ({state})")
    h.write_complete(cfg.json_path, doc)
    runs = [r for variants in out["results"].values() for r in variants.values()]
    failed = sum(not r.get("ok") for r in runs)
    if failed:
        print(
            f"python -m benchmarks.linear: error: {failed} of {len(runs)} variants failed "
            "(reasons above)",
            file=sys.stderr,
        )
        raise SystemExit(1)


if __name__ == "__main__":
    _cli.run_main(main, "python -m benchmarks.linear")
