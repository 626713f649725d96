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

from training import DATASETS
from training._loop import LOSSES
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
    args = vars(parser.parse_args(argv))
    args["hidden"] = tuple(args["hidden"])
    args["out"] = args["out"] or time.strftime("runs/%Y%m%d-%H%M%S")
    return Config(**{f.name: args[f.name] for f in dataclasses.fields(Config)})


def main(argv: list[str] | None = None) -> None:
    """Parses the flags and trains."""
    train(parse_args(argv))


if __name__ == "__main__":
    main()
