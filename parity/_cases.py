"""The case matrix of the loss parity report and the seeded inputs of each case.

Every case is described in torch's layout (class dim 1, or 0 for an unbatched ``(C,)`` input);
the layout ``NdC`` hands the implementation under test the same arrays with the class axis
moved last and calls it with ``axis=-1`` (the JAX-native layout). Inputs are drawn in float64
from a seed and rounded to the case's dtype, so torch, the implementation under test and the
float64 reference all see exactly the same numbers.

The fused linear loss's cases (``parity._linear_cases``) come last in the matrix.

A case is also the unit the tests use: ``make_case`` and ``make_inputs`` are public to them.
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from typing import NamedTuple

import numpy as np

from parity._linear_cases import LinearCase, LinearInputs, build_linear, make_linear_inputs
from parity._tolerances import DTYPES, round_to

LAYOUTS = ("C", "NC", "NCd", "NdC")
REDUCTIONS = ("none", "mean", "sum")
GRID_SHAPES = {"C": (5,), "NC": (8, 6), "NCd": (3, 5, 4, 2), "NdC": (3, 5, 4, 2)}


@dataclasses.dataclass(frozen=True)
class Case:
    """One parity case, described in torch's layout."""

    id: str
    group: str  # "grid" | "edge" | "random"
    dtype: str
    layout: str  # one of LAYOUTS
    shape: tuple[int, ...]  # logits' shape in torch's layout
    target: str  # "index" | "prob"
    weight: bool
    ignore: str  # "none" | "some" | "all": labels equal to ignore_index (class indices)
    ignore_index: int  # passed for class indices; for probabilities only when not -100
    reduction: str
    smoothing: float
    logits: str  # "normal" | "neg_inf" | "large"
    seed: int
    intentional: str | None = None  # a key of INTENTIONAL

    @property
    def class_axis(self) -> int:
        return 0 if len(self.shape) == 1 else 1


class Inputs(NamedTuple):
    """float64 arrays holding values exactly representable in the case's dtype."""

    logits: np.ndarray  # torch layout
    labels: np.ndarray  # int64 indices (batch shape) or float64 probabilities (logits' shape)
    weight: np.ndarray | None  # (C,)
    cotangent: np.ndarray  # the loss' shape: () or the batch shape for reduction="none"


def torch_options(case: Case, inputs: Inputs) -> dict:
    """The keyword arguments of a torch-layout call (torch and the reference) for a case."""
    return {
        "weight": inputs.weight,
        "cotangent": inputs.cotangent,
        "ignore_index": case.ignore_index,
        "reduction": case.reduction,
        "label_smoothing": case.smoothing,
    }


def make_case(
    group: str,
    dtype: str,
    layout: str,
    shape,
    target: str,
    *,
    weight=False,
    ignore="none",
    ignore_index=-100,
    reduction="mean",
    smoothing=0.0,
    logits="normal",
    base_seed=0,
    intentional=None,
    tag="",
) -> Case:
    """Builds a case whose id spells out its options and whose seed derives from that id."""
    parts = [group + (f"-{tag}" if tag else ""), dtype, layout, target]
    parts += ["weight"] if weight else []
    parts += [f"ignore{ignore_index}-{ignore}"] if ignore != "none" else []
    parts += [f"ignore_index{ignore_index}"] if target == "prob" and ignore_index != -100 else []
    parts += [reduction] + ([f"ls{smoothing:g}"] if smoothing else [])
    parts += [logits] if logits != "normal" else []
    if group != "grid":
        parts.append("x".join(map(str, shape)))
    case_id = "/".join(parts)
    seed = (zlib.crc32(case_id.encode()) + 7919 * base_seed) % 2**32
    return Case(
        case_id,
        group,
        dtype,
        layout,
        tuple(shape),
        target,
        weight,
        ignore,
        ignore_index,
        reduction,
        float(smoothing),
        logits,
        seed,
        intentional,
    )


def _grid(quick: bool, seed: int) -> list[Case]:
    # (target, weight, which labels equal ignore_index, reduction, smoothing)
    both = (False, True)
    options = [
        (target, w, ign, red, ls)
        for target, ignores in (("index", ("none", "some")), ("prob", ("none",)))
        for w, ign, red, ls in itertools.product(both, ignores, REDUCTIONS, (0.0, 0.1))
    ]
    if quick:
        options = [
            ("index", False, "none", "mean", 0.0),
            ("index", True, "some", "mean", 0.1),
            ("index", True, "some", "none", 0.1),
            ("index", False, "some", "sum", 0.1),
            ("prob", False, "none", "mean", 0.0),
            ("prob", True, "none", "sum", 0.1),
            ("prob", True, "none", "none", 0.1),
        ]
    return [
        make_case(
            "grid",
            dtype,
            layout,
            GRID_SHAPES[layout],
            target,
            weight=w,
            ignore=ign,
            reduction=red,
            smoothing=ls,
            base_seed=seed,
        )
        for dtype, layout in itertools.product(DTYPES, LAYOUTS)
        if not quick or layout in ("NC", "NdC") or dtype == "float32"
        for target, w, ign, red, ls in options
    ]


# (tag, dtype, target, reduction) of the edge cases that --quick keeps.
_QUICK_EDGES = {
    ("all-ignored", "float32", "index", "mean"),
    ("all-ignored", "bfloat16", "index", "sum"),
    ("empty", "float32", "index", "mean"),
    ("empty", "float32", "prob", "sum"),
    ("neg-inf", "float32", "index", "mean"),
    ("neg-inf", "float32", "prob", "mean"),
    ("neg-inf", "bfloat16", "prob", "sum"),
    ("large", "float32", "index", "none"),
    ("large", "float32", "prob", "mean"),
    ("one-class", "float32", "index", "mean"),
    ("70k-rows", "float16", "index", "mean"),
    ("70k-rows", "bfloat16", "index", "mean"),
    ("smoothing-1-masked", "float32", "prob", "mean"),
    ("ignore-a-class", "float32", "index", "mean"),
    ("smoothing-1", "float32", "prob", "mean"),
    ("zero-classes", "float32", "prob", "mean"),
    ("zero-classes", "float32", "prob", "none"),
    ("zero-classes", "bfloat16", "prob", "sum"),
    ("ignore-index-prob", "float32", "prob", "mean"),
}


def _edge(quick: bool, seed: int) -> list[Case]:
    cases = []

    def edge(tag, dtype, shape, target, layout="NC", **kw):
        if not quick or (tag, dtype, target, kw.get("reduction", "mean")) in _QUICK_EDGES:
            cases.append(
                make_case("edge", dtype, layout, shape, target, tag=tag, base_seed=seed, **kw)
            )

    for dtype, red, (w, ls) in itertools.product(DTYPES, REDUCTIONS, [(0, 0.0), (1, 0.1)]):
        kw = dict(weight=bool(w), reduction=red, smoothing=ls)
        edge("all-ignored", dtype, (4, 5), "index", ignore="all", **kw)
        edge("neg-inf", dtype, (8, 6), "index", logits="neg_inf", **kw)
        edge(
            "neg-inf",
            dtype,
            (8, 6),
            "prob",
            logits="neg_inf",
            **kw,
            intentional="neg_inf_prob" if ls == 0 else None,
        )
        for target in ("index", "prob"):
            edge("empty", dtype, (0, 5), target, **kw)
            edge("large", dtype, (8, 6), target, logits="large", **kw)
            edge("one-class", dtype, (6, 1), target, **kw)
        # Zero classes (torch 2.13: an empty sum per row, NaN mean); class indices only with
        # an empty batch, since any index is out of range.
        edge("zero-classes", dtype, (3, 0), "prob", **kw)
        edge("zero-classes", dtype, (0, 0), "prob", **kw)
        if not w and not ls:  # torch's smoothing term is (e / 0) * 0 = NaN even for an empty sum
            edge("zero-classes", dtype, (0, 0), "index", **kw)
    for layout, shape in (("C", (0,)), ("NCd", (2, 0, 4)), ("NdC", (2, 0, 4))):
        edge("zero-classes", "float32", shape, "prob", layout=layout, weight=True)
    for ignore_index in (1, -1):  # torch 2.13 raises for >= 0 and ignores a negative one
        edge("ignore-index-prob", "float32", (8, 6), "prob", ignore_index=ignore_index,
             intentional="ignore_index_prob" if ignore_index < 0 else None)  # fmt: skip
    for dtype, red, target in itertools.product(DTYPES[1:], ("mean", "sum"), ("index", "prob")):
        why = "fp16_accumulation" if (dtype, red) == ("float16", "mean") else None
        edge("70k-rows", dtype, (70000, 4), target, reduction=red, intentional=why)
    for dtype in ("float64", "float32", "bfloat16"):
        edge(
            "ignore-a-class",
            dtype,
            (8, 6),
            "index",
            weight=True,
            ignore="some",
            ignore_index=1,
            smoothing=0.1,
        )
        for target in ("index", "prob"):
            edge("smoothing-1", dtype, (8, 6), target, weight=True, smoothing=1.0)
        edge(
            "smoothing-1-masked",
            dtype,
            (8, 6),
            "prob",
            smoothing=1.0,
            logits="neg_inf",
            intentional="full_smoothing_masked",
        )
    return cases


def _random(count: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(count):
        layout = str(rng.choice(LAYOUTS))
        c = int(rng.integers(1, 10))
        n = int(rng.choice([0, 1, 2, 5, 16, 33]))
        spatial = tuple(int(s) for s in rng.integers(1, 4, size=int(rng.integers(1, 3))))
        shape = {"C": (c,), "NC": (n, c)}.get(layout, (n, c, *spatial))
        target = str(rng.choice(["index", "prob"]))
        ignore_index = int(rng.choice([-100, 0])) if target == "index" else -100
        ignore = "some" if target == "index" and rng.random() < 0.5 else "none"
        ignore = "some" if ignore_index >= 0 else ignore  # a real class: its rows are ignored
        cases.append(
            make_case(
                "random",
                str(rng.choice(DTYPES)),
                layout,
                shape,
                target,
                tag=f"{k:03d}",
                weight=bool(rng.random() < 0.5),
                ignore=ignore,
                ignore_index=ignore_index,
                reduction=str(rng.choice(REDUCTIONS)),
                base_seed=seed,
                smoothing=float(rng.choice([0.0, 0.0, 0.05, 0.3, 1.0])),
                logits=str(rng.choice(["normal", "normal", "normal", "neg_inf", "large"])),
            )
        )
    cases = [c for c in cases if not (c.logits == "neg_inf" and c.shape[c.class_axis] < 2)]
    masked_prob = {0.0: "neg_inf_prob", 1.0: "full_smoothing_masked"}
    return [
        dataclasses.replace(c, intentional=masked_prob[c.smoothing])
        if c.logits == "neg_inf" and c.target == "prob" and c.smoothing in masked_prob
        else c
        for c in cases
    ]


def build_matrix(*, quick: bool, seed: int) -> list[Case | LinearCase]:
    """All cases of a run: the option grid, the edge cases, ``seed``-drawn random cases, then
    the fused linear loss's cases (``parity._linear_cases.build_linear``)."""
    dense = _grid(quick, seed) + _edge(quick, seed) + _random(8 if quick else 64, seed)
    return dense + build_linear(quick=quick, seed=seed)


def make_inputs(case: Case | LinearCase) -> Inputs | LinearInputs:
    """Draws the case's seeded inputs, rounded to its dtype, in torch's layout."""
    if isinstance(case, LinearCase):
        return make_linear_inputs(case)
    rng = np.random.default_rng(case.seed)
    axis = case.class_axis
    c = case.shape[axis]
    last = np.moveaxis(rng.normal(0.0, 2.0, case.shape), axis, -1)  # class axis last
    batch = last.shape[:-1]
    masked = np.zeros(last.shape, bool)
    if case.logits == "large":
        last = last + rng.choice([-3e4, 3e4], size=batch)[..., None]
    elif case.logits == "neg_inf":
        masked = rng.random(last.shape) < 0.3
        keep = rng.integers(0, c, size=batch)  # one class per row stays finite
        masked &= np.arange(c) != keep[..., None]
        last = np.where(masked, -np.inf, last)
    if c == 0:  # no class to draw: an empty batch of indices, or empty probability rows
        labels = np.zeros(case.shape) if case.target == "prob" else np.zeros(batch, np.int64)
    elif case.target == "index":
        allowed = np.where(masked, -np.inf, rng.random(last.shape))
        labels = np.array(np.argmax(allowed, axis=-1), dtype=np.int64)
        if case.ignore == "all":
            labels[...] = case.ignore_index
        elif case.ignore == "some" and case.ignore_index < 0:
            labels[rng.random(batch) < 0.3] = case.ignore_index
        elif case.ignore == "some" and labels.size:  # a real class: at least one row has it
            labels.flat[0] = case.ignore_index
    else:
        z = np.where(masked, -np.inf, rng.normal(0.0, 1.5, last.shape))
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        labels = np.moveaxis(round_to(z / z.sum(-1, keepdims=True), case.dtype), -1, axis)
    logits = np.moveaxis(round_to(last, case.dtype), -1, axis)
    weight = round_to(rng.uniform(0.2, 2.0, c), case.dtype) if case.weight else None
    if case.reduction == "none":
        cotangent = round_to(rng.normal(0.0, 1.0, batch), case.dtype)
    else:
        cotangent = round_to(np.asarray(rng.uniform(0.5, 2.0)), case.dtype)
    return Inputs(logits, labels, weight, cotangent)
