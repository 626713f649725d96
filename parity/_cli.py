"""Command line: ``python -m parity`` (loss parity) and ``python -m parity train``.

Every input is checked before any work (see ``parity._usage``); a bad one ends the run with a
single ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from parity._cases import Case, build_matrix
from parity._linear_cases import LinearCase
from parity._usage import UsageError, check_out_dir, load_impl
from training import _interrupt as interrupt

DEFAULT_IMPL = "jaxce.loss:cross_entropy"
SEED_MAX = 2**32 - 1  # each case's seed is derived from it modulo 2**32
OUT_HELP = (
    "directory for report.json, report.md, report.html (default %(default)s); created if "
    "missing; an earlier report there is replaced, any other non-empty directory is refused"
)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    out: Path
    quick: bool
    seed: int
    impl: str
    only: str | None
    progress: bool
    matrix_cases: int | None = None  # cases in the matrix before --only (set by select_cases)

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


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line: ``error: ...`` and a pointer to --help."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _path(text: str) -> Path:
    """A path flag's value; an empty one is refused (``Path("")`` would be the current
    directory, and the message would name ``.``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a directory; got {text!r}")
    return Path(text)


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(
                f"must be an integer from {minimum} to {maximum}; got {value}"
            )
        return value

    parse.__name__ = f"integer >= {minimum}" if maximum is None else f"integer <= {maximum}"
    return parse


def _progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )


def _progress(value: bool | None) -> bool:
    return sys.stderr.isatty() if value is None else value


def parse_loss(argv: list[str]) -> LossConfig:
    p = _Parser(
        prog="python -m parity",
        description="Loss and gradient parity of a cross-entropy against torch and a float64 "
        "reference, and of jaxce's fused linear cross-entropy against "
        "torch.nn.functional.linear_cross_entropy (its reference and chunked paths), in the "
        "same reports (run `python -m parity train --help` for training parity).",
    )
    p.add_argument("--out", type=_path, default=Path("runs/parity"), metavar="DIR", help=OUT_HELP)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a representative subset (~140 cases, 20 of them fused linear)",
    )
    p.add_argument(
        "--seed",
        type=_integer(0, SEED_MAX),
        default=0,
        help=f"seed of all inputs, 0 to {SEED_MAX} (default 0)",
    )
    p.add_argument(
        "--impl",
        default=DEFAULT_IMPL,
        metavar="MODULE:FUNCTION",
        help="the cross-entropy under test, with jaxce.loss.cross_entropy's signature "
        "(default %(default)s); the fused linear cases always test "
        "jaxce.loss.torch_linear_cross_entropy and jaxce.loss.linear_cross_entropy",
    )
    p.add_argument(
        "--only",
        metavar="GLOB",
        help="run only the cases whose id matches this shell pattern, e.g. 'grid/float16/*' "
        "or 'linear*/float32/*' (the fused linear cases)",
    )
    _progress_flag(p)
    a = p.parse_args(argv)
    return LossConfig(a.out, a.quick, a.seed, a.impl, a.only, _progress(a.progress))


def parse_train(argv: list[str]) -> TrainConfig:
    p = _Parser(
        prog="python -m parity train",
        description="Training parity: the same MLP in Flax and torch, same data, Adam 1e-3.",
    )
    p.add_argument(
        "--data-dir",
        type=_path,
        default=Path("../shared/data/mnist-mini"),
        metavar="DIR",
        help="an MNIST IDX directory (default %(default)s)",
    )
    p.add_argument(
        "--out", type=_path, default=Path("runs/parity-train"), metavar="DIR", help=OUT_HELP
    )
    p.add_argument("--steps", type=_integer(1), default=500, help="Adam steps (default 500)")
    p.add_argument("--batch-size", type=_integer(1), default=128, help="(default 128)")
    p.add_argument(
        "--seed", type=_integer(0), default=0, help="seed of weights and batches, >= 0 (default 0)"
    )
    _progress_flag(p)
    a = p.parse_args(argv)
    return TrainConfig(a.data_dir, a.out, a.steps, a.batch_size, a.seed, _progress(a.progress))


def select_cases(config: LossConfig) -> tuple[LossConfig, list[Case]]:
    """The matrix (quick or full) for ``config.seed``, narrowed by ``config.only``, and the
    config with the matrix's size recorded.

    Raises:
      UsageError: ``--only`` matches no case id, or only fused linear cases while ``--impl``
        names another implementation (they test jaxce's own fused functions).
    """
    cases = build_matrix(quick=config.quick, seed=config.seed)
    config = dataclasses.replace(config, matrix_cases=len(cases))
    if config.only is None:
        return config, cases
    chosen = [c for c in cases if fnmatch.fnmatchcase(c.id, config.only)]
    if not chosen:
        raise UsageError(
            f"--only {config.only!r} matches none of the {len(cases)} case ids of the "
            f"{'quick' if config.quick else 'full'} matrix; pass a shell pattern such as "
            "'grid/float32/*' or 'edge-zero-classes/*' (report.json lists every id)."
        )
    if config.impl != DEFAULT_IMPL and all(isinstance(c, LinearCase) for c in chosen):
        raise UsageError(
            f"--only {config.only!r} selects only fused linear cases, which test jaxce's own "
            f"fused functions, never --impl {config.impl}; add cross_entropy cases to the "
            "pattern (e.g. 'grid/*') or drop --impl."
        )
    return config, chosen


def main(argv: list[str] | None = None) -> int:
    """Dispatches to loss parity or, with a leading ``train``, training parity.

    Ctrl-C and SIGTERM end the run with one line and exit status 130, even one that lands where
    Python drops the KeyboardInterrupt (a garbage-collection callback): the reports' write
    checks for a signal first (``interrupt.check``), so such a run never ends as if complete.
    """
    with interrupt.handling():
        return _main(sys.argv[1:] if argv is None else list(argv))


def _main(argv: list[str]) -> int:
    missing: list[Path] = []  # the --out directories this run creates, innermost first
    try:
        # The runners (torch, jax, matplotlib) are imported once the command line is checked:
        # --help and a bad flag answer at once.
        if argv[:1] == ["train"]:
            config = parse_train(argv[1:])
            missing = [p for p in (config.out, *config.out.parents) if not p.exists()]
            check_out_dir(config.out, kind="training-parity")
            from parity._train import load_setup, run_training_parity

            setup = load_setup(config)  # checks --data-dir and the data
            return run_training_parity(config, setup)
        config = parse_loss(argv)
        config, cases = select_cases(config)
        impl_fn = load_impl(config.impl)  # imports the implementation's module (and jax)
        missing = [p for p in (config.out, *config.out.parents) if not p.exists()]
        check_out_dir(config.out, kind="loss-parity")  # creates --out: after every other check
        from parity._matrix import run_loss_parity

        return run_loss_parity(config, impl_fn, cases)
    except (UsageError, OSError, KeyboardInterrupt) as err:
        for created in missing:  # a run that wrote nothing leaves no empty --out behind
            with contextlib.suppress(OSError):
                created.rmdir()  # only an empty one
        return _failed(err)


def _failed(err: BaseException) -> int:
    """The one error line for what ended the run, and its exit status."""
    if isinstance(err, UsageError):
        print(f"error: {err}", file=sys.stderr)
        return 2
    if isinstance(err, OSError):  # a report that cannot be written: a full disk, a failing fs
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"error: {where}{err.strerror or err}; the reports were not written (any earlier "
            "ones in --out are kept): free space, or choose another --out",
            file=sys.stderr,
        )
        return 1
    print(
        "error: interrupted; the reports are written at the end, so none was (any earlier "
        "ones in --out are kept)",
        file=sys.stderr,
    )
    return 130
