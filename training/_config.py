"""A training run's settings: one frozen dataclass, each field with its help text, validated.

train.py derives its flags from `Config`'s fields (the name, the type, and the ``help``,
``metavar``, ``choices``, ``flag`` and ``group`` metadata given by `setting`), so a setting is
declared once. `Config` checks every value that can be checked without devices or data; the
checks that need them (the batch size against the device count and the training split, the
number of training calls against the steps of an epoch) are `check_batch_size` and
`Config.check_against`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from training._dataset import DATASETS, check_dataset_name
from training._errors import (
    ConfigError,
    check_choice,
    check_fraction,
    check_hidden,
    check_int,
    check_positive,
)

LOSSES = ("jaxce", "optax")  # make_loss's names: jaxce's cross-entropy, or optax's

SEED_LIMIT = 2**32
_SEED_BITS = "jax keeps 32 bits of a seed unless x64 is on: 2**32 would repeat seed 0"
DEFAULT_CHUNKS = 10
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(\d+)$")


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A `Config` field with its help text; ``metadata`` may hold ``metavar``, ``choices``,
    ``flag`` (when the flag is not ``--`` + the field name with dashes) and ``group``."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use an immutable default")
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


_CHECKPOINTS = "checkpoints and resume"
_PROCESSES = "several processes"


@dataclasses.dataclass(frozen=True)
class Config:
    """A training run's settings (train.py's flags); the defaults are the PyTorch tutorial's."""

    epochs: int = setting(10, "passes over the training split", metavar="N")
    batch_size: int = setting(64, "global batch size, a multiple of the device count", metavar="N")
    learning_rate: float = setting(1e-3, "Adam's learning rate", flag="--lr", metavar="LR")
    hidden: tuple[int, ...] = setting(
        (128,), "hidden layer widths, e.g. --hidden 256 128", metavar="WIDTH"
    )
    seed: int = setting(0, "fixes the initial parameters and the data order, 0 to 2**32-1")
    dataset: str = setting("mnist", "which dataset", choices=tuple(DATASETS))
    data_dir: str | None = setting(
        None,
        "read the four IDX files (gzipped or not) from DIR instead of downloading through "
        "tensorflow-datasets",
        metavar="DIR",
    )
    strict_checksums: bool = setting(
        False, "a file whose SHA-256 differs from tensorflow-datasets' is an error"
    )
    loss: str = setting(
        "jaxce", "jaxce.loss.cross_entropy, or optax's for comparison", choices=LOSSES
    )
    label_smoothing: float = setting(
        0.0,
        "the training loss' label smoothing, 0 to 1, as torch's (the test loss is unsmoothed)",
        metavar="EPS",
    )
    out: str | None = setting(
        None, "output directory (default: a new runs/<timestamp>)", metavar="DIR"
    )
    chunks: int | None = setting(
        None,
        f"compiled calls per epoch, i.e. progress-bar updates (default {DEFAULT_CHUNKS}, or one "
        "per step when an epoch is shorter; 1: one call)",
        metavar="N",
    )
    checkpoint_every: int = setting(
        0,
        "also checkpoint after every K-th step (0: only after each epoch)",
        metavar="K",
        group=_CHECKPOINTS,
    )
    keep_checkpoints: int = setting(
        3, "keep the newest N checkpoints", metavar="N", group=_CHECKPOINTS
    )
    resume: bool = setting(
        False, "continue the run in --out from its latest good checkpoint", group=_CHECKPOINTS
    )
    overwrite: bool = setting(
        False,
        "delete the run in --out (checkpoints and metrics) and start over",
        group=_CHECKPOINTS,
    )
    coordinator_address: str | None = setting(
        None, "process 0's address", metavar="HOST:PORT", group=_PROCESSES
    )
    num_processes: int | None = setting(None, "number of processes", metavar="N", group=_PROCESSES)
    process_id: int | None = setting(None, "this process, 0 to N-1", metavar="I", group=_PROCESSES)
    coordinator_timeout: float = setting(
        300.0,
        "seconds to wait for all processes to join before giving up",
        metavar="SECONDS",
        group=_PROCESSES,
    )

    def __post_init__(self):
        for name in ("epochs", "batch_size", "keep_checkpoints"):
            check_int(name, getattr(self, name), low=1)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        if self.chunks is not None:
            check_int("chunks", self.chunks, low=1)
        check_int("seed", self.seed, low=0, high=SEED_LIMIT - 1, why=_SEED_BITS)
        check_positive("learning_rate", self.learning_rate, float32=True)
        check_positive("coordinator_timeout", self.coordinator_timeout)
        check_hidden(self.hidden)
        check_dataset_name(self.dataset)
        check_choice("loss", self.loss, LOSSES)
        check_fraction("label_smoothing", self.label_smoothing)
        if self.resume and self.overwrite:
            raise ConfigError(
                "{@resume} continues the run in {@out} and {@overwrite} deletes it; "
                "pass one of them"
            )
        if self.out is not None and not self.out.strip():
            raise ConfigError("{@out} must name a directory, got {got!r}", got=self.out)
        if self.coordinator_address is not None:
            check_host_port(self.coordinator_address)
        if self.num_processes is not None:
            check_int("num_processes", self.num_processes, low=1)
        if self.process_id is not None:
            high = None if self.num_processes is None else self.num_processes - 1
            check_int("process_id", self.process_id, low=0, high=high)

    def epoch_chunks(self, steps_per_epoch: int) -> int:
        """Training calls per epoch: ``chunks``, or the default (at most one per step)."""
        if self.chunks is None:
            return min(DEFAULT_CHUNKS, steps_per_epoch)
        if self.chunks > steps_per_epoch:
            raise ConfigError(
                "{@chunks} {chunks} is more than the {steps} steps of an epoch (at most one "
                "compiled call per step); use {@chunks} {steps} or less",
                chunks=self.chunks,
                steps=steps_per_epoch,
            )
        return self.chunks

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-able values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}


def check_host_port(address: str) -> tuple[str, int]:
    """Splits ``host:port`` (``[v6]:port`` for IPv6); raises ConfigError naming the setting."""
    match = _HOST_PORT.match(address)
    port = int(match.group(2)) if match else 0
    if not match or not 1 <= port <= 65535:
        raise ConfigError(
            "{@coordinator_address} must be HOST:PORT with a port from 1 to 65535 (an IPv6 host "
            "in brackets, [::1]:1234), got {got!r}",
            got=address,
        )
    return match.group(1).strip("[]"), port
