"""The fused linear cross-entropy's cases: options, torch's path, jaxce's layout, seeded inputs.

Each case compares one jaxce entry point with one path of torch 2.13's
``torch.nn.functional.linear_cross_entropy`` on the same inputs:

  * ``api="torch"``: ``jaxce.torch_linear_cross_entropy`` with torch's ``linear_weight``
    (C, *out_features, D); ``api="jax"``: ``jaxce.linear_cross_entropy`` with the transposed
    kernel (D, C, *out_features), whose gradient is transposed back before it is compared;
  * ``path="reference"``: torch's ``options=None`` (``linear`` then ``cross_entropy``);
    ``path="chunked"``: ``options=LinearCrossEntropyOptions()``, torch's batch-chunked op. It
    takes int64 class indices without label smoothing or ``out_features`` only (torch falls
    back to the reference path with a warning otherwise), so chunked cases exist only there.

jaxce runs with ``row_chunk_size=ROW_CHUNK`` and ``chunk_size=CLASS_CHUNK``, which split the
rows and the classes into ragged chunks (class-index cases without ``out_features`` have fewer
rows than classes, so their gradients sweep class chunks; the others sweep row chunks);
torch's chunked path picks its own chunks (4 or 8 rows here). Inputs are drawn in float64 from
a seed derived from the case id and rounded to the case's dtype, so every side sees the same
numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from typing import NamedTuple

import numpy as np

from parity._tolerances import round_to

LINEAR_DTYPES = ("float64", "float32", "bfloat16")
ROWS, FEATURES, CLASSES = 24, 8, 32  # torch chunks these rows by 4 (float32/64) or 8 (bfloat16)
KDIM_ROWS, KDIM_CLASSES, KDIM_OUT = 10, 12, (3,)
ROW_CHUNK, CLASS_CHUNK = 7, 12  # jaxce's chunks: 24 rows = 3 x 7 + 3, 32 classes = 2 x 12 + 8


@dataclasses.dataclass(frozen=True)
class LinearCase:
    """One fused-linear case: a jaxce entry point against one torch path, in torch's terms."""

    id: str
    dtype: str
    api: str  # "torch" | "jax"
    path: str  # "reference" | "chunked": torch's path
    rows: int
    features: int
    classes: int
    out_features: tuple[int, ...]
    target: str  # "index" | "prob"
    weight: bool
    bias: bool
    ignore: str  # "none" | "some" | "all"
    ignore_index: int  # passed for class indices only
    reduction: str
    smoothing: float
    seed: int
    intentional: str | None = None  # a key of INTENTIONAL
    group: str = "linear"
    logits: str = "linear"  # the logits are hidden @ kernel + bias

    @property
    def class_axis(self) -> int:
        return 1

    @property
    def layout(self) -> str:
        return "NCd" if self.out_features else "NC"

    @property
    def shape(self) -> tuple[int, ...]:
        """The logits' shape in torch's layout."""
        return (self.rows, self.classes, *self.out_features)


class LinearInputs(NamedTuple):
    """float64 arrays holding values exactly representable in the case's dtype."""

    hidden: np.ndarray  # (N, D)
    linear_weight: np.ndarray  # (C, *out_features, D), torch's layout
    bias: np.ndarray | None  # (C, *out_features)
    labels: np.ndarray  # int64 (N, *out_features) or float64 probabilities (N, C, *out)
    weight: np.ndarray | None  # (C,)
    cotangent: np.ndarray  # () or, for reduction="none", (N, *out_features)


def torch_linear_options(case: LinearCase, inputs: LinearInputs) -> dict:
    """The keyword arguments of a torch-layout call (torch and the reference) for a case."""
    return {
        "bias": inputs.bias,
        "weight": inputs.weight,
        "cotangent": inputs.cotangent,
        "ignore_index": case.ignore_index,
        "reduction": case.reduction,
        "label_smoothing": case.smoothing,
    }


def chunked_takes(target: str, smoothing: float, out_features: tuple) -> bool:
    """Whether torch 2.13's chunked path runs these options (else it falls back)."""
    return target == "index" and smoothing == 0.0 and not out_features


def make_linear_case(
    dtype: str,
    api: str,
    path: str,
    target: str,
    *,
    weight=False,
    bias=False,
    ignore="none",
    ignore_index=-100,
    reduction="mean",
    smoothing=0.0,
    out_features=(),
    tag="",
    base_seed=0,
    intentional=None,
) -> LinearCase:
    """Builds a case whose id spells out its options and whose seed derives from that id."""
    parts = ["linear" + (f"-{tag}" if tag else ""), dtype, f"{api}-{path}", target]
    parts += ["weight"] if weight else []
    parts += ["bias"] if bias else []
    parts += [f"ignore{ignore_index}-{ignore}"] if ignore != "none" else []
    parts += [reduction] + ([f"ls{smoothing:g}"] if smoothing else [])
    parts += ["out" + "x".join(map(str, out_features))] if out_features else []
    case_id = "/".join(parts)
    rows, classes = (KDIM_ROWS, KDIM_CLASSES) if out_features else (ROWS, CLASSES)
    return LinearCase(
        case_id,
        dtype,
        api,
        path,
        rows,
        FEATURES,
        classes,
        tuple(out_features),
        target,
        weight,
        bias,
        ignore,
        ignore_index,
        reduction,
        float(smoothing),
        (zlib.crc32(case_id.encode()) + 7919 * base_seed) % 2**32,
        intentional,
    )


# The ids --quick keeps: every dtype, both torch paths and both jaxce layouts, both target
# kinds, every reduction, bias, class weight, ignore_index, smoothing, out_features and the
# chunked path's all-ignored mean.
_QUICK = {
    "linear/float32/torch-reference/index/mean",
    "linear/float32/torch-reference/index/weight/bias/ignore-100-some/mean/ls0.1",
    "linear/float32/torch-chunked/index/weight/bias/ignore-100-some/mean",
    "linear/float32/torch-chunked/index/bias/none",
    "linear/float32/torch-chunked/index/weight/sum",
    "linear/float32/jax-reference/index/weight/ignore-100-some/sum/ls0.1",
    "linear/float32/jax-chunked/index/bias/ignore-100-some/mean",
    "linear/float32/jax-reference/prob/bias/mean/ls0.1",
    "linear/float32/torch-reference/prob/weight/none",
    "linear/float32/torch-reference/index/weight/bias/ignore-100-some/mean/out3",
    "linear/float32/jax-reference/prob/bias/sum/ls0.1/out3",
    "linear/float64/torch-chunked/index/weight/bias/ignore-100-some/mean",
    "linear/float64/jax-reference/prob/weight/bias/none/ls0.1",
    "linear/bfloat16/torch-reference/index/weight/bias/ignore-100-some/mean/ls0.1",
    "linear/bfloat16/torch-chunked/index/bias/sum",
    "linear/bfloat16/jax-reference/prob/mean",
    "linear-all-ignored/float32/torch-chunked/index/bias/ignore-100-all/mean",
    "linear-all-ignored/float32/torch-reference/index/bias/ignore-100-all/mean",
    "linear-all-ignored/float32/jax-chunked/index/ignore-100-all/sum",
    "linear-ignore-a-class/float32/torch-chunked/index/weight/bias/ignore1-some/mean",
}


def build_linear(*, quick: bool, seed: int) -> list[LinearCase]:
    """The fused linear cases of a run: the option grid, out_features and the edge cases.

    Per dtype, every option set runs with ``api="torch"`` and ``api="jax"`` on torch's
    reference path, and on its chunked path where torch takes the options.
    """
    both, cases = (False, True), []

    def add(dtype, target, **kw):
        chunked = chunked_takes(target, kw.get("smoothing", 0.0), kw.get("out_features", ()))
        for api, path in itertools.product(("torch", "jax"), ("reference", "chunked")):
            if path == "chunked" and not chunked:
                continue
            why = None
            if path == "chunked" and kw.get("ignore") == "all" and kw["reduction"] == "mean":
                why = "chunked_all_ignored"
            cases.append(make_linear_case(dtype, api, path, target, base_seed=seed,
                                          intentional=why, **kw))  # fmt: skip

    for dtype in LINEAR_DTYPES:
        for w, b, red, ls in itertools.product(both, both, ("none", "mean", "sum"), (0.0, 0.1)):
            for ignore in ("none", "some"):
                add(dtype, "index", weight=w, bias=b, ignore=ignore, reduction=red, smoothing=ls)
            add(dtype, "prob", weight=w, bias=b, reduction=red, smoothing=ls)
        for red in ("none", "mean", "sum"):
            kdim = dict(bias=True, reduction=red, out_features=KDIM_OUT)
            add(dtype, "index", weight=True, ignore="some", **kdim)
            add(dtype, "prob", smoothing=0.1, **kdim)
            add(dtype, "prob", weight=True, **kdim)
            for w, b in ((False, False), (False, True), (True, True)):
                add(dtype, "index", tag="all-ignored", weight=w, bias=b, ignore="all",
                    reduction=red)  # fmt: skip
        add(dtype, "index", tag="ignore-a-class", weight=True, bias=True, ignore="some",
            ignore_index=1)  # fmt: skip
        add(dtype, "index", tag="ignore-a-class", weight=True, ignore="some", ignore_index=1,
            smoothing=0.1)  # fmt: skip
    if quick:
        cases = [c for c in cases if c.id in _QUICK]
    return cases


def make_linear_inputs(case: LinearCase) -> LinearInputs:
    """Draws the case's seeded inputs, rounded to its dtype, in torch's layout."""
    rng = np.random.default_rng(case.seed)
    n, d, c, out = case.rows, case.features, case.classes, case.out_features
    dt = case.dtype
    hidden = round_to(rng.normal(0.0, 1.0, (n, d)), dt)
    linear_weight = round_to(rng.normal(0.0, 1.5 / np.sqrt(d), (c, *out, d)), dt)
    bias = round_to(rng.normal(0.0, 0.5, (c, *out)), dt) if case.bias else None
    examples = (n, *out)
    if case.target == "index":
        labels = rng.integers(0, c, size=examples).astype(np.int64)
        if case.ignore == "all":
            labels[...] = case.ignore_index
        elif case.ignore == "some" and case.ignore_index < 0:
            labels[rng.random(examples) < 0.3] = case.ignore_index
        elif case.ignore == "some":  # a real class: at least one example has it
            labels.flat[0] = case.ignore_index
    else:
        z = rng.normal(0.0, 1.5, (*examples, c))
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        labels = np.moveaxis(round_to(z / z.sum(-1, keepdims=True), dt), -1, 1)
    weight = round_to(rng.uniform(0.2, 2.0, c), dt) if case.weight else None
    if case.reduction == "none":
        cotangent = round_to(rng.normal(0.0, 1.0, examples), dt)
    else:
        cotangent = round_to(np.asarray(rng.uniform(0.5, 2.0)), dt)
    return LinearInputs(hidden, linear_weight, bias, labels, weight, cotangent)
