"""report.json and report.md of the loss parity run, and its summary line."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from parity._compare import FAILED, PASSED, QUANTITIES
from parity._compare import INTENTIONAL as INTENTIONAL_STATUS
from parity._intentional import INTENTIONAL
from parity._tolerances import DTYPES, RULE, TOLERANCES

PAIRS = ("impl_vs_torch", "impl_vs_reference", "torch_vs_reference", "optax_vs_reference")


def jsonable(obj):
    """Replaces non-finite floats by the strings "inf", "-inf", "nan" (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def summary_line(counts: dict) -> str:
    """``N passed, M failed, K intentional differences`` (the terminal's last line)."""
    return (
        f"{counts[PASSED]} passed, {counts[FAILED]} failed, "
        f"{counts[INTENTIONAL_STATUS]} intentional differences"
    )


def worst(records, dtype: str, quantity: str, pair: str) -> float | None:
    """Largest normwise relative error of ``pair`` over the dtype's cases (None if none)."""
    values = []
    for r in records:
        if r["intentional"] or r["dtype"] != dtype:
            continue  # intentional differences have their own table
        s = r["errors"].get(quantity, {}).get(pair)
        if s and s.get("max_rel") is not None:
            values.append(math.inf if s["nonfinite_mismatch"] else s["max_rel"])
    return max(values) if values else None


def summarize(records: list[dict]) -> dict:
    counts = Counter(r["status"] for r in records)
    per_dtype = {}
    for dtype in DTYPES:
        rs = [r for r in records if r["dtype"] == dtype]
        closer = Counter(c for r in rs for c in r["closer"].values())
        per_dtype[dtype] = {
            "cases": len(rs),
            **{s: sum(r["status"] == s for r in rs) for s in (PASSED, FAILED, INTENTIONAL_STATUS)},
            "closer_to_float64": {
                "impl": closer["impl"],
                "torch": closer["torch"],
                "tie": closer["tie"],
            },
            "worst_max_rel": {q: {p: worst(rs, dtype, q, p) for p in PAIRS} for q in QUANTITIES},
        }
    return {
        "cases": len(records),
        PASSED: counts[PASSED],
        FAILED: counts[FAILED],
        INTENTIONAL_STATUS: counts[INTENTIONAL_STATUS],
        "line": summary_line(counts),
        "per_dtype": per_dtype,
        "failed_cases": [r["id"] for r in records if r["status"] == FAILED],
        "intentional_cases": [r["id"] for r in records if r["status"] == INTENTIONAL_STATUS],
    }


def tolerance_rows() -> list[dict]:
    """The rows of the one tolerance table that judge the loss parity report."""
    used = {kind + suffix for kind in QUANTITIES.values() for suffix in ("", "_vs_float64")}
    return [
        {"dtype": d, "quantity": q, "rtol": t.rtol, "atol": t.atol, "reason": t.reason}
        for (d, q), t in TOLERANCES.items()
        if q in used
    ]


def build_payload(records, *, config: dict, environment: dict, elapsed_s: float) -> dict:
    return {
        "kind": "loss-parity",
        "summary": summarize(records),
        "config": config,
        "environment": environment,
        "elapsed_s": round(elapsed_s, 2),
        "tolerance_rule": RULE,
        "tolerance_units": "unit = 1 for value; |cotangent| * max weight / divisor for "
        "grad_logits; 0 for grad_target. Quantities value -> loss, grad_* -> grad; pairs with "
        "the reference use the *_vs_float64 rows.",
        "tolerances": tolerance_rows(),
        "intentional_differences": INTENTIONAL,
        "cases": records,
    }


def write_json(payload: dict, path: Path) -> None:
    path.write_text(json.dumps(jsonable(payload), indent=1, allow_nan=False) + "\n")


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, str) or (isinstance(x, float) and not math.isfinite(x)):
        return "NaN/inf mismatch" if x in ("inf", math.inf) else str(x)
    return "0" if x == 0 else f"{x:.1e}"


def case_errors(r: dict, quantity: str) -> str:
    e = r["errors"].get(quantity)
    if not e:
        raised = r.get("raised") or {}
        if raised and quantity == "value":
            return "raised: " + ", ".join(f"{k} {v.split(':')[0]}" for k, v in raised.items())
        return "-"

    def one(pair):
        s = e.get(pair)
        if not s:
            return "-"
        return "NaN/inf≠" if s["nonfinite_mismatch"] else fmt(s["max_rel"])

    return " / ".join(one(p) for p in PAIRS[:3])


def markdown(payload: dict) -> str:
    s, cfg, env = payload["summary"], payload["config"], payload["environment"]
    impl = cfg["impl"]
    lines = [
        f"# Loss parity: `{impl}` vs `torch.nn.functional.cross_entropy`",
        "",
        f"**{s['line']}** ({s['cases']} cases, {'quick' if cfg['quick'] else 'full'} matrix, "
        f"seed {cfg['seed']}, {payload['elapsed_s']} s)",
        "",
        f"jax {env['jax']} ({env['jax_device']}), torch {env['torch']}, numpy {env['numpy']}, "
        f"optax {env['optax']}; git {env['git_commit']}{' (dirty)' if env['git_dirty'] else ''}",
        "",
        "Errors are max |err| / max |truth| over the case (normwise relative), the worst case "
        "per dtype, intentional differences excluded (they have their own table). *impl* is the "
        "implementation under test; *ref* the float64 reference rounded to the dtype.",
        "",
        "## Per dtype",
        "",
        "| dtype | cases | passed | failed | intentional | quantity | impl vs torch | "
        "impl vs ref | torch vs ref | optax vs ref |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype, d in s["per_dtype"].items():
        for i, q in enumerate(QUANTITIES):
            head = (
                f"{dtype} | {d['cases']} | {d[PASSED]} | {d[FAILED]} | {d[INTENTIONAL_STATUS]}"
                if i == 0
                else " | | | | "
            )
            w = d["worst_max_rel"][q]
            lines.append(f"| {head} | {q} | " + " | ".join(fmt(w[p]) for p in PAIRS) + " |")
    lines += [
        "",
        "## Closer to the float64 truth (quantities, per dtype)",
        "",
        "| dtype | impl closer | torch closer | tie |",
        "|---|---|---|---|",
    ]
    for dtype, d in s["per_dtype"].items():
        c = d["closer_to_float64"]
        lines.append(f"| {dtype} | {c['impl']} | {c['torch']} | {c['tie']} |")
    cases = payload["cases"]
    failed = [r for r in cases if r["status"] == FAILED]
    lines += ["", f"## Failures ({len(failed)})", ""]
    lines += [f"- `{r['id']}`: " + "; ".join(r["failures"]) for r in failed] or ["None."]
    lines += ["", "## Intentional differences", ""]
    for key, why in payload["intentional_differences"].items():
        lines.append(f"- **{key}**: {why}")
    lines += ["", "| case | status | value impl/torch vs ref | closer |", "|---|---|---|---|"]
    for r in cases:
        if r["intentional"]:
            e = r["errors"].get("value", {})
            pair = " / ".join(
                fmt(e.get(p, {}).get("max_rel"))
                if not e.get(p, {}).get("nonfinite_mismatch")
                else "NaN/inf≠"
                for p in PAIRS[1:3]
            )
            lines.append(
                f"| `{r['id']}` | {r['status']} | {pair} | "
                f"{', '.join(f'{q}: {c}' for q, c in r['closer'].items())} |"
            )
    lines += [
        "",
        "## Tolerances",
        "",
        f"Rule: {payload['tolerance_rule']}. {payload['tolerance_units']}",
        "",
        "| dtype | quantity | rtol | atol | reason |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {t['dtype']} | {t['quantity']} | {t['rtol']:.2g} | {t['atol']:.2g} | {t['reason']} |"
        for t in payload["tolerances"]
    ]
    lines += [
        "",
        "## All cases",
        "",
        "Each cell: impl vs torch / impl vs ref / torch vs ref.",
        "",
        "| case | status | value | grad logits | grad target |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r['id']}` | {r['status']} | {case_errors(r, 'value')} | "
        f"{case_errors(r, 'grad_logits')} | {case_errors(r, 'grad_target')} |"
        for r in cases
    ]
    return "\n".join(lines) + "\n"
