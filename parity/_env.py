"""What a report records about the machine and the software it ran on."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import flax
import jax
import numpy as np
import optax
import torch


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """Versions, devices, matmul precision settings and the git commit, as a JSON-ready dict."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    device = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_device": f"{device.platform}:{device.device_kind}",
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "torch": torch.__version__,
        "torch_device": "cpu",
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "torch_num_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
    }
