"""`python -m parity train` on mnist-mini: 300 steps agree with torch within the tolerance."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
MNIST_MINI = SHARED_DATA / "mnist-mini"


needs_mnist_mini = pytest.mark.skipif(
    not MNIST_MINI.is_dir(), reason=f"needs the MNIST IDX files in {MNIST_MINI}"
)


def parity_train(out, *flags, prelude=None):
    """`python -m parity train` on mnist-mini; ``prelude`` (Python) runs first, to plant a bug."""
    data = os.path.relpath(MNIST_MINI, ROOT)  # as the README writes it: ../shared/data/...
    argv = ["train", "--data-dir", data, *flags, "--out", str(out), "--no-progress"]
    if prelude is None:
        command = [sys.executable, "-m", "parity", *argv]
    else:
        main = f"from parity._cli import main\nraise SystemExit(main({argv!r}))"
        command = [sys.executable, "-c", prelude + "\n" + main]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@needs_mnist_mini
def test_training_parity_300_steps_on_mnist_mini(tmp_path):
    proc = parity_train(tmp_path, "--steps", "300")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(
        r"304 passed, 0 failed \(300 of 300 training steps and 4 of 4 parameter tensors", last
    )
    report = json.loads((tmp_path / "report.json").read_text())
    curves = report["curves"]
    assert all(len(curves[k]) == 300 for k in ("jax", "torch", "torch_float64", "tolerance"))
    assert all(curves["step_ok"])
    diffs = [abs(a - b) for a, b in zip(curves["jax"], curves["torch"], strict=True)]
    assert all(d <= t for d, t in zip(diffs, curves["tolerance"], strict=True))
    assert curves["jax"][-1] < 0.5 * curves["jax"][0], "the network actually trains"
    assert report["environment"]["jax_default_matmul_precision"] == "highest"
    assert report["environment"]["torch_allow_tf32"] is False
    page = (tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 2
    assert "Tolerance (derived)" in (tmp_path / "report.md").read_text()
    # mnist-mini is a subset: its SHA-256 is not tfds'; said without training's remedy, a
    # strict_checksums setting parity train does not have
    (warning,) = [w for w in report["data_warnings"] if "SHA-256" in w][:1] or [None]
    assert warning is not None and "strict_checksums" not in warning


@pytest.mark.slow
@needs_mnist_mini
def test_relu_side_and_adam_eps_regime_are_not_false_failures_at_batch_4000(tmp_path):
    """The probe's case: --batch-size 4000 failed (38 of 64 checks at 60 steps, 3 of 7 at 3).

    At step 0 example 6251's hidden unit 74 has z = -1.9e-8 in float64 and +1.8e-8 in JAX's
    float32: one example's gradient more or less for that unit, which Adam turned into a 1.1e-3
    (about lr) difference in w1. The torch runs now take JAX's side there, and the parameters
    are judged per element with Adam's allowance.
    """
    proc = parity_train(tmp_path, "--batch-size", "4000", "--steps", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        "7 passed, 0 failed (3 of 3 training steps and 4 of 4 parameter tensors within the "
        "derived tolerance)"
    )
    report = json.loads((tmp_path / "report.json").read_text())
    s = report["summary"]
    assert s["relu_refused"] == {"torch": 0, "torch_float64": 0}
    for p in report["parameters"].values():
        assert p["max_abs_jax_vs_float64"] < 1e-5  # not lr-sized any more
    if s["max_abs_param_diff_float64_own_relu"]["w1"] > 1e-4:  # the flip happened (this CPU)
        assert s["relu_adopted"]["torch_float64"] >= 1


PLANTED = {
    # the mean's divisor B - 1 instead of B: Adam hides the scale, the losses show it
    "mean-over-b-minus-1": (
        "import parity._train as t\nce = t.cross_entropy\n"
        "t.cross_entropy = lambda logits, y: ce(logits, y) * len(y) / (len(y) - 1)",
        r"\(0 of 3 training steps and \d of 4 parameter tensors",
    ),
    # Adam's eps 1e-7 on the JAX side: exactly the elements the Adam allowance is about
    "jax-adam-eps-1e-7": (
        "import parity._train as t\nrun = t.run_flax\n"
        "def run_flax(*a, **k):\n    t.EPS = 1e-7\n    try:\n        return run(*a, **k)\n"
        "    finally:\n        t.EPS = 1e-8\nt.run_flax = run_flax",
        r"training steps and [0-2] of 4 parameter tensors",
    ),
}


@pytest.mark.slow
@needs_mnist_mini
@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_training_bug_still_fails(tmp_path, bug):
    prelude, verdict = PLANTED[bug]
    proc = parity_train(tmp_path, "--batch-size", "4000", "--steps", "3", prelude=prelude)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(verdict, proc.stdout.strip().splitlines()[-1]), proc.stdout[-1000:]
