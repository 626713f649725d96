"""Counts the passes a compiled variant makes over the (N, C) logits, from its optimized HLO.

``python -m benchmarks._profile --shape 4096x32768 --setting in_step --variants jaxce optax``

For every top-level instruction of the entry computation that reads or writes an (N, C) array
(or a reshape of one) it prints the instruction, how many such operands it reads, whether it
writes one, and how many ``exponential`` ops over N * C elements its fused computation holds
(a gather of the label's logit is not a pass). The totals are the memory passes (in units of
one (N, C) float32 array) and the transcendental passes of one call. ``--dump DIR`` also
writes each HLO text. ``--setting forward`` profiles the loss value alone; ``--targets
smoothed`` or ``probs`` the benchmark's other targets (probabilities are an (N, C) array too,
so their reads count).

``python -m benchmarks._profile --reductions`` times the backend's row reductions instead: for
rows of 1k to 128k classes (64 Mi float32 elements in all), ``sum(x)`` against
``sum(exp(x - m))`` and against a one-pass (online) max and sum of exp, a variadic
``lax.reduce``, in ns per element. On XLA:CPU this is the table behind ``jaxce._xla_cpu``:
the fused exponential is cheap on rows of up to 32768 classes and about 10x dearer on longer
rows, and the one-pass form is dearer still, so the row max stays a pass of its own.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass

from benchmarks import _cli, _harness
from benchmarks.loss import ONLY_IN

# benchmarks._jax_variants.NAMES (that module imports jax, which --help does not need;
# tests/test_benchmark_cli.py checks they agree)
VARIANTS = ("jaxce", "jaxce_autodiff", "optax", "jnp_autodiff", "bound_copy", "bound_exp",
            "bound_read")  # fmt: skip
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


def _size(shape: str) -> int:
    """Elements of an HLO array shape such as ``f32[1024,4,32768]`` (0 for tuples, scalars)."""
    dims = re.fullmatch(r"\w+\[([\d,]+)\]", shape)
    return math.prod(int(d) for d in dims.group(1).split(",")) if dims else 0


def _big_exps(body: str, size: int) -> int:
    """``exponential`` ops over ``size`` elements in a fused computation's text."""
    found = re.findall(r"= (\w+\[[\d,]*\])\S* exponential\(", body)
    return sum(_size(shape) == size for shape in found)


def reductions(total: int = 1 << 26, repeats: int = 7) -> list[tuple[int, ...]]:
    """(row length, ns per element of sum(x), sum(exp(x - m)), one-pass max-and-sum-exp)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    def timed(fn, *args) -> float:
        compiled = jax.jit(fn).lower(*args).compile()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
        return sorted(times)[repeats // 2] * 1e9 / total

    def online(a, b):  # (max, sum of exp) of two partial results, as an online softmax needs
        m = jnp.maximum(a[0], b[0])
        return m, a[1] * jnp.exp(a[0] - m) + b[1] * jnp.exp(b[0] - m)

    def one_pass(x):
        init = (jnp.float32(-jnp.inf), jnp.float32(0))
        return lax.reduce((x, jnp.ones_like(x)), init, online, (1,))

    out = []
    for c in (1024, 8192, 32768, 65536, 131072):
        x = jax.random.normal(jax.random.key(0), (total // c, c), jnp.float32)
        m = jnp.max(x, axis=-1, keepdims=True)
        plain = timed(lambda x: jnp.sum(x, axis=-1), x)
        fused = timed(lambda x, m: jnp.sum(jnp.exp(x - m), axis=-1), x, m)
        out.append((c, plain, fused, timed(one_pass, x)))
    return out


def passes(hlo: str, n: int, c: int) -> list[Pass]:
    """The entry instructions that touch an (N, C) array, in program order."""
    comps = _computations(hlo)
    entry = next(k for k in comps if hlo.find(f"ENTRY %{k} ") >= 0)
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
        reads = sum(
            _size(shapes.get(o.strip().lstrip("%"), "")) == n * c for o in operands.split(",")
        )
        writes = int(_size(shape) == n * c)
        called = _CALLS.search(rest)
        body = comps.get(called.group(1), "") if called else ""
        exps = _big_exps(body, n * c) + int(op == "exponential" and _size(shape) == n * c)
        if not writes and ("gather(" in body or "dynamic-slice(" in body or op == "gather"):
            reads = 0  # picks a few elements (the label's logit), not a pass
        if reads or writes:
            rows.append(Pass(name, op, reads, writes, exps))
    return rows


def _print_reductions() -> None:
    print("classes per row | sum(x) | sum(exp(x - m)) | one-pass max and sum(exp) (ns/element)")
    for c, plain, fused, one_pass in reductions():
        print(f"{c:>15} | {plain:>6.3f} | {fused:>15.3f} | {one_pass:>9.3f}")


def _print_passes(
    shape: tuple[int, int], setting: str, variants: list[str], dump: str | None, targets: str
) -> None:
    from benchmarks import _jax_variants

    n, c = shape
    for variant in variants:
        hlo = _jax_variants.hlo_text(variant, setting, n, c, targets)
        if dump:
            with open(f"{dump}/{variant}_{targets}_{setting}_{n}x{c}.hlo.txt", "w") as f:
                f.write(hlo)
        rows = passes(hlo, n, c)
        print(f"\n{variant} ({targets}, {setting}, {n}x{c}): {hlo.count(' fusion(')} fusions")
        for r in rows:
            print(f"  {r.name:<40} {r.op:<10} reads {r.reads}  writes {r.writes}  exp {r.exps}")
        total_r, total_w = sum(r.reads for r in rows), sum(r.writes for r in rows)
        total_e = sum(bool(r.exps) for r in rows)
        print(f"  total: {total_r} reads + {total_w} writes of (N, C); {total_e} exp passes")


_DEFAULTS = {
    "shape": "4096x32768",
    "setting": "in_step",
    "variants": ["jaxce", "optax", "bound_copy"],
    "targets": "index",
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks._profile", description=__doc__)
    p.add_argument("--shape", metavar="NxC", help=f"default: {_DEFAULTS['shape']}")
    p.add_argument(
        "--setting",
        choices=("outside", "in_step", "forward"),
        help=f"default: {_DEFAULTS['setting']}",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        help=f"default: {' '.join(_DEFAULTS['variants'])}",
    )
    p.add_argument(
        "--targets", choices=("index", "smoothed", "probs"), help=f"default: {_DEFAULTS['targets']}"
    )
    p.add_argument("--dump", metavar="DIR", help="write each optimized HLO text here")
    p.add_argument(
        "--reductions", action="store_true", help="time row reductions instead (its own sizes)"
    )
    args = p.parse_args(argv)
    given = [f"--{name}" for name in (*_DEFAULTS, "dump") if getattr(args, name) is not None]
    if args.reductions:
        if given:  # they would be ignored: the table has its own sizes
            p.error(f"--reductions times fixed row lengths and takes no {', '.join(given)}")
        _print_reductions()
        return
    for name, value in _DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    (shape,) = _cli.check_shapes(p, [args.shape], _harness.available_mib(), name="shape")
    _cli.check_no_repeats(p, vars(args), "variants")
    for variant in args.variants:  # as benchmarks.loss: each bound belongs to its settings
        runs_in = ONLY_IN.get(variant, (args.setting,))
        if args.setting not in runs_in:
            p.error(
                f"--variants {variant} runs only in --setting {' or '.join(runs_in)}, got "
                f"--setting {args.setting}; drop the variant or choose one of those settings"
            )
    if min(shape) < 2:  # (N, C) arrays are told apart by their size: (N,) labels when C = 1
        p.error(f"--shape must be NxC with N >= 2 and C >= 2, got {args.shape}")
    if args.dump:
        try:
            os.makedirs(args.dump, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=args.dump, prefix=".write-check-"):
                pass  # as the HLO texts will be written, after compiling
        except OSError as err:
            p.error(f"--dump must be a directory it can write, got {args.dump} ({err.strerror})")
    _print_passes(shape, args.setting, args.variants, args.dump, args.targets)


if __name__ == "__main__":
    _cli.run_main(main, "python -m benchmarks._profile", "what was printed is what was measured")
