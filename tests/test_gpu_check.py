"""``.ci/gpu-check``, the prepared GPU run, as far as a machine without a GPU can check it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import device_info

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "gpu-check"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_dry_run_lists_every_measurement(tmp_path):
    out = subprocess.run(
        [str(SCRIPT), str(tmp_path / "out")],
        env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    py = ".venv/bin/python"
    assert out.stdout.splitlines() == [
        f"make test JAX=cuda12 ARGS=--junitxml={tmp_path}/out/junit.xml",
        f"{py} -m benchmarks.device_info",
        f"{py} train.py --data-dir {tmp_path} --epochs 3 --out {tmp_path}/out/train",
        f"{py} -m benchmarks.loss --quick --json {tmp_path}/out/loss.json",
        f"{py} -m benchmarks.linear --json {tmp_path}/out/linear.json",
        "make accel-check",
    ]
    assert not (tmp_path / "out").exists()


def test_device_info_names_the_backend_the_script_checks():
    info = device_info.describe()
    assert info["backend"] == "cpu" and info["device_count"] >= 1
    assert info["packages"]["jax"]
    assert '"backend": "cpu"' in json.dumps(info, indent=1)  # the form the script greps for
