"""The machine a run measures, as JSON: JAX's backend and devices, the JAX packages, the driver.

``python -m benchmarks.device_info`` (``.ci/gpu-check`` records it beside the benchmarks).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import jax

from benchmarks._machine import installed

PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu", "torch")


def describe() -> dict:
    """JAX's default backend, its devices' kinds and the installed versions of PACKAGES."""
    devices = jax.devices()
    versions = installed(PACKAGES)
    info = {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "packages": versions,
    }
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,memory.total,driver_version,clocks.max.memory"
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True
        )
        info["nvidia_smi"] = smi.stdout.strip().splitlines() or smi.stderr.strip()
    return info


if __name__ == "__main__":
    print(json.dumps(describe(), indent=1))
