"""Seconds per training epoch: the PyTorch tutorial loop vs train.py's epoch vs its matmul floor.

``python -m benchmarks.train_epoch [--data-dir DIR] [--dataset NAME] [--repeats N] [--json FILE]``

A bad flag is a usage error (exit status 2) before any work; data that cannot be used ends the
run with one ``error:`` line (exit status 1), as in train.py, whose loader sums up checksum
mismatches (Debian's repacked Fashion-MNIST) in one ``warning:`` line.

All variants run in this one process on the same data (default: full Fashion-MNIST from Debian's
``dataset-fashion-mnist``, 60000 training images), batch 64, the 784-128-10 ReLU MLP, Adam(1e-3),
float32. Each variant runs one warm-up epoch (JAX: after compiling ahead of time, compile time
reported apart), then timed epochs: the three JAX variants ``--repeats`` rounds, interleaved so
that the load of a shared machine falls on all of them alike; then the torch variants
``--torch-repeats`` rounds, interleaved too. The median and the minimum are reported, with the
ratios of both (on a busy machine the minimum is the better estimate of the unloaded cost).

Variants:

- ``torch_tutorial``: the tutorial's loop. A map-style dataset whose ``__getitem__`` turns one
  uint8 image into a float tensor in [0, 1] (what torchvision's ``ToTensor`` does, minus the PIL
  round trip, so this is if anything faster than the tutorial), ``DataLoader(batch_size=64,
  shuffle=True)``, ``nn.Sequential(Flatten, Linear, ReLU, Linear)``, ``CrossEntropyLoss``,
  ``Adam``; ``torch.set_num_threads(t)`` for each ``t`` in ``--torch-threads`` (default: 1
  and the CPU count), rows named ``_<t>t``; the ratios use the fastest setting of each loop
  (on a busy machine torch's threads spin-wait on each other and 1 thread is much faster).
- ``torch_tensors``: the same loop over a ``TensorDataset`` of pre-converted float tensors, a
  stronger baseline than the tutorial (no per-sample Python work).
- ``jax_epoch``: train.py's epoch in one compiled call (``--chunks 1``): the on-device shuffle,
  then every step (gather, uint8 -> float, forward, jaxce loss, backward, Adam) in one loop.
- ``jax_epoch_chunked``: the same epoch as train.py runs it by default, in 10 calls (the
  progress bar's updates), to show what the chunking costs.
- ``matmul_floor``: the same number of steps doing only the step's five matrix products at the
  same shapes (forward ``x @ W1``, ``h @ W2``; backward ``dlogits @ W2.T``, ``h.T @ dlogits``,
  ``x.T @ dh``) on pre-batched float32 inputs, with the one subtraction per weight that chains
  step i+1 to step i (so nothing can be hoisted out of the loop). No shuffle, gather, loss,
  ReLU or Adam: the floor for this network at these shapes on this backend. Compiled with the
  same XLA options as train.py's functions (`training._loop.compiler_options`), and again with
  XLA's defaults (``matmul_floor_xla_defaults``); the ratios divide by the faster of the two, so
  an option train.py chooses can never flatter it by slowing the floor.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from benchmarks import _cli, _machine
from benchmarks._cli import check_counts, check_output_file, flag
from benchmarks._harness import write_json
from training import Config as TrainingConfig
from training import ConfigError, Dataset, TrainingError  # jax loads in run(), not for --help
from training import _interrupt as interrupt

PROG = "python -m benchmarks.train_epoch"
DEFAULTS_FLOOR = "matmul_floor_xla_defaults"  # the floor compiled with XLA's default options
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
EPILOG = (
    "Exit status: 0 after a run; 2 for a bad flag (refused before any work) or a setting that "
    "does not fit the data or the devices; 1 when the data cannot be used (one error: line)."
)


@dataclasses.dataclass(frozen=True)
class Config:
    data_dir: str = FASHION_DIR
    dataset: str = "fashion_mnist"
    strict_checksums: bool = False
    repeats: int = 10
    torch_repeats: int = 3
    torch_threads: tuple[int, ...] = tuple(sorted({1, _cli.usable_cpus() or 1}))
    batch_size: int = 64
    json: str | None = None


def _time_interleaved(epochs: dict, rounds: int) -> dict[str, list[float]]:
    """One warm-up epoch of each variant, then ``rounds`` rounds of one timed epoch of each.

    Interleaving spreads the load of a shared machine evenly over the variants. Each callable
    ``epochs[name](i)`` runs epoch ``i`` and blocks until it is done.
    """
    for run_epoch in epochs.values():
        run_epoch(0)
    seconds = {name: [] for name in epochs}
    for i in tqdm(range(1, rounds + 1), desc="rounds", leave=False, disable=None):
        for name, run_epoch in epochs.items():
            interrupt.check()  # a signal Python dropped (a gc callback) stops the run here
            start = time.perf_counter()
            run_epoch(i)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def torch_epoch(dataset: Dataset, config: Config, *, pre_converted: bool, threads: int):
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    images, labels = dataset.train_images, dataset.train_labels.astype(np.int64)

    class IdxDataset(torch.utils.data.Dataset):
        """Per-sample conversion, as torchvision's MNIST with transform=ToTensor()."""

        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            image = torch.from_numpy(images[i]).to(torch.float32).div_(255.0).unsqueeze(0)
            return image, int(labels[i])

    if pre_converted:
        data = TensorDataset(
            torch.from_numpy(images).to(torch.float32).div_(255.0).unsqueeze(1),
            torch.from_numpy(labels),
        )
    else:
        data = IdxDataset()
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epoch(_):
        torch.set_num_threads(threads)
        model.train()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        loss.item()

    return epoch


def jax_epoch(dataset: Dataset, config: Config, *, chunks: int):
    from training import Trainer, put_dataset
    from training._run import run_epoch

    trainer = Trainer(
        hidden=(128,),
        learning_rate=1e-3,
        batch_size=config.batch_size,
        num_train=len(dataset.train_labels),
    )
    data = put_dataset(dataset, trainer.mesh)
    state = trainer.init_state(0)
    compile_seconds = trainer.compile(state, data)
    box = [state]

    def epoch(i):
        box[0] = run_epoch(trainer, box[0], data, seed=0, epoch=i, chunks=chunks)

    return epoch, compile_seconds


def floor_epoch(dataset: Dataset, config: Config, *, options: dict):
    import jax
    import jax.numpy as jnp

    batch = config.batch_size
    steps = -(-len(dataset.train_labels) // batch)
    x = np.resize(dataset.train_images.reshape(-1, 784), (steps * batch, 784))
    xs = jnp.asarray(x.reshape(steps, batch, 784), jnp.float32) / 255.0
    rng = np.random.default_rng(0)
    w1 = jnp.asarray(rng.standard_normal((784, 128)) * 0.03, jnp.float32)
    w2 = jnp.asarray(rng.standard_normal((128, 10)) * 0.1, jnp.float32)

    def step(weights, x):
        w1, w2 = weights
        h = x @ w1
        dlogits = h @ w2  # stands in for softmax - onehot: same shape
        dh = dlogits @ w2.T
        dw2 = h.T @ dlogits
        dw1 = x.T @ dh
        return (w1 - 1e-9 * dw1, w2 - 1e-9 * dw2), None

    floor = jax.jit(lambda weights, xs: jax.lax.scan(step, weights, xs)[0], donate_argnums=0)
    start = time.perf_counter()
    floor = floor.lower((w1, w2), xs).compile(compiler_options=options)
    compile_seconds = time.perf_counter() - start
    box = [(w1, w2)]

    def epoch(_):
        box[0] = jax.block_until_ready(floor(box[0], xs))

    return epoch, compile_seconds


def run(config: Config) -> dict:
    """Runs every variant and returns the report (also printed, and written to ``--json``)."""
    from training._loop import compiler_options
    from training._report import describe_devices, versions
    from training._run import load_data

    settings = TrainingConfig(
        data_dir=config.data_dir, dataset=config.dataset, strict_checksums=config.strict_checksums
    )  # train.py's loader: checksum mismatches summed up in one warning: line
    dataset = load_data(settings, log=lambda line: print(line, file=sys.stderr), name=flag)
    compile_seconds = {}
    jax_one, compile_seconds["jax_epoch"] = jax_epoch(dataset, config, chunks=1)
    jax_chunked, _ = jax_epoch(dataset, config, chunks=10)
    jax_side = {"jax_epoch": jax_one, "jax_epoch_chunked": jax_chunked}
    for name, options in (("matmul_floor", compiler_options()), (DEFAULTS_FLOOR, {})):
        jax_side[name], compile_seconds[name] = floor_epoch(dataset, config, options=options)
    results = _time_interleaved(jax_side, config.repeats)
    torch_side = {}
    for threads in config.torch_threads:
        for name, pre_converted in (("torch_tutorial", False), ("torch_tensors", True)):
            torch_side[f"{name}_{threads}t"] = torch_epoch(
                dataset, config, pre_converted=pre_converted, threads=threads
            )
    results.update(_time_interleaved(torch_side, config.torch_repeats))
    median = {name: statistics.median(s) for name, s in results.items()}
    minimum = {name: min(s) for name, s in results.items()}
    return {
        "config": dataclasses.asdict(config),
        "dataset": dataset.describe(),
        "seconds_per_epoch": {
            name: {"median": median[name], "min": min(s), "all": s} for name, s in results.items()
        },
        "compile_seconds": compile_seconds,
        "ratios_of_medians": _ratios(median),
        "ratios_of_minima": _ratios(minimum),
        "device": describe_devices(),
        "versions": versions(),
        "machine": _machine.describe(),  # the CPU model and caches, torch's version too
    }


def _ratios(seconds: dict[str, float]) -> dict[str, float]:
    """Speed-ups over the fastest torch thread setting of each loop, and multiples of the floor
    (the faster of its two compilations)."""
    ratios = {}
    floor = min(seconds["matmul_floor"], seconds[DEFAULTS_FLOOR])
    for kind in ("torch_tutorial", "torch_tensors"):
        best = min(v for k, v in seconds.items() if k.startswith(kind + "_"))
        ratios[f"{kind} (fastest threads) / jax_epoch"] = best / seconds["jax_epoch"]
    for name in ("jax_epoch", "jax_epoch_chunked"):
        ratios[f"{name} / matmul_floor"] = seconds[name] / floor
    return ratios


def _print(report: dict) -> None:
    print(_machine.summary_line(report["machine"]))
    print(report["dataset"])
    print(f"{'variant':<26} {'median s/epoch':>15} {'min':>8}")
    for name, row in report["seconds_per_epoch"].items():
        print(f"{name:<26} {row['median']:>15.3f} {row['min']:>8.3f}")
    print(f"{'ratio':<44} {'medians':>8} {'minima':>8}")
    for name, ratio in report["ratios_of_medians"].items():
        print(f"{name:<44} {ratio:7.2f}x {report['ratios_of_minima'][name]:7.2f}x")
    print(
        "compile seconds: "
        + ", ".join(f"{k} {v:.2f}" for k, v in report["compile_seconds"].items())
    )


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=EPILOG)
    parser.add_argument("--data-dir", default=Config.data_dir)
    parser.add_argument("--dataset", default=Config.dataset, choices=["mnist", "fashion_mnist"])
    parser.add_argument(
        "--strict-checksums",
        action="store_true",
        help="refuse data files whose SHA-256 is not tensorflow-datasets' (default: a warning)",
    )
    parser.add_argument("--repeats", type=int, default=Config.repeats, help="timed JAX epochs")
    parser.add_argument(
        "--torch-repeats", type=int, default=Config.torch_repeats, help="timed torch epochs"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        nargs="+",
        default=list(Config.torch_threads),
        help="torch.set_num_threads settings to run (default: 1 and the CPUs this process may "
        "use); the ratios "
        "use the fastest",
    )
    parser.add_argument("--batch-size", type=int, default=Config.batch_size)
    parser.add_argument("--json", default=None, help="also write the report to this file")
    args = vars(parser.parse_args(argv))
    args["torch_threads"] = tuple(args["torch_threads"])
    check_counts(parser, args, repeats=1, torch_repeats=1, torch_threads=1, batch_size=1)
    _cli.check_no_repeats(parser, args, "torch_threads")
    for threads in args["torch_threads"]:
        _cli.check_threads(parser, {"threads": threads}, name="torch_threads")
    check_output_file(parser, args["json"])
    return Config(**args)


def main(argv: list[str] | None = None) -> None:
    """Parses the flags and runs; a setting that does not fit the data or the devices exits 2,
    data that cannot be used exits 1, each with one ``error:`` line saying why."""
    config = parse_args(argv)
    try:
        report = run(config)
    except TrainingError as err:
        sys.stdout.flush()
        print(f"{PROG}: error: {err.render(flag)}", file=sys.stderr, flush=True)
        raise SystemExit(2 if isinstance(err, ConfigError) else 1) from None
    _print(report)
    write_json(config.json, report)


if __name__ == "__main__":
    _cli.run_main(main, "python -m benchmarks.train_epoch", "nothing was written")
