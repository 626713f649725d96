"""report.json, report.md and report.html of the training parity run, and its summary line."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from parity._html import img, page, table
from parity._plots import place, to_png_base64
from parity._report import git_text, report_json
from parity._report import write_reports as write_report_files

DERIVATION = (
    "Both runs are the same float32 algorithm and differ from the exact (float64) trajectory "
    "only by rounding, which Adam carries forward. torch is also run in float64 from the same "
    "weights and batches; E_k = max over j <= k of |L32_torch(j) - L64_torch(j)| is the largest "
    "loss error float32 rounding has produced by step k. Triangle inequality: |L_jax - L_torch| "
    "<= |L_jax - L64| + |L_torch - L64| ~ 2 E_k for two float32 pipelines of equal accuracy; "
    "a further factor 2 lets the two error sequences peak at different steps. Step k passes "
    "when |L_jax(k) - L_torch(k)| <= 4 E_k + 4 ulp32(L_torch(k)) (the second term: a float32 "
    "loss's resolution; before any step both losses come from the same weights). ReLU "
    "decisions are shared: a pre-activation within float32 rounding of 0 (|z| <= 2 gamma_785 "
    "(sum |W x| + |b|)) may fall on either side of the kink in a float32 run, and the side "
    "taken moves that unit's gradient by a whole example's contribution, which Adam turns into "
    "steps of up to lr; which framework flips is luck. Both torch runs therefore take JAX's "
    "decision where theirs differs within that band (outside it they keep their own, counted "
    "as refused), so all runs differ by rounding only. A float64 run with its own ReLU "
    "decisions is shown for information. Final parameters pass per element when "
    "|P_jax - P_torch| <= 4 max |P_torch - P64| + 4 ulp32(max |P_torch|) + 2 allowance: Adam's "
    "step is scale-free, so a weight whose gradient stays within about eps of 0 moves by about "
    "lr Delta / eps per step for a gradient rounding error Delta. The allowance bounds that "
    "along the float64 run from its Adam state, with Delta = 4 max(1, c0) u A, A the "
    "element's rounding magnitude (the network run on |x|, |W|) and c0 the largest "
    "|g_torch32 - g64| / (u A) of the first step; the tables give each tensor's worst element."
)
ADAM_NOTE = (
    "The JAX side uses optax's Adam with the bias corrections 1 - beta^t computed as "
    "-expm1(t log beta), accurate to a few float32 ulp like torch's float64 ones. optax.adam "
    "as shipped computes 1 - beta2^t in float32 from float32(0.999) = 0.99900001287, off by "
    "1.3e-5 relative at t = 1 (about 100 float32 eps); its curve is shown for information and "
    "is not a pass/fail criterion."
)


def summary_line(payload: dict) -> str:
    s = payload["summary"]
    return (
        f"{s['passed']} passed, {s['failed']} failed ({s['steps_passed']} of {s['steps']} "
        f"training steps and {s['tensors_passed']} of {s['tensors']} parameter tensors "
        "within the derived tolerance)"
    )


def write_reports(payload: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    texts = {"report.json": report_json(payload), "report.md": markdown(payload)}
    write_report_files(out, {**texts, "report.html": training_html(payload)})


def _facts(payload: dict) -> list[tuple[str, str]]:
    s, env, cfg = payload["summary"], payload["environment"], payload["config"]
    return [
        ("data", f"{cfg['data_dir']} ({s['train_examples']} train / {s['test_examples']} test)"),
        ("steps / batch / seed", f"{s['steps']} / {cfg['batch_size']} / {cfg['seed']}"),
        ("max |L_jax - L_torch|", f"{s['max_abs_loss_diff']:.3g} (step {s['argmax_step']})"),
        ("max |L_jax - L_torch| / tolerance", f"{s['max_ratio']:.3g}"),
        ("first failing step", str(s["first_failing_step"])),
        ("c0 (first step's max |g_torch32 - g64| / (u A))", f"{s['rounding_ratio']:.3g}"),
        ("max |L_torch32 - L_torch64|", f"{s['max_torch32_vs_64']:.3g}"),
        ("max |L_jax(optax.adam) - L_torch|", f"{s['max_abs_loss_diff_optax_adam']:.3g}"),
        (
            "ReLU decisions taken from JAX / refused (torch, torch float64)",
            " / ".join(
                f"{s['relu_adopted'][k]} / {s['relu_refused'][k]}" for k in s["relu_adopted"]
            ),
        ),
        (
            "max |L_jax - L_torch64(own ReLU decisions)|",
            f"{s['max_abs_loss_diff_float64_own_relu']:.3g}",
        ),
        (
            "max |w1_jax - w1_torch64(own ReLU decisions)|",
            f"{s['max_abs_param_diff_float64_own_relu']['w1']:.3g}",
        ),
        (
            "test accuracy jax / torch / torch float64 / jax optax.adam / torch float64 own ReLU",
            " / ".join(f"{a:.4f}" for a in s["test_accuracy"].values()),
        ),
        (
            "matmul precision",
            f"jax {env['jax_default_matmul_precision']}, torch "
            f"{env['torch_float32_matmul_precision']} (TF32 {env['torch_allow_tf32']})",
        ),
        (
            "versions",
            f"jax {env['jax']}, flax {env['flax']}, optax {env['optax']}, torch "
            f"{env['torch']}, numpy {env['numpy']}",
        ),
        (
            "device",
            f"{env['jax_device']} / torch cpu ({env['torch_num_threads']} thread); "
            f"CPU {env['cpu']}",
        ),
        ("git", git_text(env)),
        (
            "seconds jax / torch / torch64 / jax optax.adam / torch64 own ReLU",
            " / ".join(f"{t:.1f}" for t in s["seconds"].values()),
        ),
    ]


def _param_rows(payload: dict) -> list[list[str]]:
    return [
        [
            name,
            f"{p['max_abs_jax_vs_torch']:.3g}",
            f"{p['tolerance']:.3g}",
            f"{p['max_ratio']:.3g}",
            f"{p['base_tolerance']:.3g}",
            f"{p['max_allowance']:.3g}",
            "ok" if p["ok"] else "FAILED",
            f"{p['max_abs_jax_vs_float64']:.3g}",
            f"{p['max_abs_torch_vs_float64']:.3g}",
        ]
        for name, p in payload["parameters"].items()
    ]


PARAM_HEADER = [
    "tensor",
    "max |jax - torch|",
    "tolerance (worst element)",
    "|jax - torch| / tolerance (worst element)",
    "4 max |torch - float64| + 4 ulp",
    "largest Adam allowance",
    "verdict",
    "max |jax - float64|",
    "max |torch - float64|",
]


def markdown(payload: dict) -> str:
    lines = [
        "# Training parity: Flax NNX + jaxce vs torch (MLP 784-128-10, Adam 1e-3)",
        "",
        f"**{summary_line(payload)}**",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in _facts(payload)]
    lines += [
        "",
        "## Tolerance (derived)",
        "",
        DERIVATION,
        "",
        "## Adam",
        "",
        ADAM_NOTE,
        "",
        "## Final parameters",
        "",
        "| " + " | ".join(h.replace("|", "\\|") for h in PARAM_HEADER) + " |",
        "|" + "---|" * len(PARAM_HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _param_rows(payload)]
    c = payload["curves"]
    lines += [
        "",
        "## Loss per step (every 25th and the last)",
        "",
        "| step | torch | jax | abs diff | tolerance | torch32 - torch64 |",
        "|---|---|---|---|---|---|",
    ]
    for k in sorted({*range(0, len(c["torch"]), 25), len(c["torch"]) - 1}):
        lines.append(
            f"| {k} | {c['torch'][k]:.7f} | {c['jax'][k]:.7f} | "
            f"{abs(c['jax'][k] - c['torch'][k]):.2e} | {c['tolerance'][k]:.2e} | "
            f"{abs(c['torch'][k] - c['torch_float64'][k]):.2e} |"
        )
    if payload["data_warnings"]:
        lines += ["", "## Data warnings", ""] + [f"- {w}" for w in payload["data_warnings"]]
    return "\n".join(lines) + "\n"


def _plots(payload: dict) -> tuple[str, str]:
    c = {k: np.asarray(v) for k, v in payload["curves"].items()}
    steps = np.arange(len(c["torch"]))
    fig = Figure(figsize=(9, 3.6))
    place(fig, left=0.75, right=0.2, top=0.2)
    ax = fig.subplots()
    ax.plot(steps, c["torch"], label="torch float32", lw=1.2)
    ax.plot(steps, c["jax"], "--", label="Flax + jaxce float32", lw=1.2)
    ax.set(xlabel="step", ylabel="training loss (batch mean)", yscale="log")
    ax.legend()
    curves = to_png_base64(fig)
    fig = Figure(figsize=(9, 4.2))
    place(fig, left=0.75, right=0.2, top=0.2)
    ax = fig.subplots()
    floor = 1e-10  # where an exactly equal pair is drawn
    ax.plot(steps, np.maximum(np.abs(c["jax"] - c["torch"]), floor), label="|jax - torch|", lw=1)
    ax.plot(steps, c["tolerance"], "k", label="derived tolerance", lw=1.2)
    for a, b, label in (
        ("torch", "torch_float64", "|torch float32 - torch float64|"),
        ("jax_optax_adam", "torch", "|jax with optax.adam as shipped - torch| (information)"),
        ("jax", "torch_float64_own_relu", "|jax - float64 with its own ReLU decisions| (info)"),
    ):
        ax.plot(steps, np.maximum(np.abs(c[a] - c[b]), floor), lw=0.8, alpha=0.7, label=label)
    ax.set(xlabel="step", ylabel="absolute loss difference (0 drawn at 1e-10)", yscale="log")
    ax.legend(fontsize=8)
    return curves, to_png_base64(fig)


def training_html(payload: dict) -> str:
    esc = html.escape
    curves, diffs = _plots(payload)
    body = [
        "<h1>Training parity: Flax NNX + jaxce vs torch</h1>",
        f"<p class='big'>{esc(summary_line(payload))}</p>",
        table(["", ""], [[esc(k), esc(v)] for k, v in _facts(payload)]),
        "<h2>Loss curves</h2>",
        img(curves, "loss curves"),
        "<h2>Differences and the derived tolerance</h2>",
        img(diffs, "loss differences"),
        "<h2>Tolerance (derived)</h2>",
        f"<p>{esc(DERIVATION)}</p>",
        "<h2>Adam</h2>",
        f"<p>{esc(ADAM_NOTE)}</p>",
        "<h2>Final parameters</h2>",
        table(PARAM_HEADER, [[esc(x) for x in r] for r in _param_rows(payload)]),
    ]
    if payload["data_warnings"]:
        body += (
            ["<h2>Data warnings</h2><ul>"]
            + [f"<li>{esc(w)}</li>" for w in payload["data_warnings"]]
            + ["</ul>"]
        )
    return page("Training parity", body)
