"""Train the PyTorch tutorial's MLP (784-128-10, ReLU) on MNIST with Flax NNX, optax and jaxce.

    python train.py                                   # MNIST via tensorflow-datasets (downloads)
    python train.py --data-dir ../shared/data/mnist-mini          # offline: the four IDX files
    python train.py --dataset fashion_mnist --data-dir /usr/share/datasets/fashion-mnist

Writes ``metrics.json`` and ``curves.png`` to ``--out`` (default ``runs/<timestamp>``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from training import DATASETS, DataError
from training._distributed import BatchSizeError
from training._loop import LOSSES
from training._resume import NonFiniteLossError, ResumeError
from training._run import Config, train


def parse_args(argv: list[str] | None = None) -> Config:
    """The command line as a `Config`; ``--out`` defaults to ``runs/<timestamp>``."""
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="global batch size (a multiple of the device count)",
    )
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam's learning rate")
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=list(defaults.hidden),
        help="hidden layer widths, e.g. --hidden 256 128",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="fixes the initial parameters and the data order",
    )
    parser.add_argument("--dataset", choices=list(DATASETS), default=defaults.dataset)
    parser.add_argument(
        "--data-dir",
        default=None,
        help="read the four IDX files (gzipped or not) from DIR instead of "
        "downloading through tensorflow-datasets",
    )
    parser.add_argument(
        "--strict-checksums",
        action="store_true",
        help="a file whose SHA-256 differs from tensorflow-datasets' is an error",
    )
    parser.add_argument(
        "--loss",
        choices=LOSSES,
        default=defaults.loss,
        help="jaxce.loss.cross_entropy, or optax's for comparison",
    )
    parser.add_argument("--out", default=None, help="output directory (default runs/<timestamp>)")
    parser.add_argument(
        "--chunks",
        type=int,
        default=defaults.chunks,
        help="compiled calls per epoch, i.e. progress-bar updates (1: one call)",
    )
    _add_resume_and_multihost_flags(parser, defaults)
    args = vars(parser.parse_args(argv))
    args["hidden"] = tuple(args["hidden"])
    args["out"] = args["out"] or time.strftime("runs/%Y%m%d-%H%M%S")
    try:
        return Config(**{f.name: args[f.name] for f in dataclasses.fields(Config)})
    except ValueError as err:  # a bad combination of flags: a usage error, not a traceback
        parser.error(str(err))


def _add_resume_and_multihost_flags(parser: argparse.ArgumentParser, defaults: Config) -> None:
    group = parser.add_argument_group("checkpoints and resume")
    group.add_argument(
        "--checkpoint-every",
        type=int,
        default=defaults.checkpoint_every,
        metavar="K",
        help="also checkpoint after every K-th step (0: only after each epoch)",
    )
    group.add_argument(
        "--keep-checkpoints",
        type=int,
        default=defaults.keep_checkpoints,
        metavar="N",
        help="keep the newest N checkpoints (default %(default)s)",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest good checkpoint",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the checkpoints of the run in --out and start over",
    )
    group = parser.add_argument_group(
        "several processes",
        "Give all three on every process; leave them out on one machine, and under SLURM, "
        "Open MPI or on a Cloud TPU pod, where jax reads them from the environment.",
    )
    group.add_argument("--coordinator-address", metavar="HOST:PORT", help="process 0's address")
    group.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1")


def main(argv: list[str] | None = None) -> None:
    """Parses the flags and trains; bad data or batch size, a refused --out, a bad resume or a
    NaN loss exit 1 with a one-line message."""
    config = parse_args(argv)
    try:
        train(config)
    except (BatchSizeError, DataError, FileExistsError, ResumeError, NonFiniteLossError) as err:
        raise SystemExit(f"train.py: error: {err}") from None


if __name__ == "__main__":
    main()
