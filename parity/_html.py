"""report.html: one self-contained page (inline CSS and PNG plots, no external resources)."""

from __future__ import annotations

import html

from parity._compare import FAILED, LINEAR_QUANTITIES, PASSED, QUANTITIES
from parity._plots import closeness_scatter, error_histograms
from parity._report import (
    DTYPE_HEADER,
    LINEAR_HEADER,
    PAIRS,
    case_errors,
    dtype_rows,
    fmt,
    git_text,
    is_linear,
    linear_rows,
    scope,
    summary_line,
)
from parity._tolerances import DTYPES

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px;font-size:12px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f1f1f1}
tr.failed td{background:#fde2e2} tr.intentional td{background:#fff4d6}
code{font-size:12px} img{max-width:100%} .big{font-size:20px;font-weight:600}
details{margin:8px 0}
"""


def page(title: str, body: list[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f" class='{classes[i]}'" if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def img(png_base64: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{png_base64}'>"


def loss_html(payload: dict) -> str:
    """The loss parity page: summary, per-dtype errors, plots, intentional, failures, all cases."""
    s, cfg, env = payload["summary"], payload["config"], payload["environment"]
    impl, cases = cfg["impl"], payload["cases"]
    esc = html.escape
    body = [
        f"<h1>Loss parity: <code>{esc(impl)}</code> vs torch</h1>",
        f"<p class='big'>{esc(s['line'])}</p>",
        f"<p>{esc(scope(s, cfg))}, seed "
        f"{cfg['seed']}, {payload['elapsed_s']} s. jax {esc(env['jax'])} on "
        f"{esc(env['jax_device'])}, torch {esc(env['torch'])}, numpy {esc(env['numpy'])}, optax "
        f"{esc(env['optax'])}; CPU {esc(env['cpu'])}; git <code>{esc(git_text(env))}</code>.</p>",
        "<p>Errors are max |err| / max |truth| per case (normwise relative); <i>impl</i> is the "
        "implementation under test, <i>ref</i> the float64 reference rounded to the dtype.</p>",
        "<h2>Per dtype (worst case; intentional differences excluded)</h2>",
    ]
    body.append(table(DTYPE_HEADER, dtype_rows(payload)))
    body.append(
        table(
            ["dtype", "impl closer to float64", "torch closer", "tie"],
            [
                [dtype, *(str(d["closer_to_float64"][k]) for k in ("impl", "torch", "tie"))]
                for dtype, d in s["per_dtype"].items()
            ],
        )
    )
    dense = [r for r in cases if not is_linear(r)]
    linear = [r for r in cases if is_linear(r)]
    body += [
        "<h2>Error distribution per dtype</h2>",
        img(error_histograms(dense, DTYPES, "impl"), "error histograms"),
        img(closeness_scatter(dense, DTYPES, "impl"), "who is closer"),
    ]
    body += _linear_section(payload)
    failed = [r for r in cases if r["status"] == FAILED]
    body.append(f"<h2>Failures ({len(failed)})</h2>")
    body.append(
        table(
            ["case", "reasons"],
            [[f"<code>{esc(r['id'])}</code>", esc("; ".join(r["failures"]))] for r in failed],
        )
        if failed
        else "<p>None.</p>"
    )
    body.append(
        "<h2>Intentional differences</h2><ul>"
        + "".join(
            f"<li><b>{esc(k)}</b>: {esc(v)}</li>"
            for k, v in payload["intentional_differences"].items()
        )
        + "</ul>"
    )
    inten = [r for r in cases if r["intentional"]]
    body.append(
        table(
            ["case", "status", "value: impl/torch/optax vs ref", "closer"],
            [
                [
                    f"<code>{esc(r['id'])}</code>",
                    r["status"],
                    esc(
                        " / ".join(
                            "NaN/inf≠"
                            if (r["errors"].get("value", {}).get(p) or {}).get("nonfinite_mismatch")
                            else fmt((r["errors"].get("value", {}).get(p) or {}).get("max_rel"))
                            for p in PAIRS[1:]
                        )
                    ),
                    esc(", ".join(f"{q}: {c}" for q, c in r["closer"].items())),
                ]
                for r in inten
            ],
        )
    )
    body.append("<h2>Tolerances</h2><p>" + esc(payload["tolerance_rule"]) + "</p>")
    body.append(
        table(
            ["dtype", "quantity", "rtol", "atol", "reason"],
            [
                [
                    t["dtype"],
                    t["quantity"],
                    f"{t['rtol']:.2g}",
                    f"{t['atol']:.2g}",
                    esc(t["reason"]),
                ]
                for t in payload["tolerances"]
            ],
        )
    )
    body.append(
        f"<details><summary><b>All {len(cases)} cases</b> (each cell: impl vs torch / "
        "impl vs ref / torch vs ref)</summary>"
    )
    body.append(
        table(
            ["case", "status", "value", "grad logits", "grad target"],
            [
                [
                    f"<code>{esc(r['id'])}</code>",
                    r["status"],
                    *(esc(case_errors(r, q)) for q in QUANTITIES),
                ]
                for r in dense
            ],
            [r["status"] if r["status"] != PASSED else "" for r in dense],
        )
    )
    body.append("</details>")
    if linear:
        body.append(
            f"<details><summary><b>All {len(linear)} fused linear cases</b> (each cell: impl vs "
            "torch / impl vs ref / torch vs ref)</summary>"
        )
        body.append(
            table(
                ["case", "status", *(q.replace("_", " ") for q in LINEAR_QUANTITIES)],
                [
                    [
                        f"<code>{esc(r['id'])}</code>",
                        r["status"],
                        *(esc(case_errors(r, q)) for q in LINEAR_QUANTITIES),
                    ]
                    for r in linear
                ],
                [r["status"] if r["status"] != PASSED else "" for r in linear],
            )
        )
        body.append("</details>")
    return page(f"Loss parity: {impl}", body)


def _linear_section(payload: dict) -> list[str]:
    """The fused linear section: summary line, notes, worst errors per dtype and torch path."""
    lin = payload["summary"]["linear"]
    if not lin["cases"]:
        return []
    esc = html.escape
    return [
        "<h2>Fused linear cross-entropy vs <code>torch.nn.functional.linear_cross_entropy"
        "</code></h2>",
        f"<p class='big'>{esc(summary_line(lin))}</p>",
        "<ul>" + "".join(f"<li>{esc(note)}</li>" for note in lin["notes"]) + "</ul>",
        table(LINEAR_HEADER, [[esc(c) for c in row] for row in linear_rows(payload)]),
    ]
