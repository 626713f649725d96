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


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_MINI.is_dir(), reason=f"needs the MNIST IDX files in {MNIST_MINI}")
def test_training_parity_300_steps_on_mnist_mini(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "parity",
            "train",
            "--data-dir",
            os.path.relpath(MNIST_MINI, ROOT),  # as the README writes it: ../shared/data/...
            "--steps",
            "300",
            "--out",
            str(tmp_path),
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"304 passed, 0 failed \(300 training steps and 4 parameter tensors", last)
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
