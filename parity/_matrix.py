"""Runs the case matrix: inputs, float64 reference, torch, the implementation under test, optax."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from pathlib import Path

import jax
from tqdm import tqdm

from parity._cases import Case, build_matrix, make_inputs
from parity._compare import FAILED, evaluate, gradient_unit
from parity._env import environment
from parity._html import loss_html
from parity._jax_side import Runner, load_impl, optax_cross_entropy, optax_supports
from parity._reference import Result
from parity._reference import cross_entropy as reference_cross_entropy
from parity._report import build_payload, markdown, write_json
from parity._torch_side import run_torch

GROUP_SIZE = 24  # cases per compiled program


def _reference(case: Case, inputs) -> Result:
    return reference_cross_entropy(
        inputs.logits,
        inputs.labels,
        weight=inputs.weight,
        ignore_index=case.ignore_index,
        reduction=case.reduction,
        label_smoothing=case.smoothing,
        cotangent=inputs.cotangent,
    )


def _record(case, inputs, impl_out, torch_out, reference, optax_out) -> dict:
    unit = gradient_unit(case, inputs)
    if not isinstance(impl_out, Exception):
        return evaluate(case, impl_out, torch_out, reference, optax_out, grad_unit=unit)
    record = evaluate(case, torch_out, torch_out, reference, optax_out, grad_unit=unit)
    record.update(
        status=FAILED,
        errors={},
        closer={},
        failures=[f"implementation raised {type(impl_out).__name__}: {impl_out}"],
    )
    return record


def run_matrix(cases: list[Case], impl_fn: Callable, *, progress: bool = True) -> list[dict]:
    """Evaluates every case and returns one report record per case (see ``evaluate``).

    An exception raised by the implementation under test fails that case with its message;
    the run goes on. Optax failing on a case it should support is recorded, not fatal.
    """
    impl, opt = Runner(impl_fn), Runner(optax_cross_entropy)
    records = []
    bar = tqdm(
        total=len(cases), desc="loss parity", unit="case", disable=not progress, dynamic_ncols=True
    )
    failed = 0
    for start in range(0, len(cases), GROUP_SIZE):
        group = [(c, make_inputs(c)) for c in cases[start : start + GROUP_SIZE]]
        impl_outs = impl.run_group(group)
        supported = [(c, i) for c, i in group if optax_supports(c)]
        optax_outs = dict(zip([c.id for c, _ in supported], opt.run_group(supported), strict=True))
        for (case, inputs), impl_out in zip(group, impl_outs, strict=True):
            optax_out = optax_outs.get(case.id)
            optax_out = None if isinstance(optax_out, Exception) else optax_out
            record = _record(
                case, inputs, impl_out, run_torch(case, inputs), _reference(case, inputs), optax_out
            )
            failed += record["status"] == FAILED
            records.append(record)
            bar.set_postfix(failed=failed, refresh=False)
            bar.update()
    bar.close()
    return records


def run_loss_parity(config) -> int:
    """``python -m parity``: runs the matrix, writes the three reports; 0 only if none failed."""
    jax.config.update("jax_enable_x64", True)  # the float64 cases; float32 stays float32
    impl_fn = load_impl(config.impl)
    cases = build_matrix(quick=config.quick, seed=config.seed)
    if config.only is not None:
        cases = [c for c in cases if fnmatch.fnmatchcase(c.id, config.only)]
        if not cases:
            raise ValueError(
                f"--only {config.only!r} matches no case id; ids look like "
                f"'grid/float32/NC/index/weight/mean' (see report.json)."
            )
    start = time.perf_counter()
    records = run_matrix(cases, impl_fn, progress=config.progress)
    payload = build_payload(
        records,
        config=config.as_json(),
        environment=environment(),
        elapsed_s=time.perf_counter() - start,
    )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(payload, out / "report.json")
    (out / "report.md").write_text(markdown(payload))
    (out / "report.html").write_text(loss_html(payload))
    summary = payload["summary"]
    for case_id in summary["failed_cases"]:
        print(f"FAILED {case_id}")
    print(f"reports: {out / 'report.json'}, {out / 'report.md'}, {out / 'report.html'}")
    print(summary["line"])
    return 0 if summary[FAILED] == 0 else 1
