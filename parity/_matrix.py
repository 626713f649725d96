"""Runs the case matrix: inputs, float64 reference, torch, the implementation under test, optax.

The fused linear cases (``parity._linear_cases``) run jaxce's fused loss (``LinearRunner``)
against ``torch.nn.functional.linear_cross_entropy`` and the float64 linear reference, in
compile groups of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from parity._cases import Case, Inputs, make_inputs, torch_options
from parity._compare import FAILED, evaluate, gradient_unit, linear_units
from parity._env import environment
from parity._html import loss_html
from parity._jax_side import Runner, optax_cross_entropy, optax_supports
from parity._linear_cases import LinearCase, LinearInputs, torch_linear_options
from parity._linear_jax import LinearRunner
from parity._reference import LinearResult, Result
from parity._reference import cross_entropy as reference_cross_entropy
from parity._reference import linear_cross_entropy as reference_linear_cross_entropy
from parity._report import build_payload, markdown, report_json, write_reports
from parity._torch_side import run_torch, run_torch_linear
from training import _interrupt as interrupt

GROUP_SIZE = 24  # signatures (options, shapes, dtype) per compiled program


class Outcome(NamedTuple):
    """Everything one case produced; ``impl``/``torch`` hold the exception if one raised."""

    case: Case | LinearCase
    inputs: Inputs | LinearInputs
    impl: Result | LinearResult | Exception
    torch: Result | LinearResult | Exception
    reference: Result | LinearResult | None  # None where the reference cannot evaluate them
    optax: Result | None  # None where optax does not support the case (or raised)


def _reference(case, inputs):
    if isinstance(case, LinearCase):
        return reference_linear_cross_entropy(
            inputs.hidden, inputs.linear_weight, inputs.labels, **torch_linear_options(case, inputs)
        )
    return reference_cross_entropy(inputs.logits, inputs.labels, **torch_options(case, inputs))


def _torch(case, inputs):
    linear = isinstance(case, LinearCase)
    return run_torch_linear(case, inputs) if linear else run_torch(case, inputs)


class CaseRunner:
    """Runs cases through the implementation under test, torch, optax and the reference.

    The implementation and optax run a whole list of cases as one compiled program (see
    ``parity._jax_side.Runner``); torch and the numpy reference run case by case. Fused linear
    cases run jaxce's fused loss through ``linear_runner`` (default: ``LinearRunner()``, which
    calls ``jaxce.torch_linear_cross_entropy`` and ``jaxce.linear_cross_entropy``); a list of
    cases holds one kind or the other.
    """

    def __init__(
        self,
        impl_fn: Callable,
        *,
        with_optax: bool = True,
        linear_runner: LinearRunner | None = None,
    ):
        self._impl = Runner(impl_fn)
        self._optax = Runner(optax_cross_entropy) if with_optax else None
        self._linear = linear_runner

    def run(self, cases: list[Case] | list[LinearCase]) -> list[Outcome]:
        """The outcomes of ``cases``, in order; the implementation's cases compile together."""
        items = [(c, make_inputs(c)) for c in cases]
        linear = bool(cases) and isinstance(cases[0], LinearCase)
        if linear and self._linear is None:
            self._linear = LinearRunner()
        impl_outs = (self._linear if linear else self._impl).run_group(items)
        optax_outs = {}
        if self._optax is not None and not linear:
            supported = [(c, i) for c, i in items if optax_supports(c)]
            outs = self._optax.run_group(supported)
            optax_outs = {c.id: o for (c, _), o in zip(supported, outs, strict=True)}
        outcomes = []
        for (case, inputs), impl_out in zip(items, impl_outs, strict=True):
            try:
                torch_out = _torch(case, inputs)
            except Exception as err:  # torch refusing the input is its answer
                torch_out = err
            try:
                reference = _reference(case, inputs)
            except Exception:  # inputs outside the reference's domain: evaluate() says so
                reference = None
            optax_out = optax_outs.get(case.id)
            optax_out = None if isinstance(optax_out, Exception) else optax_out
            outcomes.append(Outcome(case, inputs, impl_out, torch_out, reference, optax_out))
        return outcomes


def record(outcome: Outcome) -> dict:
    """The report record of an outcome (see ``parity._compare.evaluate``)."""
    case, inputs = outcome.case, outcome.inputs
    if isinstance(case, LinearCase):
        units = linear_units(inputs, outcome.reference)
        return evaluate(case, outcome.impl, outcome.torch, outcome.reference, None, units=units)
    return evaluate(
        case,
        outcome.impl,
        outcome.torch,
        outcome.reference,
        outcome.optax,
        grad_unit=gradient_unit(case, inputs),
    )


def _signature(case) -> tuple:
    linear = isinstance(case, LinearCase)
    return (
        (linear, case.dtype == "float64"),
        (case.api, case.bias) if linear else (),
        case.dtype,
        case.layout,
        case.shape,
        case.target,
        case.weight,
        case.ignore_index,
        case.reduction,
        case.smoothing,
    )


def groups(cases: list[Case]) -> list[list[int]]:
    """Positions of ``cases`` in compile groups: equal signatures together, at most GROUP_SIZE
    signatures per group, float64 cases (run with x64 on) apart from the others, fused linear
    cases apart from the dense ones."""
    order = sorted(range(len(cases)), key=lambda i: _signature(cases[i]))
    out: list[list[int]] = []
    signatures: set = set()
    for i in order:
        sig = _signature(cases[i])
        full = sig not in signatures and len(signatures) == GROUP_SIZE
        if not out or full or sig[0] != _signature(cases[out[-1][0]])[0]:
            out.append([])
            signatures = set()
        signatures.add(sig)
        out[-1].append(i)
    return out


def run_matrix(
    cases: list,
    impl_fn: Callable,
    *,
    progress: bool = False,
    linear_runner: LinearRunner | None = None,
) -> list[dict]:
    """Evaluates every case and returns one report record per case, in the order of ``cases``.

    ``impl_fn`` is the dense cross-entropy under test; fused linear cases run through
    ``linear_runner`` (default: jaxce's fused loss). An exception raised by the implementation
    under test fails that case with its message; the run goes on. Optax failing on a case it
    should support is recorded, not fatal.
    """
    runner = CaseRunner(impl_fn, linear_runner=linear_runner)
    records: list[dict | None] = [None] * len(cases)
    failed = 0
    with tqdm(
        total=len(cases), desc="loss parity", unit="case", disable=not progress, dynamic_ncols=True
    ) as bar:
        for positions in groups(cases):
            interrupt.check()  # a signal Python dropped (a gc callback) stops the run here
            for i, outcome in zip(
                positions, runner.run([cases[i] for i in positions]), strict=True
            ):
                records[i] = record(outcome)
                failed += records[i]["status"] == FAILED
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(len(positions))
    return records


def run_loss_parity(config, impl_fn: Callable, cases: list[Case]) -> int:
    """``python -m parity``: runs the cases, writes the three reports; 0 only if none failed."""
    start = time.perf_counter()
    records = run_matrix(cases, impl_fn, progress=config.progress)
    payload = build_payload(
        records,
        config=config.as_json(),
        environment=environment(),
        elapsed_s=time.perf_counter() - start,
    )
    out = Path(config.out)
    texts = {"report.json": report_json(payload), "report.md": markdown(payload)}
    write_reports(out, {**texts, "report.html": loss_html(payload)})
    summary = payload["summary"]
    for case_id in summary["failed_cases"]:
        print(f"FAILED {case_id}")
    print(f"reports: {out / 'report.json'}, {out / 'report.md'}, {out / 'report.html'}")
    print(summary["line"])
    return 0 if summary[FAILED] == 0 else 1
