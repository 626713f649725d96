"""matplotlib figures rendered to inline PNG (base64) for the self-contained HTML reports."""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.figure import Figure

FLOOR = 1e-18  # where an exact (zero) error is drawn on log axes
CEILING = 10.0  # where a NaN/inf position mismatch is drawn


def place(fig, *, left=0.55, right=0.35, bottom=0.5, top=0.55, wspace=0.3, hspace=0.45) -> None:
    """Fixed margins in inches (so they hold at any figure width) and gaps as fractions of an
    axes: the labels here have known sizes, so no layout engine measures every tick label."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace,
        hspace=hspace,
    )


def to_png_base64(fig) -> str:
    """Renders ``fig``; returns the PNG as base64 text for a data: URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _errors(records, dtype, quantity, pair):
    out = []
    for r in records:
        stats = r.get("errors", {}).get(quantity, {}).get(pair)
        if r["dtype"] != dtype or not stats or stats.get("max_rel") is None:
            continue
        out.append(CEILING if stats["nonfinite_mismatch"] else max(stats["max_rel"], FLOOR))
    return np.asarray(out)


def error_histograms(records, dtypes, impl_label: str) -> str:
    """Per dtype (columns) and quantity (rows): distribution of each side's error vs float64."""
    quantities = ("value", "grad_logits", "grad_target")
    sides = (
        ("impl_vs_reference", impl_label, "tab:blue"),
        ("torch_vs_reference", "torch", "tab:orange"),
        ("optax_vs_reference", "optax", "tab:green"),
    )
    fig = Figure(figsize=(3.4 * len(dtypes), 8.5))
    place(fig)
    axes = fig.subplots(len(quantities), len(dtypes), squeeze=False)
    bins = np.logspace(np.log10(FLOOR), np.log10(CEILING) + 0.5, 39)
    for i, q in enumerate(quantities):
        for j, dtype in enumerate(dtypes):
            ax = axes[i, j]
            for pair, label, color in sides:
                errs = _errors(records, dtype, q, pair)
                if errs.size:
                    ax.hist(
                        errs,
                        bins=bins,
                        histtype="step",
                        color=color,
                        lw=1.5,
                        label=f"{label} ({errs.size})",
                    )
            ax.set_xscale("log")
            ax.set_title(f"{dtype}: {q}", fontsize=9)
            ax.tick_params(labelsize=7)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
            if i == len(quantities) - 1:
                ax.set_xlabel(
                    "max |err| / max |truth|  (1e-18: exact, 10: NaN/inf mismatch)", fontsize=7
                )
    fig.suptitle("Error against the float64 reference, per case", fontsize=10)
    return to_png_base64(fig)


def closeness_scatter(records, dtypes, impl_label: str) -> str:
    """Each case's error vs float64: implementation (y) against torch (x); below = closer."""
    fig = Figure(figsize=(3.4 * len(dtypes), 3.6))
    place(fig, left=0.6)
    axes = fig.subplots(1, len(dtypes), squeeze=False)
    for j, dtype in enumerate(dtypes):
        ax = axes[0, j]
        for q, marker in (("value", "o"), ("grad_logits", "x"), ("grad_target", "+")):
            a = _errors(records, dtype, q, "impl_vs_reference")
            b = _errors(records, dtype, q, "torch_vs_reference")
            if a.size and a.size == b.size:
                ax.scatter(b, a, s=10, marker=marker, alpha=0.6, label=q)
        ax.plot([FLOOR, CEILING], [FLOOR, CEILING], "k:", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(dtype, fontsize=9)
        ax.set_xlabel("torch error (1e-18: exact, 10: NaN/inf mismatch)", fontsize=7)
        ax.set_ylabel(f"{impl_label} error", fontsize=7)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle(
        "Who is closer to float64 (points below the diagonal: the implementation)", fontsize=10
    )
    return to_png_base64(fig)
