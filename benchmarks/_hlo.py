"""What a lowered or compiled program does with the (N, C) logits, read from its text.

Two kinds of text, two sets of questions:

- StableHLO (``jax.export.export(...).mlir_module()``), which needs no compiler for the
  target: which ``custom_call`` targets it calls (`custom_call_targets`: a host callback or a
  CPU library call cannot run on a GPU or TPU), which float64 arrays it builds
  (`float64_arrays`), and whether an array of the logits' size has another rank
  (`resized_logits`: the class axis split into parts, the XLA:CPU form of jaxce's reductions).
- Optimized HLO (``compiled.as_text()``), after the target's compiler: `kernels` lists every
  kernel (a fusion or a lone op, also inside loops and calls) that reads or writes an array of
  N * C elements, and `traffic` sums them in units of the logits' bytes: reads, writes, and
  the temporaries (N * C arrays one kernel writes and another reads), with their dtypes.
  Reading a few elements of an N * C array (a gather of the label's logit) is not a read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import jax.numpy as jnp

# --- StableHLO -------------------------------------------------------------------------------

_TENSOR = re.compile(r"tensor<((?:[0-9?]+x)*)([a-z]\w*)>")
_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call @([\w.$\-]+)|call_target_name = \"([^\"]+)\"")


def custom_call_targets(mlir: str) -> set[str]:
    """The targets of every ``custom_call`` in a StableHLO module's text."""
    return {a or b for a, b in _CUSTOM_CALL.findall(mlir)}


def tensor_types(mlir: str) -> Iterator[tuple[tuple[int, ...], str]]:
    """(shape, element type) of every static tensor type named in a StableHLO module's text."""
    for dims, dtype in _TENSOR.findall(mlir):
        if "?" not in dims:
            yield tuple(int(d) for d in dims.split("x")[:-1]), dtype


def float64_arrays(mlir: str) -> set[tuple[int, ...]]:
    """Shapes of the float64 arrays (rank >= 1) in a module; float64 scalars are left out.

    A float64 scalar is how a Python float enters a traced function under ``jax_enable_x64``;
    it is converted where it is used. An array is work and memory in float64 (emulated on TPU,
    1/64 of the float32 rate on most GPUs).
    """
    return {shape for shape, dtype in tensor_types(mlir) if dtype == "f64" and shape}


def resized_logits(mlir: str, shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Shapes of arrays with as many elements as ``shape`` (the logits') but another rank."""
    size = math.prod(shape)
    return {s for s, _ in tensor_types(mlir) if math.prod(s) == size and len(s) != len(shape)}


_SSA_DEF = re.compile(r"^\s*(%[\w.#]+)(?::\d+)? = (?:\"?)([\w.]+)")


def barrier_operands(mlir: str) -> set[str]:
    """The ops whose results pass straight into an ``optimization_barrier`` (e.g. ``exponential``).

    jaxce's XLA:CPU forms put ``exp(x - m)`` behind a barrier, so that XLA computes it once for
    the forward and backward; a barrier on the logits themselves (to recompute, not share,
    what is derived from them) is a different use.
    """
    defs: dict[str, str] = {}
    out = set()
    for line in mlir.splitlines():
        d = _SSA_DEF.match(line)
        if d:
            defs[d.group(1)] = d.group(2).removeprefix("stablehlo.")
        if "stablehlo.optimization_barrier" in line:
            operands = line.split("stablehlo.optimization_barrier", 1)[1].split(":")[0]
            for name in re.findall(r"%[\w.#]+", operands):
                out.add(defs.get(name.split("#")[0], "argument"))
    return out


# --- Optimized HLO ---------------------------------------------------------------------------

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+) = (?P<type>.+?) (?P<op>[a-z][\w\-]*)"
    r"\((?P<operands>[^)]*)\)(?P<rest>.*)$"
)
_HEADER = re.compile(r"^(?P<entry>ENTRY )?%(?P<name>[\w.\-]+) [(].*[{]\s*$")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8\w*|c64|c128)\[([\d,]*)\]")
_CALLED = re.compile(
    r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_COMMENT = re.compile(r"/\*.*?\*/")
# Ops that run the computations they call as steps of the program (not per element).
_CONTROL = {"call", "while", "conditional", "async-start", "async-done"}
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all"}
_SPARSE = {"gather", "dynamic-slice", "slice"}
_TRANSCENDENTAL = {"exponential", "exponential-minus-one", "log", "log-plus-one", "tanh"}
_ITEMSIZE = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}


@dataclass(frozen=True)
class Instruction:
    name: str
    op: str
    arrays: tuple[tuple[str, tuple[int, ...]], ...]  # (dtype, shape) of each output array
    operands: tuple[str, ...]
    called: tuple[str, ...]
    root: bool


@dataclass(frozen=True)
class Kernel:
    """One kernel of a compiled program that reads or writes an N * C-element array.

    Attributes:
      name, op: the HLO instruction (``fusion``, ``copy``, ``scatter``, ...).
      reads: (dtype, producer) of each N * C array it streams; the producer is the instruction
        that made it: a parameter of the program, or another kernel.
      writes: dtypes of the N * C arrays it outputs.
      transcendentals: ``exponential``, ``log``, ``tanh`` ops over N * C elements inside.
      ops: the ops over N * C elements inside it (what it computes).
      dtypes: the element types it computes in over N * C elements.
    """

    name: str
    op: str
    reads: tuple[tuple[str, str], ...]
    writes: tuple[str, ...]
    transcendentals: int
    ops: frozenset[str]
    dtypes: frozenset[str]


def itemsize(dtype: str) -> int:
    """Bytes per element of an HLO element type (``f32`` 4, ``bf16`` 2, ``pred`` 1)."""
    if dtype in _ITEMSIZE:
        return _ITEMSIZE[dtype]
    return max(1, int(re.sub(r"\D", "", dtype) or 8) // 8)


def parse(hlo: str) -> tuple[str, dict[str, list[Instruction]]]:
    """(entry name, instructions of every computation keyed by name) of an HLO module's text."""
    comps: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        head = _HEADER.match(line)
        if head:
            current = comps.setdefault(head.group("name"), [])
            entry = head.group("name") if head.group("entry") else entry
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTRUCTION.match(line) if current is not None else None
        if not m:
            continue
        rest = m.group("rest")
        called = _CALLED.findall(rest)
        for group in _BRANCHES.findall(rest):
            called += [b.strip().lstrip("%") for b in group.split(",") if b.strip()]
        operands = (o.strip().lstrip("%") for o in _COMMENT.sub("", m.group("operands")).split(","))
        current.append(
            Instruction(
                m.group("name"),
                m.group("op"),
                tuple(
                    (dtype, tuple(int(d) for d in dims.split(",") if d))
                    for dtype, dims in _ARRAY.findall(m.group("type"))
                ),
                tuple(o for o in operands if o),
                tuple(called),
                line.lstrip().startswith("ROOT "),
            )
        )
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return entry, comps


def _gathered_params(body: list[Instruction], size: int) -> set[int]:
    """Parameter numbers of a fused computation's N * C inputs that it only gathers from."""
    users: dict[str, list[Instruction]] = {}
    for ins in body:
        for o in ins.operands:
            users.setdefault(o, []).append(ins)

    def only_gathered(name: str) -> bool:
        uses = users.get(name, [])
        return bool(uses) and all(
            (u.op in _SPARSE and all(math.prod(s) < size for _, s in u.arrays))
            or (u.op == "bitcast" and only_gathered(u.name))
            for u in uses
        )

    return {
        int(ins.operands[0])
        for ins in body
        if ins.op == "parameter"
        and ins.arrays
        and math.prod(ins.arrays[0][1]) == size
        and only_gathered(ins.name)
    }


def kernels(hlo: str, size: int) -> list[Kernel]:
    """The kernels of a compiled program that read or write arrays of ``size`` (N * C) elements.

    Walks the entry computation and every computation it runs as a step (``call``, ``while``,
    ``conditional``, async ops), in program order. A fusion is one kernel; its fused body is
    read to tell a gather from a read and to list what it computes.
    """
    entry, comps = parse(hlo)
    by_name = {ins.name: ins for body in comps.values() for ins in body}

    def producer(name: str) -> tuple[str, tuple[tuple[str, tuple[int, ...]], ...]]:
        """The instruction whose output ``name`` is (through tuple indexing and bitcasts)."""
        ins = by_name.get(name)
        while ins is not None and ins.op in ("get-tuple-element", "bitcast") and ins.operands:
            arrays = ins.arrays
            ins = by_name.get(ins.operands[0])
            if ins is not None and ins.op not in ("get-tuple-element", "bitcast"):
                return ins.name, arrays
        return name, (ins.arrays if ins else ())

    out: list[Kernel] = []

    def walk(comp: str) -> None:
        for ins in comps.get(comp, []):
            if ins.op in _CONTROL:
                for c in ins.called:
                    walk(c)
                continue
            if ins.op in _FREE:
                continue
            body = comps.get(ins.called[0], []) if ins.op == "fusion" and ins.called else []
            skip = _gathered_params(body, size)
            reads = []
            for i, operand in enumerate(ins.operands):
                source, arrays = producer(operand)
                big = len(arrays) == 1 and math.prod(arrays[0][1]) == size
                if big and i not in skip and ins.op not in _SPARSE:
                    reads.append((arrays[0][0], source))
            writes = tuple(dtype for dtype, shape in ins.arrays if math.prod(shape) == size)
            big = [b for b in body if b.arrays and math.prod(b.arrays[0][1]) == size]
            trans = sum(b.op in _TRANSCENDENTAL for b in big)
            trans += int(ins.op in _TRANSCENDENTAL and bool(writes))
            if reads or writes:
                work = [b for b in big if b.op not in _FREE | {"broadcast", "iota"}]
                ops = frozenset(b.op for b in work)
                dtypes = frozenset(b.arrays[0][0] for b in work) | frozenset(writes)
                out.append(Kernel(ins.name, ins.op, tuple(reads), writes, trans, ops, dtypes))

    walk(entry)
    return out


@dataclass(frozen=True)
class Traffic:
    """Memory traffic over the N * C arrays of a program, in units of the logits' bytes.

    Attributes:
      reads, writes: bytes streamed and written, divided by the logits' bytes.
      temporaries: dtype of each N * C array that one kernel writes and another reads.
      bound: the least traffic of the same program: every N * C input read once and every
        N * C output written once (a loss with its logits' gradient: 2.0).
      kernels: how many kernels touch N * C arrays.
      transcendental_passes: kernels that evaluate a transcendental over N * C elements.
    """

    reads: float
    writes: float
    bound: float
    temporaries: tuple[str, ...]
    kernels: int
    transcendental_passes: int

    @property
    def passes(self) -> float:
        """Reads plus writes."""
        return self.reads + self.writes

    @property
    def x_bound(self) -> float:
        """Reads plus writes over the bound."""
        return self.passes / self.bound if self.bound else float("inf")


def traffic(hlo: str, size: int, logits_dtype) -> Traffic:
    """Sums `kernels` of a program whose logits have ``size`` elements of ``logits_dtype``."""
    unit = jnp.dtype(logits_dtype).itemsize
    ks = kernels(hlo, size)
    made = {k.name: k for k in ks}
    temporaries: dict[tuple[str, str], None] = {}
    for k in ks:
        for dtype, source in k.reads:
            if source in made:
                temporaries[(source, dtype)] = None
    entry, comps = parse(hlo)
    ends = [ins for ins in comps[entry] if ins.op == "parameter" or ins.root]
    bound = sum(itemsize(d) for ins in ends for d, s in ins.arrays if math.prod(s) == size)
    return Traffic(
        reads=sum(itemsize(d) for k in ks for d, _ in k.reads) / unit,
        writes=sum(itemsize(d) for k in ks for d in k.writes) / unit,
        bound=bound / unit,
        temporaries=tuple(dtype for _, dtype in temporaries),
        kernels=len(ks),
        transcendental_passes=sum(k.transcendentals > 0 for k in ks),
    )
