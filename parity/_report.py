"""report.json and report.md of the loss parity run, and its summary line.

The fused linear cases (group "linear") have a section of their own: their summary
(``summary["linear"]``), notes (``LINEAR_NOTES``) and case table; the dense tables and plots
hold the other cases.
"""

from __future__ import annotations

import errno
import json
import math
import os
from collections import Counter
from pathlib import Path

from parity._compare import FAILED, LINEAR_QUANTITIES, PASSED, QUANTITIES
from parity._compare import INTENTIONAL as INTENTIONAL_STATUS
from parity._intentional import INTENTIONAL
from parity._linear_cases import CLASS_CHUNK, LINEAR_DTYPES, ROW_CHUNK
from parity._tolerances import DTYPES, RULE, TOLERANCES
from training import _interrupt as interrupt

PAIRS = ("impl_vs_torch", "impl_vs_reference", "torch_vs_reference", "optax_vs_reference")
LINEAR_PATHS = ("reference", "chunked")
LINEAR_NOTES = (
    "impl is jaxce's fused loss: api `torch` is `jaxce.torch_linear_cross_entropy` with torch's "
    "linear_weight (C, *out_features, D); api `jax` is `jaxce.linear_cross_entropy` with the "
    "transposed kernel (D, C, *out_features), its kernel gradient transposed back. torch is "
    "`torch.nn.functional.linear_cross_entropy`; ref is logits = input @ linear_weight.T + "
    "linear_bias in float64, then the cross-entropy reference.",
    "torch path `reference` is options=None (linear, then cross_entropy); `chunked` is "
    "options=torch.nn.LinearCrossEntropyOptions(), which torch 2.13 runs for int64 class "
    "indices without label smoothing or out_features only (otherwise it warns and falls back "
    "to the reference path; the parity run turns that warning into an error, so every "
    "chunked case ran the chunked op).",
    f"jaxce runs with row_chunk_size={ROW_CHUNK} and chunk_size={CLASS_CHUNK}, so its row and "
    "class chunks are ragged: class-index cases without out_features (fewer rows than "
    "classes) form their gradients over class chunks, the others over row chunks; torch's "
    "chunked path picks 4 (float64, float32) or 8 (bfloat16) rows per chunk here.",
    "Quantities: value and the gradients w.r.t. input, linear weight, linear bias (when "
    "present) and probability targets (when the targets are probabilities). The class "
    "`weight` is not compared: torch 2.13 does not differentiate it (its reference path "
    "raises 'not differentiable with respect to argument weight' when it requires grad, "
    "its chunked path returns no gradient); jaxce's class-weight gradient is tested against "
    "autodiff of a plain reference in tests/test_linear_contract.py.",
    "A gradient formed by a matmul is judged with the tolerance rule's unit set to the "
    "largest sum of its terms' magnitudes (max |G| |W| for input, max |G|^T |input| for the "
    "linear weight, max sum_n |G| for the bias, G = d loss / d logits of the reference): a "
    "matmul's rounding error scales with that, not with the size of the sum.",
)


def git_text(env: dict) -> str:
    """The commit a report was made at, for people: its hash (and "(dirty)"), or why none."""
    if env["git_commit"] is None:
        return "(not a git checkout)"
    return f"{env['git_commit']}{' (dirty)' if env['git_dirty'] else ''}"


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


def is_linear(record: dict) -> bool:
    """Whether a record is a fused linear case."""
    return record["group"] == "linear"


def _linear_summary(records: list[dict]) -> dict:
    """Counts and worst errors of the fused linear cases, per dtype and torch path."""
    counts = Counter(r["status"] for r in records)
    rows = []
    for dtype in LINEAR_DTYPES:
        for path in LINEAR_PATHS:
            rs = [r for r in records if r["dtype"] == dtype and r["torch_path"] == path]
            if not rs:
                continue
            closer = Counter(c for r in rs for c in r["closer"].values())
            rows.append(
                {
                    "dtype": dtype,
                    "torch_path": path,
                    "cases": len(rs),
                    **{s: sum(r["status"] == s for r in rs) for s in (PASSED, FAILED,
                                                                        INTENTIONAL_STATUS)},
                    "closer_to_float64": {k: closer[k] for k in ("impl", "torch", "tie")},
                    "worst_max_rel": {
                        q: {p: worst(rs, dtype, q, p) for p in PAIRS[:3]}
                        for q in LINEAR_QUANTITIES
                    },
                }
            )  # fmt: skip
    return {
        "cases": len(records),
        **{s: counts[s] for s in (PASSED, FAILED, INTENTIONAL_STATUS)},
        "per_dtype_and_path": rows,
        "notes": list(LINEAR_NOTES),
    }


def summarize(records: list[dict]) -> dict:
    """Counts over every case; per-dtype tables of the dense cases; the linear section."""
    counts = Counter(r["status"] for r in records)
    linear = [r for r in records if is_linear(r)]
    dense = [r for r in records if not is_linear(r)]
    per_dtype = {}
    for dtype in DTYPES:
        rs = [r for r in dense if r["dtype"] == dtype]
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
        "linear": _linear_summary(linear),
        "failed_cases": [r["id"] for r in records if r["status"] == FAILED],
        "intentional_cases": [r["id"] for r in records if r["status"] == INTENTIONAL_STATUS],
    }


def tolerance_rows() -> list[dict]:
    """The rows of the one tolerance table that judge the loss parity report."""
    kinds = {*QUANTITIES.values(), *LINEAR_QUANTITIES.values()}
    used = {kind + suffix for kind in kinds for suffix in ("", "_vs_float64")}
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
        "grad_logits; 0 for grad_target; for the fused linear cases' grad_input, grad_weight "
        "and grad_bias the largest sum of the matmul's term magnitudes (see the linear "
        "section). Quantities value -> loss, grad_* -> grad; pairs with the reference use the "
        "*_vs_float64 rows.",
        "tolerances": tolerance_rows(),
        "intentional_differences": INTENTIONAL,
        "cases": records,
    }


def report_json(payload: dict) -> str:
    return json.dumps(jsonable(payload), indent=1, allow_nan=False) + "\n"


def write_reports(out: Path, texts: dict[str, str]) -> None:
    """Writes ``texts`` (file name -> text) into ``out`` as one set: every file to a temporary
    name first, then each renamed over its earlier version, so a write that fails (a full disk)
    leaves the earlier reports as they were and no temporary file behind. A signal that
    arrived during the run (``interrupt.check``) stops it here, before any is replaced."""
    interrupt.check()
    for name in texts:  # what a rename could not replace: refused before any is replaced
        target = out / name
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise IsADirectoryError(
                errno.EISDIR, "not a regular file, which the report would replace", str(target)
            )
    temporary = {name: out / f".{name}.tmp" for name in texts}
    try:
        for name, text in texts.items():
            temporary[name].write_text(text)
        for name, path in temporary.items():
            os.replace(path, out / name)
    finally:
        for path in temporary.values():  # none left behind, whatever failed
            path.unlink(missing_ok=True)


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, str) or (isinstance(x, float) and not math.isfinite(x)):
        return "NaN/inf mismatch" if x in ("inf", math.inf) else str(x)
    return "0" if x == 0 else f"{x:.1e}"


def _cell(s: dict | None) -> str:
    if not s:
        return "-"
    return "NaN/inf≠" if s["nonfinite_mismatch"] else fmt(s["max_rel"])


def _worst_rows(groups, quantities, pairs) -> list[list[str]]:
    """Per (group name cells, group) and quantity: the counts, then each pair's worst error.

    A group's name and counts stand on its first quantity's row only.
    """
    rows = []
    for names, d in groups:
        head = [*names, str(d["cases"]), str(d[PASSED]), str(d[FAILED]), str(d[INTENTIONAL_STATUS])]
        for i, q in enumerate(quantities):
            w = d["worst_max_rel"][q]
            rows.append((head if i == 0 else [""] * len(head)) + [q] + [fmt(w[p]) for p in pairs])
    return rows


DTYPE_HEADER = ["dtype", "cases", "passed", "failed", "intentional", "quantity", "impl vs torch",
                "impl vs ref", "torch vs ref", "optax vs ref"]  # fmt: skip
LINEAR_HEADER = ["dtype", "torch path", *DTYPE_HEADER[1:-1]]  # no optax column


def dtype_rows(payload: dict) -> list[list[str]]:
    """The per-dtype table: per dtype and quantity (header DTYPE_HEADER)."""
    groups = [((dtype,), d) for dtype, d in payload["summary"]["per_dtype"].items()]
    return _worst_rows(groups, QUANTITIES, PAIRS)


def linear_rows(payload: dict) -> list[list[str]]:
    """The linear section's table: per dtype, torch path and quantity (header LINEAR_HEADER)."""
    per = payload["summary"]["linear"]["per_dtype_and_path"]
    return _worst_rows(
        [((d["dtype"], d["torch_path"]), d) for d in per], LINEAR_QUANTITIES, PAIRS[:3]
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def case_errors(r: dict, quantity: str) -> str:
    e = r["errors"].get(quantity)
    if not e:
        raised = r.get("raised") or {}
        if raised and quantity == "value":
            return "raised: " + ", ".join(f"{k} {v.split(':')[0]}" for k, v in raised.items())
        return "-"

    return " / ".join(_cell(e.get(p)) for p in PAIRS[:3])


def scope(summary: dict, config: dict) -> str:
    """Which cases ran: "140 cases, quick matrix", or with ``--only`` "7 of the 140 cases of
    the quick matrix matching --only 'grid/*'"."""
    matrix = "quick" if config["quick"] else "full"
    if config.get("only") is None:
        return f"{summary['cases']} cases, {matrix} matrix"
    of = f" of the {config['matrix_cases']}" if config.get("matrix_cases") else ""
    return f"{summary['cases']}{of} cases of the {matrix} matrix matching --only {config['only']!r}"


def markdown(payload: dict) -> str:
    s, cfg, env = payload["summary"], payload["config"], payload["environment"]
    impl = cfg["impl"]
    lines = [
        f"# Loss parity: `{impl}` vs `torch.nn.functional.cross_entropy`",
        "",
        f"**{s['line']}** ({scope(s, cfg)}, seed {cfg['seed']}, {payload['elapsed_s']} s)",
        "",
        f"jax {env['jax']} ({env['jax_device']}), torch {env['torch']}, numpy {env['numpy']}, "
        f"optax {env['optax']}; git {git_text(env)}",
        "",
        "Errors are max |err| / max |truth| over the case (normwise relative), the worst case "
        "per dtype, intentional differences excluded (they have their own table). *impl* is the "
        "implementation under test; *ref* the float64 reference rounded to the dtype.",
        "",
        "## Per dtype",
        "",
        *markdown_table(DTYPE_HEADER, dtype_rows(payload)),
    ]
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
    lines += linear_markdown(payload)
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
        if not is_linear(r)
    ]
    linear = [r for r in cases if is_linear(r)]
    if linear:
        names = " | ".join(q.replace("_", " ") for q in LINEAR_QUANTITIES)
        lines += [
            "",
            "## All fused linear cases",
            "",
            "Each cell: impl vs torch / impl vs ref / torch vs ref.",
            "",
            f"| case | status | {names} |",
            "|---|---|" + "---|" * len(LINEAR_QUANTITIES),
        ]
        lines += [
            f"| `{r['id']}` | {r['status']} | "
            + " | ".join(case_errors(r, q) for q in LINEAR_QUANTITIES)
            + " |"
            for r in linear
        ]
    return "\n".join(lines) + "\n"


def linear_markdown(payload: dict) -> list[str]:
    """The fused linear section of report.md (summary, notes, per dtype and torch path)."""
    lin = payload["summary"]["linear"]
    if not lin["cases"]:
        return []
    lines = [
        "",
        "## Fused linear cross-entropy vs `torch.nn.functional.linear_cross_entropy`",
        "",
        f"**{summary_line(lin)}** ({lin['cases']} cases; worst case per dtype and torch path, "
        "intentional differences excluded)",
        "",
    ]
    lines += [f"- {note}" for note in lin["notes"]]
    lines += ["", *markdown_table(LINEAR_HEADER, linear_rows(payload))]
    return lines
