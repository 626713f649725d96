"""Counts the passes a compiled variant makes over the (N, C) logits, from its optimized HLO.

``python -m benchmarks._profile --shape 4096x32768 --setting in_step --variants jaxce optax``

For every top-level instruction of the entry computation that reads or writes an (N, C) array
it prints the instruction, how many (N, C) operands it reads, whether it writes one, and how many
``exponential`` ops its fused computation holds (a gather of the label's logit is not a pass).
The totals are the memory passes (in units of one (N, C) float32 array) and the transcendental
passes of one call. ``--dump DIR`` also writes each HLO text.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?)(?:\{[^}]*\})? (\S+?)\((.*?)\)(.*)$")
_CALLS = re.compile(r"calls=%([\w.\-]+)")


@dataclass(frozen=True)
class Pass:
    name: str
    op: str
    reads: int
    writes: int
    exps: int


def _computations(hlo: str) -> dict[str, str]:
    """Body text of every computation, keyed by name."""
    out, name, lines = {}, None, []
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(", line)
        if head and line.rstrip().endswith("{"):
            name, lines = head.group(1), []
        elif line.startswith("}") and name:
            out[name] = "\n".join(lines)
            name = None
        elif name:
            lines.append(line)
    return out


def passes(hlo: str, n: int, c: int) -> list[Pass]:
    """The entry instructions that touch an (N, C) array, in program order."""
    comps = _computations(hlo)
    entry = next(k for k in comps if hlo.find(f"ENTRY %{k} ") >= 0)
    big = f"[{n},{c}]"
    shapes: dict[str, str] = {}
    rows = []
    for line in comps[entry].splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, op, operands, rest = m.groups()
        shapes[name] = shape
        if op in ("parameter", "constant", "tuple", "get-tuple-element", "bitcast"):
            continue
        reads = sum(big in shapes.get(o.strip().lstrip("%"), "") for o in operands.split(","))
        writes = int(big in shape)
        called = _CALLS.search(rest)
        body = comps.get(called.group(1), "") if called else ""
        exps = body.count("exponential(") + int(op == "exponential")
        if not writes and ("gather(" in body or "dynamic-slice(" in body or op == "gather"):
            reads = 0  # picks a few elements (the label's logit), not a pass
        if reads or writes:
            rows.append(Pass(name, op, reads, writes, exps))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks._profile", description=__doc__)
    p.add_argument("--shape", default="4096x32768", metavar="NxC")
    p.add_argument("--setting", default="in_step", choices=("outside", "in_step"))
    p.add_argument("--variants", nargs="+", default=["jaxce", "optax", "bound_copy"])
    p.add_argument("--dump", metavar="DIR", help="write each optimized HLO text here")
    args = p.parse_args(argv)
    from benchmarks import _jax_variants

    n, c = (int(v) for v in args.shape.split("x"))
    for variant in args.variants:
        hlo = _jax_variants.hlo_text(variant, args.setting, n, c)
        if args.dump:
            with open(f"{args.dump}/{variant}_{args.setting}_{n}x{c}.hlo.txt", "w") as f:
                f.write(hlo)
        rows = passes(hlo, n, c)
        print(f"\n{variant} ({args.setting}, {n}x{c}): {hlo.count(' fusion(')} fusions")
        for r in rows:
            print(f"  {r.name:<40} {r.op:<10} reads {r.reads}  writes {r.writes}  exp {r.exps}")
        total_r, total_w = sum(r.reads for r in rows), sum(r.writes for r in rows)
        total_e = sum(bool(r.exps) for r in rows)
        print(f"  total: {total_r} reads + {total_w} writes of (N, C); {total_e} exp passes")


if __name__ == "__main__":
    main()
