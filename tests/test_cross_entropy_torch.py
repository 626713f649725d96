"""Differential tests: jaxce.loss against torch.nn.functional.cross_entropy, values and gradients.

The grid covers every layout torch accepts ((C), (N, C), (N, C, d1), (N, C, d1, d2)) and JAX's
class-last layout, float32 and float64, each reduction, class weights, ignore_index (the default
-100 with no label equal to it, -100 on some labels, and a valid class index on some labels),
label smoothing, and class-index and probability targets: 480 cases.

They run through the parity runner (``parity._matrix.CaseRunner``), as ``python -m parity`` does:
the cases of one layout and dtype compile as one program, torch runs on the same inputs (exact in
the dtype), and each case is judged by the one tolerance rule against torch, and by parity's
verdict against the float64 reference as well.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import pytest

from jaxce import loss
from parity._cases import make_case, make_inputs
from parity._compare import PASSED, QUANTITIES
from parity._matrix import CaseRunner, record
from tests.batch import shared_groups
from tests.conftest import x64_scope
from tests.tolerances import assert_close

# test name: (parity layout, logits' shape in torch's layout)
LAYOUTS = {
    "C": ("C", (5,)),
    "NC": ("NC", (6, 5)),
    "NCd": ("NCd", (3, 5, 4)),
    "NCdd": ("NCd", (2, 5, 3, 2)),
    "NdC-class-last": ("NdC", (3, 5, 4)),
}
# test name: (which labels equal ignore_index, ignore_index)
IGNORE = {
    "no-ignore": ("none", -100),
    "ignore-default": ("some", -100),
    "ignore-class-1": ("some", 1),
}


def _grid() -> list:
    params = []
    for layout, dtype, reduction, target, weighted, smoothing in itertools.product(
        LAYOUTS,
        ("float32", "float64"),
        ("mean", "sum", "none"),
        ("index", "probs"),
        (False, True),
        (0.0, 0.25),
    ):
        for ignore in IGNORE if target == "index" else ("no-ignore",):
            parity_layout, shape = LAYOUTS[layout]
            labels_ignored, ignore_index = IGNORE[ignore]
            case = make_case(
                "torch",
                dtype,
                parity_layout,
                shape,
                "index" if target == "index" else "prob",
                weight=weighted,
                ignore=labels_ignored,
                ignore_index=ignore_index,
                reduction=reduction,
                smoothing=smoothing,
                tag=layout,
            )
            test_id = (
                f"{layout}-{dtype}-{reduction}-{target}-{'weight' if weighted else 'noweight'}"
                f"-ls{smoothing}-{ignore}"
            )
            params.append(pytest.param(case, id=test_id))
    return params


GRID = _grid()


def _compile_group(case) -> tuple[str, str]:
    """Cases of one layout and dtype compile together (48 cases, 36 distinct programs)."""
    return case.id.split("/")[0], case.dtype


@pytest.fixture(scope="module")
def outcome_of(tmp_path_factory):
    """The parity outcome of a grid case; its compile group runs on first use, once per test
    session (a group whose tests are split between xdist workers still compiles once)."""
    runner = CaseRunner(loss.cross_entropy, with_optax=False)

    def compute(key):
        cases = [p.values[0] for p in GRID if _compile_group(p.values[0]) == key]
        return {o.case.id: o for o in runner.run(cases)}

    groups = shared_groups(tmp_path_factory, "torch-grid", compute)
    return lambda case: groups(_compile_group(case))[case.id]


def test_grid_ids_and_cases_are_unique():
    assert len(GRID) == 480
    assert len({p.id for p in GRID}) == len({p.values[0].id for p in GRID}) == 480


@pytest.mark.parametrize("case", GRID)
def test_matches_torch(case, outcome_of):
    outcome = outcome_of(case)
    assert not isinstance(outcome.torch, Exception), f"torch raised {outcome.torch!r}"
    assert not isinstance(outcome.impl, Exception), f"jaxce raised {outcome.impl!r}"
    assert (outcome.impl.grad_target is None) == (outcome.torch.grad_target is None)
    for name, quantity in QUANTITIES.items():
        expected = getattr(outcome.torch, name)
        if expected is not None:
            assert_close(
                getattr(outcome.impl, name),
                expected,
                dtype=case.dtype,
                quantity=quantity,
                context=f"{case.id}: {name}",
            )
    verdict = record(outcome)  # and against the float64 reference, as the parity report says
    assert verdict["status"] == PASSED, verdict["failures"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_module_matches_torch_module(dtype, reduction):
    """CrossEntropyLoss takes torch's layout and options and returns torch's module output."""
    import torch

    case = make_case(
        "module", dtype, "NCd", (3, 5, 4), "index", weight=True, ignore="some", ignore_index=1
    )
    inputs = make_inputs(case)
    expected = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(inputs.weight), ignore_index=1, reduction=reduction, label_smoothing=0.1
    )(torch.tensor(inputs.logits), torch.tensor(inputs.labels))
    with x64_scope(dtype):
        criterion = loss.CrossEntropyLoss(
            weight=jnp.asarray(inputs.weight, dtype),
            ignore_index=1,
            reduction=reduction,
            label_smoothing=0.1,
        )
        actual = criterion(jnp.asarray(inputs.logits, dtype), jnp.asarray(inputs.labels))
        assert actual.dtype == jnp.dtype(dtype)
    assert_close(actual, expected.numpy(), dtype=dtype, quantity="loss")


def test_top_level_exports_are_the_loss_functions():
    import jaxce

    assert jaxce.cross_entropy is loss.cross_entropy
    assert jaxce.CrossEntropyLoss is loss.CrossEntropyLoss
    assert set(jaxce.__all__) >= {"cross_entropy", "CrossEntropyLoss", "loss"}
