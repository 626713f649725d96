"""One training run, as train.py runs it: `train` reads as the steps of a run.

1. join the other processes, if any (`training._launch`);
2. open the run directory: absolute, writable, locked, not clobbering a run (`RunDir`);
3. load the data, one summary line for its checksum warnings (`load_data`);
4. build the trainer for these devices and this data (`make_trainer`);
5. resume from the newest good checkpoint, or start (`RunCheckpointing`);
6. compile, then train and evaluate epoch by epoch, checkpointing (`run_epoch`);
7. write ``metrics.json`` and ``curves.png`` (`write_report`).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from training import _interrupt as interrupt
from training._checkpoint import has_committed
from training._config import Config
from training._dataset import DATASETS, Dataset
from training._distributed import (
    any_process,
    barrier,
    check_same_everywhere,
    is_primary,
    on_primary,
)
from training._errors import DataError, Interrupted, LaunchError, WriteError, write_failure
from training._idx import ChecksumWarning, load_idx_dir
from training._launch import join, resolve_launch
from training._loop import DeviceData, Trainer, TrainState, put_dataset
from training._report import (
    History,
    describe_backend,
    describe_devices,
    plot_curves,
    versions,
    write_metrics,
)
from training._resume import RunCheckpointing
from training._rundir import RunDir
from training._tfds import load_tfds

Log = Callable[[str], None]


# settings each process may have its own of (every other must be the same on every process):
# its index, where its copy of the data lies (the data's content is compared), how long it
# waits to join, and whether its checksum warnings are errors
PER_PROCESS = ("process_id", "data_dir", "coordinator_timeout", "strict_checksums")


def train(
    config: Config,
    *,
    log: Log = tqdm.write,
    name: Callable[[str], str] = str,
    on_join_timeout: Callable[[LaunchError], None] | None = None,
) -> dict[str, Any]:
    """Runs ``config`` end to end; writes ``metrics.json`` and ``curves.png`` to its run directory.

    With several processes every process runs this; only process 0 logs and writes files.

    Args:
      config: the run's settings.
      log: where process 0 writes its progress lines.
      name: how the log names a setting (train.py: its flag).
      on_join_timeout: see `training._launch.join` (how a process that cannot join ends).

    Returns:
      The metrics written to ``metrics.json``.

    Raises:
      ConfigError: settings that do not fit each other, the launcher, the devices or the data.
      RunDirError, DataError, ResumeError, NonFiniteLossError, LaunchError: see their
        docstrings; each message says what to do.
    """
    launch = resolve_launch(config.coordinator_address, config.num_processes, config.process_id)
    join(launch, timeout_s=config.coordinator_timeout, log=log, on_timeout=on_join_timeout)
    if jax.process_count() > 1:  # a signal stops all processes together (training._interrupt)
        interrupt.coordinate(any_process)
    check_same_everywhere({k: v for k, v in config.as_dict().items() if k not in PER_PROCESS})
    log = log if is_primary() else _quiet
    with open_run_dir(config, log=log) as (out, start):
        try:
            return _steps(config, out, start, log=log, name=name)
        except KeyboardInterrupt:
            if has_committed(out):
                raise Interrupted(
                    "interrupted; run directory {out}: its committed checkpoints are kept: "
                    "rerun with {@resume} to continue",
                    out=out,
                ) from None
            # a directory this run made is removed on the way out: not named
            raise Interrupted(
                "interrupted before any checkpoint was committed: rerun the command to start again"
            ) from None


def _steps(config: Config, out: Path, start: Callable[[], None], *, log: Log, name) -> dict:
    """The steps of a run in its opened directory ``out`` (see `train`)."""
    dataset = load_data(config, log=log, name=name)
    record = data_record(dataset)  # its SHA-256 (0.1 s for MNIST) computed once
    check_same_everywhere({"data": record["sha256"]}, error=DataError)
    interrupt.check()
    trainer = make_trainer(config, dataset)
    # Named once the data has loaded and fits the settings: a run refused for its data removes
    # the directory it made, so it is never announced.
    log(f"run directory {out}; {describe_backend()}")
    interrupt.check()
    data = put_dataset(dataset, trainer.mesh)
    checkpointing = RunCheckpointing(
        config,
        out=out,
        steps_per_epoch=trainer.steps_per_epoch,
        data=record,
        log=log,
    )
    state, first_epoch, first_step, done = checkpointing.restore(trainer.init_state(config.seed))
    compile_seconds = trainer.compile(state, data)
    interrupt.check()
    # The run starts: only now, its data on the devices, its state made and its steps
    # compiled, does --overwrite delete the earlier run (a run that fails before costs none).
    start()
    barrier("compiled")  # processes start stepping together, however long each compiled
    log(
        f"{trainer.steps_per_epoch} steps of {config.batch_size} per epoch; compiled in "
        f"{compile_seconds:.2f} s"
    )
    history = History(**done) if done else History()
    for epoch in range(first_epoch, config.epochs):
        state = train_and_evaluate(
            trainer, state, data, config, checkpointing, history, epoch, first_step, log
        )
        first_step = 0
    metrics = write_report(out, config, dataset, trainer, history, compile_seconds, log=log)
    interrupt.check()  # with several processes, a signal while reporting stops them all too
    return metrics


def _quiet(message: str) -> None:
    """The log of every process but process 0."""


@contextlib.contextmanager
def open_run_dir(config: Config, *, log: Log) -> Iterator[tuple[Path, Callable[[], None]]]:
    """The run directory, opened and locked by process 0 (`RunDir.open`) for the block.

    Every process gets process 0's absolute path (the default name holds a timestamp), or its
    error, and ``start``: called once the run is sure to start, it deletes the earlier run
    ``--overwrite`` replaces (process 0) and waits for every process.
    """
    opened: list[RunDir] = []

    def on_process_0() -> str:
        opened.append(
            RunDir.open(config.out, resume=config.resume, overwrite=config.overwrite, log=log)
        )
        return str(opened[0].path)

    def start() -> None:
        for run_dir in opened:
            run_dir.clear_earlier_run(log)
        barrier("run directory ready")

    try:  # opened inside: a Ctrl-C right after the directory was made removes it too
        path = Path(on_primary(on_process_0))
        yield path, start
    except BaseException:
        for run_dir in opened:  # a run that failed before writing anything leaves no trace
            run_dir.discard_if_unused()
        raise
    finally:
        for run_dir in opened:
            run_dir.release()


def load_data(config: Config, *, log: Log = print, name: Callable[[str], str] = str) -> Dataset:
    """The dataset ``config`` names: from ``data_dir`` if given, else through tfds.

    Checksum mismatches are summed up in one ``warning:`` line (see `ChecksumWarning`), which
    names the setting ``strict_checksums`` as ``name`` writes it.

    Raises:
      DataError: see the loaders; also when a split holds no images.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ChecksumWarning)
        if config.data_dir is not None:
            dataset = load_idx_dir(
                config.data_dir, dataset=config.dataset, strict_checksums=config.strict_checksums
            )
        else:
            dataset = load_tfds(config.dataset)
    mismatched = [w.message for w in caught if isinstance(w.message, ChecksumWarning)]
    if mismatched:
        names = f"the {len(mismatched)} files" if len(mismatched) > 1 else mismatched[0].path.name
        log(
            f"warning: {names} in {mismatched[0].path.parent} are not the SHA-256 "
            f"tensorflow-datasets registers for {config.dataset} (a subset or a repack?); "
            f"their format checks passed ({name('strict_checksums')} refuses them)"
        )
    for warning in caught:
        if not isinstance(warning.message, ChecksumWarning):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    dataset.check_not_empty()
    log(dataset.describe())
    return dataset


def data_record(dataset: Dataset) -> dict[str, Any]:
    """What a checkpoint and metrics.json record of the data: content SHA-256, size, source."""
    return {
        "name": dataset.name,
        "source": dataset.source,
        "num_train": len(dataset.train_labels),
        "num_test": len(dataset.test_labels),
        "sha256": dataset.fingerprint(),
    }


def make_trainer(config: Config, dataset: Dataset) -> Trainer:
    """The compiled-function set for ``config`` on every device, checked against the data.

    Raises:
      ConfigError: the batch size does not split over the devices or exceeds the training
        split, or ``chunks`` exceeds the steps of an epoch.
    """
    trainer = Trainer(
        hidden=config.hidden,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        num_train=len(dataset.train_labels),
        loss=config.loss,
        label_smoothing=config.label_smoothing,
    )
    config.epoch_chunks(trainer.steps_per_epoch)
    return trainer


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
        # Waits for the call to finish. Read from this process's copy of the replicated record,
        # indexed in NumPy (indexing the jax.Array would dispatch a computation); the view is
        # gone before the next call donates the state.
        loss = float(np.asarray(state.step_losses.addressable_data(0))[begin + num_steps - 1])
        interrupt.check()  # a signal that landed in a finaliser during the call
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(num_steps)
        if after_chunk is not None:
            after_chunk(state, begin + num_steps)
    return state


def train_and_evaluate(
    trainer: Trainer,
    state: TrainState,
    data: DeviceData,
    config: Config,
    checkpointing: RunCheckpointing,
    history: History,
    epoch: int,
    first_step: int,
    log: Log,
) -> TrainState:
    """One epoch under a progress bar, then its evaluation, log line and checkpoint.

    The bar shows only on process 0 and only when stderr is a terminal. The epoch's seconds
    are its training steps': its step checkpoints' writes are left out, as the end-of-epoch
    checkpoint and the evaluation are.
    """
    saving = 0.0

    def after_chunk(s: TrainState, done: int) -> None:
        nonlocal saving
        start = time.perf_counter()
        checkpointing.after_chunk(s, done, epoch=epoch)
        saving += time.perf_counter() - start

    with tqdm(
        total=trainer.steps_per_epoch,
        initial=first_step,
        disable=None if is_primary() else True,  # None: off when not a terminal
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
            chunks=config.epoch_chunks(trainer.steps_per_epoch),
            start_step=first_step,
            cuts=checkpointing.cuts(epoch),
            after_chunk=after_chunk,
            bar=bar,
        )
        train_seconds = time.perf_counter() - start - saving
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
    return state


def write_report(
    out: Path,
    config: Config,
    dataset: Dataset,
    trainer: Trainer,
    history: History,
    compile_seconds: float,
    *,
    log: Log,
) -> dict[str, Any]:
    """Writes ``metrics.json`` and ``curves.png`` (process 0) and returns the metrics."""
    metrics = {
        "config": {**config.as_dict(), "out": str(out)},
        "dataset": data_record(dataset),
        "steps_per_epoch": trainer.steps_per_epoch,
        **history.as_dict(),
        "compile_seconds": compile_seconds,
        "final_test_accuracy": history.test_accuracy[-1],
        "device": describe_devices(),
        "versions": versions(),
    }
    if is_primary():
        title = f"{DATASETS[config.dataset]} MLP {config.hidden}"
        for name, write in (
            ("metrics.json", lambda path: write_metrics(path, metrics)),
            ("curves.png", lambda path: plot_curves(path, history, title=title)),
        ):
            try:
                write(out / name)
            except OSError as err:
                raise WriteError(
                    "writing {path} failed ({reason}); the run's checkpoints are complete: "
                    "free space or fix the filesystem, then rerun with {@resume} to write it.",
                    path=out / name,
                    reason=write_failure(err),
                ) from None
        log(
            f"final test accuracy {100 * history.test_accuracy[-1]:.2f}%; wrote "
            f"{out / 'metrics.json'} and {out / 'curves.png'}"
        )
    return metrics
