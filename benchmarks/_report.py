"""Summaries, target checks and the Markdown tables of the loss benchmark.

Every ratio is taken within one (targets, shape, setting) cell: against that setting's torch
eager reference (``REFERENCE``) and its bound (``BOUND``: ``bound_copy``, read+write, where a
gradient is written; ``bound_read``, one read of the inputs, for the loss value alone).
"""

from __future__ import annotations

import numpy as np

from benchmarks import _harness as h

# torch eager in each setting: its autograd call outside, its kernels with out= buffers in a step,
# its no_grad call for the loss alone.
REFERENCE = {"outside": "torch_eager", "in_step": "torch_eager_out", "forward": "torch_eager"}
# The limit of each setting: what the loss must at least do to memory (see benchmarks.loss).
BOUND = {"outside": "bound_copy", "in_step": "bound_copy", "forward": "bound_read"}
LARGE_C = 1000  # the "three large shapes" of the targets: C >= 1000
BOUND_TARGET = 2.5  # jaxce in a step at most this multiple of bound_copy (large shapes)
PEERS = ("optax", "jnp_autodiff")  # jaxce is never slower than these (ties within the IQR)


def shape_key(n: int, c: int) -> str:
    return f"{n}x{c}"


def combine(records: list[dict]) -> dict:
    """Pools the timings of one (shape, setting, variant) over rounds into one result."""
    ok = [r for r in records if r.get("ok")]
    if not ok:
        return {"ok": False, "error": records[-1].get("error", "no result")}
    times = [t for r in ok for t in r["times_ms"]]
    compiles = [r["compile_s"] for r in ok if r.get("compile_s") is not None]
    mems = [r["memory_mib"] for r in ok if r.get("memory_mib")]
    memory = None
    if mems:
        memory = {k: float(np.median([m[k] for m in mems])) for k in mems[0]}
    return {
        "ok": True,
        "time": h.stats_dict([t / 1e3 for t in times]),
        "cpu_median_ms": float(np.median([r["cpu_time"]["median_ms"] for r in ok])),
        "compile_s": float(np.median(compiles)) if compiles else None,
        "memory_mib": memory,
        "rounds": len(ok),
        "notes": sorted({r["note"] for r in ok if r.get("note")}),
    }


def _ratios(setting: str, cell: dict[str, dict]) -> dict:
    med = {v: r["time"]["median_ms"] for v, r in cell.items() if r.get("ok")}
    out = {
        "median_ms": med,
        "iqr_ms": {v: r["time"]["iqr_ms"] for v, r in cell.items() if r.get("ok")},
        "min_ms": {v: r["time"]["min_ms"] for v, r in cell.items() if r.get("ok")},
        "cpu_median_ms": {v: r["cpu_median_ms"] for v, r in cell.items() if "cpu_median_ms" in r},
        "call_extra_mib": {
            v: r["memory_mib"]["call_extra"] for v, r in cell.items() if r.get("memory_mib")
        },
        "process_peak_mib": {
            v: r["memory_mib"]["process_peak"] for v, r in cell.items() if r.get("memory_mib")
        },
        "compile_s": {v: r["compile_s"] for v, r in cell.items() if r.get("compile_s")},
        "failed": {v: r["error"] for v, r in cell.items() if not r.get("ok")},
    }
    ref = REFERENCE[setting]
    if ref in med:
        out["torch_eager_reference"] = ref
        out["speedup_vs_torch_eager"] = {v: med[ref] / t for v, t in med.items()}
    bound = out["bound"] = BOUND[setting]
    if bound in med:
        out[f"x_{bound}"] = {v: t / med[bound] for v, t in med.items()}
    for peer in PEERS:
        if peer in med:
            out[f"x_{peer}"] = {v: t / med[peer] for v, t in med.items()}
    return out


def summarize(combined: dict[tuple[str, str, str, str], dict]) -> dict:
    """{targets: {shape: {setting: ratios}}} from {(targets, shape, setting, variant): result}."""
    cells: dict[str, dict[str, dict[str, dict[str, dict]]]] = {}
    for (targets, shape, setting, variant), result in combined.items():
        by_shape = cells.setdefault(targets, {}).setdefault(shape, {})
        by_shape.setdefault(setting, {})[variant] = result
    return {
        t: {s: {st: _ratios(st, c) for st, c in by.items()} for s, by in shapes.items()}
        for t, shapes in cells.items()
    }


def check_targets(summary: dict) -> list[dict]:
    """The targets of every cell, each with its measured value, limit and whether it is met.

    "No slower than" a peer allows for noise: the limit on jaxce's time over the peer's is
    1 + (the larger of the two IQRs) / (the peer's median).
    """
    rows = []
    for targets, by_shape in summary.items():
        for shape, by_setting in by_shape.items():
            large = int(shape.split("x")[1]) >= LARGE_C
            for setting, r in by_setting.items():
                cell = (targets, shape, setting)
                speed = r.get("speedup_vs_torch_eager", {}).get("jaxce")
                rows.append(_target(cell, "jaxce >= 2x faster than torch eager", speed, 2.0))
                for peer in PEERS:
                    ratio, limit = r.get(f"x_{peer}", {}).get("jaxce"), 1.0
                    if ratio is not None and "jaxce" in r["iqr_ms"]:
                        noise = max(r["iqr_ms"]["jaxce"], r["iqr_ms"][peer])
                        limit = 1.0 + noise / r["median_ms"][peer]
                    name = f"jaxce time <= {peer} (IQR ties)"
                    rows.append(_target(cell, name, ratio, limit, low=True))
                if large and setting == "in_step":
                    name = f"jaxce <= {BOUND_TARGET}x bound"
                    rows.append(_target(cell, name, _x_bound(r), BOUND_TARGET, low=True))
    return rows


def _x_bound(r: dict) -> float | None:
    """jaxce's time as a multiple of its setting's bound (None where the bound did not run)."""
    return r.get(f"x_{r['bound']}", {}).get("jaxce")


def _pick(r: dict, table: str, key: str) -> float | None:
    value = r.get(table, {}).get(key)
    return None if value is None else round(value, 3)


def _cells(summary: dict):
    """(targets, shape, setting, ratios) of every cell, in the summary's order."""
    for targets, by_shape in summary.items():
        for shape, by_setting in by_shape.items():
            for setting, r in by_setting.items():
                yield targets, shape, setting, r


def headline(summary: dict) -> list[dict]:
    """One compact row per (targets, shape, setting): the numbers a closing note quotes."""
    rows = []
    for targets, shape, setting, r in _cells(summary):
        med, mem = r["median_ms"], r["call_extra_mib"]
        ref = REFERENCE[setting]
        rows.append(
            {
                "targets": targets,
                "shape": shape,
                "setting": setting,
                "ms": {v: round(t, 3) for v, t in med.items()},
                "iqr_ms": {v: round(t, 3) for v, t in r["iqr_ms"].items()},
                "jaxce_speedup_vs_torch_eager": _pick(r, "speedup_vs_torch_eager", "jaxce"),
                "jaxce_x_optax": _pick(r, "x_optax", "jaxce"),
                "jaxce_x_jnp_autodiff": _pick(r, "x_jnp_autodiff", "jaxce"),
                "bound": r["bound"],
                f"jaxce_x_{r['bound']}": _pick(r, f"x_{r['bound']}", "jaxce"),
                "jaxce_autodiff_x_jaxce": (
                    round(med["jaxce_autodiff"] / med["jaxce"], 3)
                    if {"jaxce", "jaxce_autodiff"} <= set(med)
                    else None
                ),
                "call_extra_mib": {
                    v: round(mem[v]) for v in ("jaxce", "jaxce_autodiff", "optax", ref) if v in mem
                },
            }
        )
    return rows


def _target(cell, name, value, threshold, *, low=False) -> dict:
    met = None if value is None else (value <= threshold if low else value >= threshold)
    targets, shape, setting = cell
    return {
        "targets": targets,
        "shape": shape,
        "setting": setting,
        "target": name,
        "value": value,
        "threshold": threshold,
        "met": met,
    }


def markdown(summary: dict, variants: list[str]) -> str:
    """One table: median ms (IQR) per variant, speed-up vs torch eager and x bound for jaxce.

    The last column names the setting's bound: ``2.10 (copy)`` is 2.10x ``bound_copy``. The
    first column names the targets (``index``, ``smoothed``, ``probs``); variants that ran for
    no kind of target are left out.
    """
    ran = {v for *_, r in _cells(summary) for v in (*r["median_ms"], *r["failed"])}
    variants = [v for v in variants if v in ran]
    head = ["targets", "shape", "setting", *variants, "jaxce vs torch eager", "jaxce / bound"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for targets, shape, setting, r in _cells(summary):
        cells = []
        for v in variants:
            if v in r["median_ms"]:
                cells.append(f"{r['median_ms'][v]:.1f} ({r['iqr_ms'][v]:.1f})")
            else:
                cells.append("failed" if v in r["failed"] else "-")
        speed = r.get("speedup_vs_torch_eager", {}).get("jaxce")
        bound, name = _x_bound(r), r["bound"].removeprefix("bound_")
        cells.append("-" if speed is None else f"{speed:.2f}x")
        cells.append("-" if bound is None else f"{bound:.2f} ({name})")
        lines.append("| " + " | ".join([targets, shape, setting, *cells]) + " |")
    return "\n".join(lines)


def memory_markdown(summary: dict, variants: list[str]) -> str:
    """Peak RSS growth during one call (MiB) per variant: output plus temporaries."""
    head = ["targets", "shape", "setting", *variants]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for targets, shape, setting, r in _cells(summary):
        mem = r["call_extra_mib"]
        cells = [f"{mem[v]:.0f}" if v in mem else "-" for v in variants]
        lines.append("| " + " | ".join([targets, shape, setting, *cells]) + " |")
    return "\n".join(lines)
