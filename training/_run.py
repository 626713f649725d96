"""One training run, as train.py runs it: load, compile, train and evaluate per epoch, report."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from training._dataset import DATASETS, Dataset
from training._distributed import broadcast_str, initialize_distributed, is_primary
from training._loop import DeviceData, Trainer, TrainState, put_dataset
from training._report import History, describe_devices, plot_curves, versions, write_metrics
from training._resume import RunCheckpointing, prepare_run_dir
from training._tfds import load_tfds


@dataclasses.dataclass(frozen=True)
class Config:
    """A training run's settings (train.py's flags); the defaults are the PyTorch tutorial's."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    hidden: tuple[int, ...] = (128,)
    seed: int = 0
    dataset: str = "mnist"
    data_dir: str | None = None
    strict_checksums: bool = False
    loss: str = "jaxce"
    out: str = "runs/latest"
    chunks: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    resume: bool = False
    overwrite: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        if self.resume and self.overwrite:
            raise ValueError(
                "--resume continues the run in --out and --overwrite deletes it; pass one of them"
            )
        if self.checkpoint_every < 0:
            raise ValueError(
                f"--checkpoint-every must be 0 (every epoch only) or more, got "
                f"{self.checkpoint_every}"
            )
        for name in ("epochs", "batch_size", "chunks", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if self.dataset not in DATASETS:
            raise ValueError(
                f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}"
            )


def load_data(config: Config, *, log: Callable[[str], None] = print) -> Dataset:
    """The dataset ``config`` names: from ``--data-dir`` if given, else through tfds.

    Checksum warnings are passed to ``log`` (one readable line each) instead of Python's
    warning printer.
    """
    from training._idx import load_idx_dir

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if config.data_dir is not None:
            dataset = load_idx_dir(
                config.data_dir, dataset=config.dataset, strict_checksums=config.strict_checksums
            )
        else:
            dataset = load_tfds(config.dataset)
    for warning in caught:
        log(f"warning: {warning.message}")
    return dataset


def chunk_bounds(
    start_step: int, steps_per_epoch: int, chunks: int, cuts: Iterable[int] = ()
) -> list[tuple[int, int]]:
    """Splits steps ``[start_step, steps_per_epoch)`` into ``(start, num_steps)`` calls.

    The boundaries are those of the whole epoch cut into ``chunks`` near-equal parts, plus the
    steps in ``cuts`` (where step checkpoints are due), so a run resumed at any step lines up
    with an uninterrupted one.
    """
    size = math.ceil(steps_per_epoch / chunks)
    ends = {*range(size, steps_per_epoch, size), steps_per_epoch}
    ends.update(c for c in cuts if 0 < c < steps_per_epoch)
    bounds = []
    begin = 0
    for end in sorted(ends):
        if end > start_step:
            bounds.append((max(begin, start_step), end - max(begin, start_step)))
        begin = end
    return bounds


def run_epoch(
    trainer: Trainer,
    state: TrainState,
    data: DeviceData,
    *,
    seed: int,
    epoch: int,
    chunks: int,
    start_step: int = 0,
    cuts: Iterable[int] = (),
    after_chunk: Callable[[TrainState, int], None] | None = None,
    bar: Any = None,
) -> TrainState:
    """Trains epoch ``epoch`` (0-based) from ``start_step`` to its end in ``chunks`` calls.

    Args:
      trainer, state, data: as `Trainer.run_steps` takes them (``state`` is donated).
      seed: the run's seed; with ``epoch`` it fixes the example order.
      epoch: the 0-based epoch index.
      chunks: the epoch is cut into this many compiled calls (1: one call), for the bar.
      start_step: the first step to run (0 unless resuming mid-epoch).
      cuts: steps of the epoch after which a call must end (see `chunk_bounds`).
      after_chunk: called with the state and the number of steps done in this epoch after each
        call (the hook for step checkpoints).
      bar: a tqdm bar advanced by the steps of each call.

    Returns:
      The state after the epoch's last step.
    """
    order = trainer.epoch_order(seed, epoch)
    for begin, num_steps in chunk_bounds(start_step, trainer.steps_per_epoch, chunks, cuts):
        state = trainer.run_steps(state, data, order, begin, num_steps)
        loss = float(state.step_losses[begin + num_steps - 1])  # waits for the call to finish
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(num_steps)
        if after_chunk is not None:
            after_chunk(state, begin + num_steps)
    return state


def train(config: Config, *, log: Callable[[str], None] = tqdm.write) -> dict[str, Any]:
    """Runs ``config`` end to end; writes ``metrics.json`` and ``curves.png`` to ``config.out``.

    With several processes every process runs this; only process 0 logs and writes files.

    Returns:
      The metrics written to ``metrics.json``.

    Raises:
      FileExistsError: ``config.out`` holds a run and neither ``resume`` nor ``overwrite``.
      NonFiniteLossError: a training loss was NaN or inf (the message names the step).
    """
    initialize_distributed(config.coordinator_address, config.num_processes, config.process_id)
    primary = is_primary()
    log = log if primary else lambda message: None
    # Every process must use process 0's --out (the default holds a timestamp).
    config = dataclasses.replace(config, out=broadcast_str(config.out))
    out = Path(config.out)
    prepare_run_dir(out, resume=config.resume, overwrite=config.overwrite)
    dataset = load_data(config, log=log)
    log(dataset.describe())
    trainer = Trainer(
        hidden=config.hidden,
        learning_rate=config.lr,
        batch_size=config.batch_size,
        num_train=len(dataset.train_labels),
        loss=config.loss,
    )
    data = put_dataset(dataset, trainer.mesh)
    checkpointing = RunCheckpointing(
        config, steps_per_epoch=trainer.steps_per_epoch, num_train=trainer.num_train, log=log
    )
    state, first_epoch, first_step, done = checkpointing.restore(trainer.init_state(config.seed))
    devices = describe_devices()
    compile_seconds = trainer.compile(state, data)
    log(
        f"{devices['device_count']} x {devices['device_kind']} ({devices['backend']}); "
        f"{trainer.steps_per_epoch} steps of {config.batch_size} per epoch; "
        f"compiled in {compile_seconds:.2f} s"
    )
    history = History(**done) if done else History()
    for epoch in range(first_epoch, config.epochs):
        with tqdm(
            total=trainer.steps_per_epoch,
            initial=first_step,
            disable=not primary,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
        ) as bar:
            start = time.perf_counter()
            state = run_epoch(
                trainer,
                state,
                data,
                seed=config.seed,
                epoch=epoch,
                chunks=config.chunks,
                start_step=first_step,
                cuts=checkpointing.cuts(epoch),
                after_chunk=functools.partial(checkpointing.after_chunk, epoch=epoch),
                bar=bar,
            )
            train_seconds = time.perf_counter() - start
        first_step = 0
        start = time.perf_counter()
        test_loss, test_accuracy = (float(x) for x in trainer.evaluate(state.params, data))
        history.append(
            train_loss=trainer.epoch_train_loss(state),
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            epoch_seconds=train_seconds,
            eval_seconds=time.perf_counter() - start,
        )
        log(
            f"epoch {epoch + 1:>3}/{config.epochs}  train loss {history.train_loss[-1]:.4f}  "
            f"test loss {test_loss:.4f}  test accuracy {100 * test_accuracy:.2f}%  "
            f"{train_seconds:.2f} s"
        )
        checkpointing.end_of_epoch(state, epoch, history.as_dict())
    metrics = {
        "config": dataclasses.asdict(config),
        "dataset": {
            "name": dataset.name,
            "source": dataset.source,
            "num_train": len(dataset.train_labels),
            "num_test": len(dataset.test_labels),
        },
        "steps_per_epoch": trainer.steps_per_epoch,
        **history.as_dict(),
        "compile_seconds": compile_seconds,
        "final_test_accuracy": history.test_accuracy[-1],
        "device": devices,
        "versions": versions(),
    }
    if primary:
        out.mkdir(parents=True, exist_ok=True)
        write_metrics(out / "metrics.json", metrics)
        plot_curves(
            out / "curves.png", history, title=f"{DATASETS[config.dataset]} MLP {config.hidden}"
        )
    log(
        f"final test accuracy {100 * history.test_accuracy[-1]:.2f}%; wrote {out}/metrics.json "
        f"and {out}/curves.png"
    )
    return metrics
