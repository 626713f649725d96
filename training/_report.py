"""What a run leaves behind: metrics.json, curves.png and the description of the machine."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "jaxce")


@dataclasses.dataclass
class History:
    """Per-epoch numbers of a run (index i is epoch i + 1)."""

    train_loss: list[float] = dataclasses.field(default_factory=list)
    test_loss: list[float] = dataclasses.field(default_factory=list)
    test_accuracy: list[float] = dataclasses.field(default_factory=list)
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)
    eval_seconds: list[float] = dataclasses.field(default_factory=list)

    def append(self, **values: float) -> None:
        """Adds one epoch; every field must be given."""
        for name in self.as_dict():
            getattr(self, name).append(float(values[name]))

    def as_dict(self) -> dict[str, list[float]]:
        return dataclasses.asdict(self)


def describe_devices() -> dict[str, Any]:
    """The backend, the devices and the processes this run uses."""
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def describe_backend(devices: dict[str, Any] | None = None) -> str:
    """One line: the backend, the devices and processes, and jax's version."""
    devices = describe_devices() if devices is None else devices
    processes = devices["process_count"]
    return (
        f"backend {devices['backend']}: {devices['device_count']} x {devices['device_kind']}"
        f"{f' over {processes} processes' if processes > 1 else ''} (jax {jax.__version__})"
    )


def versions() -> dict[str, str]:
    """Python's and the numerical packages' versions."""
    found = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Writes ``metrics`` as indented JSON, atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, path)


def plot_curves(path: Path, history: History, *, title: str) -> None:
    """Saves loss (train and test) and test accuracy per epoch to a PNG.

    A bare ``Figure`` (rendered by Agg when saved), not pyplot: no GUI backend is chosen or
    imported, and no global figure state is kept.
    """
    from matplotlib.figure import Figure

    epochs = range(1, len(history.train_loss) + 1)
    fig = Figure(figsize=(10, 4))
    # fixed margins (in figure fractions) instead of a layout engine, which measures every label
    fig.subplots_adjust(left=0.075, right=0.98, bottom=0.125, top=0.84, wspace=0.22)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, history.train_loss, "o-", label="train (mean over the epoch)")
    loss_ax.plot(epochs, history.test_loss, "s-", label="test (after the epoch)")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [100 * a for a in history.test_accuracy], "s-", color="C2")
    acc_ax.set(xlabel="epoch", ylabel="%", title="test accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.set_xticks(list(epochs))
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
