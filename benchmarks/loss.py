"""Cross-entropy (with its gradient, or alone) against optax, torch and the bandwidth limit.

``python -m benchmarks.loss [--quick] [--targets index smoothed probs] [--json FILE]``

Every variant computes the float32 mean cross-entropy of (N, C) logits and, in the settings
``outside`` and ``in_step``, its gradient with respect to the logits, for three kinds of target
(``--targets``; see ``benchmarks._jax_variants``): ``index`` (int class labels), ``smoothed``
(labels with ``label_smoothing=0.1``) and ``probs`` ((N, C) class probabilities). The index
targets run every variant; the other two the ones the targets are judged by
(``TARGET_VARIANTS``), unless ``--variants`` names others. Each (targets, shape, setting,
variant) runs in a fresh process pinned to ``--threads`` CPUs (XLA sizes its thread pool from
the affinity mask; torch gets ``torch.set_num_threads``), compiles first
(compile time reported apart), warms up, then times ``--repeats`` calls; ``--rounds`` repeats
the whole sweep interleaved and pools the timings. Reported: median and IQR in ms, peak memory
(see ``benchmarks._child``), the speed-up over torch eager and the time as a multiple of the
bandwidth bound of the same setting; the JSON and the table's header also name the machine
(CPU model, caches, cores, load average, versions: ``benchmarks._machine``).

Settings:

- ``outside``: the logits are a program input and every call returns a new gradient array, as
  when a loss is called on its own. A fresh (N, C) buffer is page-faulted in on every call (the
  CPU allocators hand large blocks back to the OS), so page faults are part of the time. Torch:
  ``F.cross_entropy`` + ``torch.autograd.grad``, eager and under ``torch.compile``.
- ``in_step``: as in a training step, where buffers are reused. JAX: one compiled step reads
  the logits buffer (as it reads a dense layer's output) and writes the gradient into the donated
  buffer of the previous step, so nothing is page-faulted after the first call. (A producer such
  as ``logits = x * s`` inside the step is not used: XLA:CPU does not fuse an elementwise
  producer into a reduction, so every loss variant would first write it out, a cost of the
  harness rather than of the loss; a dense layer's dot writes its logits anyway.)
  Torch has no in-program buffer reuse on CPU; its analogue, ``torch_eager_out``, runs the same
  ATen kernels as the eager autograd call with out= buffers allocated once (no faults either).
  The harness warms up until two calls in a row take no page faults.
- ``forward``: the loss value alone, as in evaluation: the ``jax.jit`` of the loss (no gradient;
  ``jnp_autodiff`` is its textbook formula; ``jaxce_autodiff`` is not run, its forward is
  jaxce's). Torch: ``F.cross_entropy`` under ``torch.no_grad()`` on logits that do not require
  a gradient, eager and under ``torch.compile``. The result is a scalar; any (N, C) temporary a
  variant writes (eager torch's log-softmax, for one) is part of its time, page faults included.

Limits (JAX, same setting, same process rules): ``bound_copy`` reads the logits once and writes
a same-size array (``x * 2``; in_step into the donated buffer), the memory-bandwidth bound of a
loss+gradient; ``bound_exp`` is one ``exp`` over the logits, the cost of the one transcendental
pass a softmax cannot avoid (both in ``outside`` and ``in_step``). ``bound_read`` (``forward``
only) is ``jnp.max(x, axis=-1)``: one read of the logits and N floats written, the cheapest row
reduction (no transcendental); a loss value must read every logit at least once, so this is its
bandwidth bound. "jaxce / bound" divides by ``bound_copy`` in the first two settings and by
``bound_read`` in ``forward``. With probability targets the limits read the targets too.

Targets checked (``benchmarks._report.check_targets``), in every cell: jaxce at least 2x faster
than torch eager, and no slower than optax or ``jnp_autodiff`` (a difference within the larger
of the two IQRs counts as a tie); in a step at C >= 1000, within 2.5x ``bound_copy``.

Exit status: 0 when every measurement ran, whether the targets were met or not; 1 when any
failed (an error, out of memory or a timeout in its process): each failure is printed as one
line with its reason after the tables, and the JSON is written all the same; 2 for a bad flag,
refused before anything runs (a shape whose logits alone exceed the memory available, a value
listed twice, or a chosen variant that runs in none of the chosen settings too).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import asdict, dataclass

from tqdm import tqdm

from benchmarks import _cli, _machine, _report
from benchmarks import _harness as h
from benchmarks._harness import TARGETS

EPILOG = __doc__.rstrip().split("\n\n")[-1]  # the exit statuses, for --help
SHAPES = ((65536, 10), (8192, 1000), (4096, 32768), (1024, 131072))
QUICK_SHAPES = ((8192, 1000), (512, 32768))
SETTINGS = ("outside", "in_step", "forward")
VARIANTS = (
    "jaxce",
    "jaxce_autodiff",
    "jnp_autodiff",
    "optax",
    "torch_eager",
    "torch_compile",
    "torch_eager_out",
    "bound_copy",
    "bound_exp",
    "bound_read",
)
QUICK_VARIANTS = ("jaxce", "optax", "torch_eager", "torch_eager_out", "bound_copy", "bound_read")
# What the targets compare (smoothed and probability targets run only these by default).
TARGET_VARIANTS = (
    "jaxce",
    "jnp_autodiff",
    "optax",
    "torch_eager",
    "torch_eager_out",
    "bound_copy",
    "bound_read",
)
# Variants that run in some settings only (others run in all): torch's calls differ between the
# settings, jaxce_autodiff's forward is jaxce's, and each setting has its own bounds.
ONLY_IN = {
    "jaxce_autodiff": ("outside", "in_step"),
    "torch_eager": ("outside", "forward"),
    "torch_compile": ("outside", "forward"),
    "torch_eager_out": ("in_step",),
    "bound_copy": ("outside", "in_step"),
    "bound_exp": ("outside", "in_step"),
    "bound_read": ("forward",),
}


@dataclass(frozen=True)
class Config:
    shapes: tuple[tuple[int, int], ...] = SHAPES
    settings: tuple[str, ...] = SETTINGS
    variants: tuple[str, ...] = VARIANTS  # with index targets
    targets: tuple[str, ...] = TARGETS
    target_variants: tuple[str, ...] = TARGET_VARIANTS  # with smoothed and probability targets
    repeats: int = 10
    warmup: int = 3
    rounds: int = 2
    threads: int = 2
    timeout_s: float = 600.0
    json_path: str | None = None


def parse_args(argv: list[str] | None = None) -> Config:
    argv = sys.argv[1:] if argv is None else argv
    doc = __doc__.split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.loss", description=doc, epilog=EPILOG)
    p.add_argument(
        "--quick", action="store_true", help="2 small shapes, 6 variants, about a minute on 2 cores"
    )
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write everything here")
    p.add_argument("--shapes", nargs="+", metavar="NxC")
    p.add_argument("--settings", nargs="+", choices=SETTINGS)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, help="for every kind of target")
    p.add_argument("--targets", nargs="+", choices=TARGETS, help="default: all three")
    for name in ("repeats", "warmup", "rounds", "threads"):
        p.add_argument(f"--{name}", type=int, metavar="INT")
    after_shapes = False  # argparse takes "--shapes -5x10" for a missing value and an option
    for text in argv:
        if text.startswith("--"):
            after_shapes = text == "--shapes"
        elif after_shapes and re.fullmatch(r"-\d+x-?\d+", text, re.IGNORECASE):
            p.error(f"--shapes must be NxC with N >= 1 and C >= 1, e.g. 4096x32768, got {text}")
    args = vars(p.parse_args(argv))
    quick = args.pop("quick")
    base = Config()
    if quick:
        base = Config(QUICK_SHAPES, SETTINGS, QUICK_VARIANTS, ("index",), QUICK_VARIANTS, 3, 1, 1)
    chosen = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if v is not None}
    if "variants" in chosen:
        chosen["target_variants"] = chosen["variants"]
    _cli.check_counts(p, chosen, repeats=1, rounds=1, threads=1, warmup=0)
    _cli.check_output_file(p, chosen.get("json_path"), partial=True)
    _cli.check_threads(p, chosen)
    if "shapes" in chosen:
        chosen["shapes"] = _cli.check_shapes(p, chosen["shapes"], h.available_mib())
    _cli.check_no_repeats(p, chosen, "shapes", "settings", "variants", "targets")
    cfg = Config(**{**asdict(base), **chosen})
    for variant in chosen.get("variants", ()):  # the defaults run in the settings they can
        runs_in = ONLY_IN.get(variant, SETTINGS)
        if not set(runs_in) & set(cfg.settings):
            p.error(
                f"--variants {variant} runs only in --settings {' '.join(runs_in)}, got "
                f"--settings {' '.join(cfg.settings)}; add one of them or drop the variant"
            )
    return cfg


def jobs(cfg: Config) -> list[tuple[str, tuple[int, int], str, str]]:
    """(targets, shape, setting, variant) of one round: the variants chosen for each kind of
    target that run in each setting."""
    return [
        (targets, shape, setting, variant)
        for targets in cfg.targets
        for shape in cfg.shapes
        for setting in cfg.settings
        for variant in (cfg.variants if targets == "index" else cfg.target_variants)
        if setting in ONLY_IN.get(variant, SETTINGS)
    ]


def run(cfg: Config, on_result=None) -> dict:
    """Runs every job ``cfg.rounds`` times, interleaved, and summarizes; ``on_result(doc)``
    after each job with the raw results so far."""
    records: dict[tuple[str, str, str, str], list[dict]] = {}
    for _, (targets, shape, setting, variant) in tqdm(
        [(r, job) for r in range(cfg.rounds) for job in jobs(cfg)],
        desc="variants",
        unit="proc",
        disable=None,  # quiet when stderr is not a terminal
    ):
        spec = h.Spec(
            variant, setting, *shape, cfg.repeats, cfg.warmup, cfg.threads, targets=targets
        )
        result = h.run_child(spec, timeout_s=cfg.timeout_s)
        key = (targets, _report.shape_key(*shape), setting, variant)
        records.setdefault(key, []).append(result)
        if on_result is not None:
            on_result({"results": _raw_results(records)})
    combined = {key: _report.combine(recs) for key, recs in records.items()}
    summary = _report.summarize(combined)
    return {
        "headline": _report.headline(summary),
        "summary": summary,
        "targets": _report.check_targets(summary),
        "results": [
            {
                "targets": k[0],
                "shape": k[1],
                "setting": k[2],
                "variant": k[3],
                **combined[k],
                "raw": records[k],
            }
            for k in records
        ],
    }


def _raw_results(records: dict) -> list[dict]:
    keys = ("targets", "shape", "setting", "variant")
    return [{**dict(zip(keys, k, strict=True)), "raw": recs} for k, recs in records.items()]


def print_report(out: dict, machine: dict, variants: tuple[str, ...]) -> None:
    """The machine, the median table, the call memory table and the target lines, to stdout."""
    print("Machine: " + _machine.summary_line(machine) + "\n")
    print(_report.markdown(out["summary"], list(variants)))
    print("\ncall_extra memory (MiB):\n" + _report.memory_markdown(out["summary"], list(variants)))
    for line in target_lines(out["targets"]):
        print(line)
    for line in failures(out):
        print(line)


def target_lines(targets: list[dict]) -> list[str]:
    """One line per judged target check (MET or MISS) and one for all those not judged."""
    lines = [
        f"{'MET ' if t['met'] else 'MISS'} {t['targets']:>8} {t['shape']:>12} "
        f"{t['setting']:>8} {t['target']}: {t['value']:.2f} (limit {t['threshold']:.2f})"
        for t in targets
        if t["met"] is not None
    ]
    unjudged = [t for t in targets if t["met"] is None]
    if unjudged:  # one line, not one per cell: usually variants left out by choice
        names = ", ".join(dict.fromkeys(t["target"] for t in unjudged))
        lines.append(
            f"not judged: {len(unjudged)} target checks whose variants were not run or failed "
            f"({names}); the JSON lists them with met null"
        )
    return lines


def failures(out: dict) -> list[str]:
    """One line per (targets, shape, setting, variant) that failed in any round: its reason
    (the last round's, first line, cut to 300 characters)."""
    lines = []
    for r in out["results"]:
        failed = [raw for raw in r["raw"] if not raw.get("ok")]
        if failed:
            rounds = f" ({len(failed)} of {len(r['raw'])} rounds)" if len(r["raw"]) > 1 else ""
            reason = str(failed[-1].get("error", "no result")).strip().split("\n")[0][:300]
            cell = f"{r['targets']} {r['shape']} {r['setting']} {r['variant']}"
            lines.append(f"FAILED {cell}{rounds}: {reason}")
    return lines


def _jax_backend() -> str:
    import jax

    return jax.default_backend()


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    started = time.time()
    machine = _machine.describe()
    machine["jax_backend"] = _jax_backend()
    command = "python -m benchmarks.loss " + " ".join(sys.argv[1:] if argv is None else argv)
    head = {"command": command.strip(), "config": asdict(cfg), "machine": machine}
    out = run(cfg, on_result=h.partial_writer(cfg.json_path, head))
    machine["loadavg_end"] = list(os.getloadavg())
    doc = {**head, **out, "complete": True, "wall_s": time.time() - started}
    shown = tuple(dict.fromkeys((*cfg.variants, *cfg.target_variants)))
    doc["table_markdown"] = (
        "Machine: "
        + _machine.summary_line(machine)
        + "\n\n"
        + _report.markdown(out["summary"], list(shown))
    )
    print_report(out, machine, shown)
    h.write_complete(cfg.json_path, doc)
    failed = failures(out)
    if failed:
        print(
            f"python -m benchmarks.loss: error: {len(failed)} of {len(out['results'])} "
            "measurements failed (reasons above)",
            file=sys.stderr,
        )
        raise SystemExit(1)


if __name__ == "__main__":
    _cli.run_main(main, "python -m benchmarks.loss")
