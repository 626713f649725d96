"""Command line: ``python -m parity`` (loss parity) and ``python -m parity train``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from parity._jax_side import DEFAULT_IMPL


@dataclasses.dataclass(frozen=True)
class LossConfig:
    out: Path
    quick: bool
    seed: int
    impl: str
    only: str | None
    progress: bool

    def as_json(self) -> dict:
        return {**dataclasses.asdict(self), "out": str(self.out)}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data_dir: Path
    out: Path
    steps: int
    batch_size: int
    seed: int
    progress: bool

    def as_json(self) -> dict:
        return {**dataclasses.asdict(self), "out": str(self.out), "data_dir": str(self.data_dir)}


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return value


def parse_loss(argv: list[str]) -> LossConfig:
    p = argparse.ArgumentParser(
        prog="python -m parity",
        description="Loss and gradient parity of a cross-entropy against torch and a float64 "
        "reference (run `python -m parity train --help` for training parity).",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/parity"),
        help="directory for report.json, report.md, report.html (default %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="a representative subset (< 1 min)")
    p.add_argument("--seed", type=int, default=0, help="seed of all inputs (default 0)")
    p.add_argument(
        "--impl",
        default=DEFAULT_IMPL,
        metavar="MODULE:FUNCTION",
        help="the function under test, with jaxce.loss.cross_entropy's signature "
        "(default %(default)s)",
    )
    p.add_argument(
        "--only",
        metavar="GLOB",
        help="run only the cases whose id matches this shell pattern, e.g. 'grid/float16/*'",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    a = p.parse_args(argv)
    return LossConfig(a.out, a.quick, a.seed, a.impl, a.only, a.progress)


def parse_train(argv: list[str]) -> TrainConfig:
    p = argparse.ArgumentParser(
        prog="python -m parity train",
        description="Training parity: the same MLP in Flax and torch, same data, Adam 1e-3.",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("../shared/data/mnist-mini"),
        help="an MNIST IDX directory (default %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/parity-train"),
        help="directory for report.json, report.md, report.html (default %(default)s)",
    )
    p.add_argument("--steps", type=_positive, default=500, help="Adam steps (default 500)")
    p.add_argument("--batch-size", type=_positive, default=128, help="(default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and batches")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    a = p.parse_args(argv)
    return TrainConfig(a.data_dir, a.out, a.steps, a.batch_size, a.seed, a.progress)


def main(argv: list[str] | None = None) -> int:
    """Dispatches to loss parity or, with a leading ``train``, training parity."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["train"]:
            from parity._train import run_training_parity

            return run_training_parity(parse_train(argv[1:]))
        from parity._matrix import run_loss_parity

        return run_loss_parity(parse_loss(argv))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
