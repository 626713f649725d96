"""Checkpoints, resume, the run-directory guard and the NaN/inf stop, as a training run uses them.

A checkpoint holds the `TrainState` (parameters, Adam state, the current epoch's per-step
losses) and, as JSON, where the run stands: the epoch, the step within it, the data-order seed
(an epoch's example order is a function of the seed and the epoch alone, see
`Trainer.epoch_order`), the settings that must not change on resume and the per-epoch history.
One is written after every epoch and, with ``--checkpoint-every K``, after every K-th step
(global count); the training calls are cut at those steps, which changes no result (running an
epoch in one call or in several is bit-identical).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training import _checkpoint, _distributed
from training._checkpoint import CHECKPOINT_DIR, RunCheckpoints

# Settings a resumed run must share with the checkpoint; the others (epochs, chunks, paths,
# checkpoint cadence, processes) may change between the two.
MUST_MATCH = ("batch_size", "lr", "hidden", "seed", "dataset", "loss")


class NonFiniteLossError(RuntimeError):
    """A training step's loss was NaN or infinite; the run stopped before saving it."""


class ResumeError(ValueError):
    """The checkpoint to resume from does not fit this run's settings or data."""


def prepare_run_dir(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuses to clobber an earlier run in ``out_dir``; with ``overwrite``, clears its checkpoints.

    Call it on every process before training (it reads the shared run directory); only process 0
    deletes anything.

    Args:
      out_dir: the run directory (``--out``).
      resume: ``--resume``: an existing run is continued, so it is left alone.
      overwrite: ``--overwrite``: an existing run's checkpoints are deleted and it starts over.

    Raises:
      ValueError: both ``resume`` and ``overwrite``.
      FileExistsError: ``out_dir`` is not empty and neither flag is given.
    """
    out = Path(out_dir)
    if resume and overwrite:
        raise ValueError(
            "--resume continues the run in --out and --overwrite deletes it; pass one of them"
        )
    if overwrite:
        if _distributed.is_primary():
            shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        _distributed.barrier("jaxce_prepare_run_dir")
    elif not resume and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"--out {out} already holds a run ({', '.join(sorted(p.name for p in out.iterdir()))})."
            " Pass --resume to continue it from its latest good checkpoint, --overwrite to delete"
            " its checkpoints and start over, or choose another --out."
        )


class RunCheckpointing:
    """Resumes a run and checkpoints it; stops it at the first non-finite loss.

    Args:
      config: the run's `Config` (``out``, ``resume``, ``checkpoint_every``,
        ``keep_checkpoints``, ``epochs`` and the `MUST_MATCH` settings are used).
      steps_per_epoch: the trainer's steps per epoch.
      num_train: examples in the training split.
      log: where process 0 reports (other processes pass a no-op).
    """

    def __init__(
        self, config: Any, *, steps_per_epoch: int, num_train: int, log: Callable[[str], None]
    ):
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.num_train = num_train
        self.log = log
        self.store = RunCheckpoints(config.out, keep=config.keep_checkpoints, log=log)
        self.last_saved: str | None = None
        self.history: dict[str, list[float]] | None = None  # finished epochs, for checkpoints

    def restore(self, state: Any) -> tuple[Any, int, int, dict[str, list[float]] | None]:
        """With ``--resume``, the newest good checkpoint; otherwise ``state`` unchanged.

        Args:
          state: the freshly initialised `TrainState` (the template: shapes and shardings).

        Returns:
          ``(state, epoch, step_in_epoch, history)``: where to continue (0-based epoch) and the
          per-epoch history so far (None when starting from scratch).

        Raises:
          ResumeError: the checkpoint was written with other `MUST_MATCH` settings, another
            training split, or is past ``--epochs``.
        """
        if not self.config.resume:
            return state, 0, 0, None
        found = self.store.restore(state, check=self._check_compatible)
        if found is None:
            self.log(f"--resume: no good checkpoint in {self.store.root}; starting from scratch")
            return state, 0, 0, None
        step, state, meta = found
        directory = self.store.directory(step)
        self.last_saved = str(directory)
        self.history = meta["history"]
        self.log(
            f"resuming from {directory}: epoch {meta['epoch'] + 1}, step "
            f"{meta['step_in_epoch']}/{self.steps_per_epoch} (global step {step})"
        )
        return state, meta["epoch"], meta["step_in_epoch"], meta["history"]

    def _check_compatible(self, meta: dict[str, Any]) -> None:
        saved = meta["config"]
        for name in MUST_MATCH:
            ours = getattr(self.config, name)
            theirs = tuple(saved[name]) if isinstance(ours, tuple) else saved[name]
            if theirs != ours:
                raise ResumeError(
                    f"--resume: the checkpoint in {self.store.root} was written with "
                    f"--{name.replace('_', '-')} {_flag(theirs)}, this run has {_flag(ours)}. "
                    "Resume with the "
                    "same settings, or start a new run (another --out, or --overwrite)."
                )
        if meta["num_train"] != self.num_train:
            raise ResumeError(
                f"--resume: the checkpoint was trained on {meta['num_train']} examples, this "
                f"run's training split has {self.num_train}; resume with the same data."
            )
        if meta["epoch"] > self.config.epochs:
            raise ResumeError(
                f"--resume: the checkpoint is at epoch {meta['epoch']}, past --epochs "
                f"{self.config.epochs}; pass --epochs {meta['epoch']} or more."
            )

    def cuts(self, epoch: int) -> list[int]:
        """Steps of ``epoch`` after which a step checkpoint is due (ends of training calls)."""
        every = self.config.checkpoint_every
        if not every:
            return []
        first = epoch * self.steps_per_epoch
        return [s - first for s in range(first + 1, first + self.steps_per_epoch) if not s % every]

    def after_chunk(self, state: Any, done: int, *, epoch: int) -> None:
        """After a training call: stop on a non-finite loss, else checkpoint when one is due.

        Args:
          state: the `TrainState` after the call.
          done: steps of ``epoch`` run so far.
          epoch: the 0-based epoch.

        Raises:
          NonFiniteLossError: a loss among the epoch's first ``done`` steps is NaN or inf.
        """
        losses = np.asarray(state.step_losses)[:done]  # steps_per_epoch floats: a tiny copy
        if not np.isfinite(losses).all():
            self._stop(losses, epoch)
        step = epoch * self.steps_per_epoch + done
        _checkpoint.test_kill_point("step", step, at_or_after=True)
        every = self.config.checkpoint_every
        if every and not step % every and done < self.steps_per_epoch:
            self._save(state, step, epoch=epoch, step_in_epoch=done)

    def end_of_epoch(self, state: Any, epoch: int, history: dict[str, list[float]]) -> None:
        """Checkpoints a finished epoch (0-based ``epoch``) with its history."""
        self.history = history
        self._save(state, (epoch + 1) * self.steps_per_epoch, epoch=epoch + 1, step_in_epoch=0)

    def _save(self, state: Any, step: int, *, epoch: int, step_in_epoch: int) -> None:
        meta = {
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": step,
            "steps_per_epoch": self.steps_per_epoch,
            "num_train": self.num_train,
            "data_order": {"seed": self.config.seed, "epoch": epoch},
            "config": dataclasses.asdict(self.config),
            "history": self.history,
        }
        self.last_saved = str(self.store.save(step, state, meta))

    def _stop(self, losses: np.ndarray, epoch: int) -> None:
        bad = int(np.argmin(np.isfinite(losses)))
        step = epoch * self.steps_per_epoch + bad + 1
        kept = (
            f"the last good checkpoint is {self.last_saved}"
            if self.last_saved
            else "no checkpoint was written before it"
        )
        raise NonFiniteLossError(
            f"training loss is {losses[bad]} at epoch {epoch + 1}, step {bad + 1}/"
            f"{self.steps_per_epoch} (global step {step}); stopped without saving it, {kept}. "
            "A smaller --lr usually helps; --resume continues from the last good checkpoint."
        )


def _flag(value: Any) -> str:
    """A setting as it is written on the command line (``(256, 128)`` -> ``256 128``)."""
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
