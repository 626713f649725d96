"""Train the PyTorch tutorial's MLP (784-128-10, ReLU) on MNIST with Flax NNX, optax and jaxce.

    python train.py                                   # MNIST via tensorflow-datasets (downloads)
    python train.py --data-dir ../shared/data/mnist-mini          # offline: the four IDX files
    python train.py --dataset fashion_mnist --data-dir /usr/share/datasets/fashion-mnist

Writes ``metrics.json`` and ``curves.png`` to ``--out`` (default: a new ``runs/<timestamp>``).
A bad flag is a usage error (exit status 2) before any work; a run that cannot go on (data, run
directory, resume, a NaN loss, the other processes) ends with one ``train.py: error:`` line and
exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from typing import Any, NoReturn

from training import Config, ConfigError, Interrupted, LaunchError, TrainingError, WriteError
from training import _interrupt as interrupt

PROG = "train.py"
_FIELDS = {field.name: field for field in dataclasses.fields(Config)}
_GROUP_HELP = {
    "several processes": (
        "Leave them out on one machine and under launchers that set them (SLURM srun, mpirun, "
        "torchrun-style RANK/WORLD_SIZE/MASTER_ADDR, a Cloud TPU pod); otherwise give what the "
        "launcher does not (a Kubernetes Indexed Job gives the process id only)."
    ),
}


def flag(name: str) -> str:
    """The flag of setting ``name`` (a `Config` field, e.g. ``learning_rate`` -> ``--lr``)."""
    field = _FIELDS.get(name)
    if field is None:
        return name
    return field.metadata.get("flag") or "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """train.py's flags, one per `Config` field: type, default, help and choices from it."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    hints = typing.get_type_hints(Config)
    groups: dict[str, Any] = {}
    for name, field in _FIELDS.items():
        meta = field.metadata
        group = parser
        if "group" in meta:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(
                    meta["group"], _GROUP_HELP.get(meta["group"])
                )
            group = groups[meta["group"]]
        kwargs: dict[str, Any] = {"dest": name, "default": field.default}
        kind, many = _value_type(hints[name])
        default = field.default
        if kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=kind, nargs="+" if many else None, metavar=meta.get("metavar"))
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
        shown = (
            " ".join(map(str, default)) if many else f"{default:g}" if kind is float else default
        )
        suffix = "" if default is None or kind is bool else f" (default {shown})"
        kwargs["help"] = meta["help"].replace("%", "%%") + suffix
        group.add_argument(flag(name), **kwargs)
    return parser


def _value_type(hint: Any) -> tuple[type, bool]:
    """``(type of one value, whether the flag takes several)`` of a `Config` field's type."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return args[0], True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _value_type(args[0])
    return hint, False


def parse_args(argv: list[str] | None = None) -> Config:
    """The command line as a `Config`; a bad value is a usage error naming its flag."""
    parser = build_parser()
    values = {
        k: tuple(v) if isinstance(v, list) else v for k, v in vars(parser.parse_args(argv)).items()
    }
    _check_environment(parser)
    try:
        return Config(**values)
    except ConfigError as err:
        parser.error(err.render(flag))


MAX_CPU_DEVICES = 1024  # JAX_NUM_CPU_DEVICES: more is a slip, not a mesh a CPU runs


def _check_environment(parser: argparse.ArgumentParser) -> None:
    """The environment settings of JAX the README names, checked before JAX reads them."""
    devices = os.environ.get("JAX_NUM_CPU_DEVICES")
    if devices is not None and devices.strip() != "-1":  # JAX's -1: its default
        try:
            ok = 1 <= int(devices) <= MAX_CPU_DEVICES
        except ValueError:
            ok = False
        if not ok:  # beyond 2**31 JAX fails with a traceback; 10,000 take it a minute to make
            parser.error(
                f"JAX_NUM_CPU_DEVICES must be an integer from 1 to {MAX_CPU_DEVICES} (the "
                f"number of CPU devices) or -1, got {devices!r}; set it to one, or unset it "
                "(or set -1) for one device"
            )


def _report(error: TrainingError) -> None:
    sys.stdout.flush()
    print(f"{PROG}: error: {error.render(flag)}", file=sys.stderr, flush=True)


def _fail(error: TrainingError, status: int) -> NoReturn:
    _report(error)
    import jax  # imported by then (the run had started); a usage error never gets here

    if jax.distributed.is_initialized():
        # Not jax.distributed's exit barrier, which waits minutes for processes that may be
        # waiting for this one: `leave` waits (seconds) only for those that stop too (an error
        # every process raises together), so that process 0's exit does not take the
        # coordination service from under them; the others learn that it is gone.
        from training._distributed import leave

        leave()
        os._exit(status)
    raise SystemExit(status)


def _end_on_join_timeout(error: LaunchError) -> None:
    _report(error)
    os._exit(1)  # the join's own thread is stuck in jax's C++ wait


def train(config: Config, **kwargs: Any) -> None:
    """`training.train`, imported once the flags are checked: jax, Flax, optax and Orbax load
    only for a run, so ``--help`` and a usage error answer at once."""
    from training import train as run

    run(config, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """Parses the flags and trains. A setting that does not fit the launcher, the devices or
    the data exits 2; a run that cannot go on exits 1; each with one line saying why."""
    config = parse_args(argv)
    # SIGTERM (docker stop, scancel, Kubernetes) ends a run as Ctrl-C does; the handlers stay
    # until the exit, so a signal while the one line is printed cannot kill it (status 143)
    with interrupt.handling():
        try:
            train(config, name=flag, on_join_timeout=_end_on_join_timeout)
        except Interrupted as err:
            _report(err)
            _exit_now(130, interrupted=True)
        except ConfigError as err:
            _fail(err, 2)
        except WriteError as err:  # Orbax's writer threads may still be failing: do not wait
            _report(err)
            _exit_now(1)
        except TrainingError as err:
            _fail(err, 1)
        except KeyboardInterrupt:  # before the run directory was opened (joining the processes)
            print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
            # not `leave`: while joining, the coordination service may not answer yet, and a
            # request to it then aborts the process (status 134)
            _exit_now(130)


def _exit_now(status: int, *, interrupted: bool = False) -> NoReturn:
    """Exits at once after an interruption or a failed write: compilation or a checkpoint write
    may still run in other threads, whose teardown would print their own errors (or crash)
    after the one line. An interrupted process leaves the others in order
    (`training._distributed.leave`)."""
    interrupt.ignore()  # what arrives now changes nothing
    sys.stdout.flush()
    sys.stderr.flush()
    if interrupted and "jax" in sys.modules:
        from training._distributed import leave

        leave()
    os._exit(status)


if __name__ == "__main__":
    main()
