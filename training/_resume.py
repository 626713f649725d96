"""Resuming a run and checkpointing it as it goes; the stop at the first NaN or inf loss.

A checkpoint holds the `TrainState` (parameters, Adam state, the current epoch's per-step
losses) and, as JSON, where the run stands: the epoch, the step within it, the data-order seed
(an epoch's example order is a function of the seed and the epoch alone, see
`Trainer.epoch_order`), the settings that must not change on resume, the SHA-256 of the data
(`Dataset.fingerprint`) and the per-epoch history. One is written after every epoch and, with
``checkpoint_every=K``, after every K-th step (global count); the training calls are cut at
those steps, which changes no result (running an epoch in one call or in several is
bit-identical).

Resuming takes the newest good checkpoint. When there is none, a run directory that holds a
finished run (``metrics.json``) or checkpoints that were once complete (now damaged) is never
started over: the resume is refused, saying what was found. Only a directory with nothing, or
with unfinished writes alone, starts from scratch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from training import _checkpoint, _distributed
from training import _interrupt as interrupt
from training._checkpoint import RunCheckpoints
from training._errors import NonFiniteLossError, ResumeError, WriteError, write_failure
from training._rundir import RUN_FILES

# Settings a resumed run must share with the checkpoint; the others (epochs, chunks, paths,
# checkpoint cadence, processes) may change between the two.
MUST_MATCH = (
    "batch_size",
    "learning_rate",
    "hidden",
    "seed",
    "dataset",
    "loss",
    "label_smoothing",
)
# what a setting was before it was recorded (checkpoints of earlier versions)
BEFORE_RECORDED = {"label_smoothing": 0.0}
# names the function from (seed, epoch) to an epoch's example order (`training._shuffle`);
# checkpoints of earlier versions, which record none, sorted random keys
SHUFFLE = "feistel-24"
SHUFFLE_BEFORE_RECORDED = "sort"

# a failed collective inside a multi-process save reads like a failed write
_PEERS = " (or restart every process: one may have ended)"


class RunCheckpointing:
    """Resumes a run and checkpoints it; stops it at the first non-finite loss.

    Args:
      config: the run's `Config` (``resume``, ``checkpoint_every``, ``keep_checkpoints``,
        ``epochs`` and the `MUST_MATCH` settings are used).
      out: the run directory (absolute).
      steps_per_epoch: the trainer's steps per epoch.
      data: ``{"sha256": ..., "num_train": ..., "source": ...}`` of the run's dataset.
      log: where process 0 reports (other processes pass a no-op).
    """

    def __init__(
        self,
        config: Any,
        *,
        out: Path,
        steps_per_epoch: int,
        data: dict[str, Any],
        log: Callable[[str], None],
    ):
        self.config = config
        self.out = Path(out)
        self.steps_per_epoch = steps_per_epoch
        self.data = data
        self.log = log
        self.store = RunCheckpoints(out, keep=config.keep_checkpoints, log=log)
        self.last_saved: str | None = None
        self.history: dict[str, list[float]] | None = None  # finished epochs, for checkpoints

    def restore(self, state: Any) -> tuple[Any, int, int, dict[str, list[float]] | None]:
        """With ``resume``, the newest good checkpoint; otherwise ``state`` unchanged.

        Args:
          state: the freshly initialised `TrainState` (the template: shapes and shardings).

        Returns:
          ``(state, epoch, step_in_epoch, history)``: where to continue (0-based epoch) and the
          per-epoch history so far (None when starting from scratch).

        Raises:
          ResumeError: no good checkpoint although the directory holds a run, or the
            checkpoint was written with other `MUST_MATCH` settings, other data, or is past
            ``epochs``.
        """
        if not self.config.resume:
            return state, 0, 0, None
        step = _distributed.on_primary(self._choose)
        if step < 0:  # starting over: no earlier write may outlive or outrank the new ones
            self.store.discard_all()
            return state, 0, 0, None
        step, state, meta = self.store.restore(state, check=self._check_compatible, step=step)
        directory = self.store.directory(step)
        self.last_saved = str(directory)
        self.history = meta["history"]
        if meta["epoch"] >= self.config.epochs:  # a finished run: nothing left to train
            self.log(
                f"the run in {directory.parent.parent} is finished (epoch {meta['epoch']} of "
                f"{self.config.epochs}, checkpoint {directory.name}); writing its report again "
                "(a larger epoch count would extend it)"
            )
        else:
            self.log(
                f"resuming from {directory}: epoch {meta['epoch'] + 1}, step "
                f"{meta['step_in_epoch']}/{self.steps_per_epoch} (global step {step})"
            )
        return state, meta["epoch"], meta["step_in_epoch"], meta["history"]

    def _choose(self) -> int:
        """The step to resume from (process 0), -1 to start over; raises when that would
        overwrite a run."""
        found = _checkpoint.scan(self.out)
        for checkpoint in found:
            if checkpoint.problem is None:
                return checkpoint.step
            self.log(
                f"skipping checkpoint {checkpoint.directory}: {checkpoint.problem}; trying the "
                "previous one"
            )
        finished = [name for name in RUN_FILES if (self.out / name).exists()]
        damaged = [c for c in found if c.committed]
        if finished or damaged:
            findings = [f"{c.directory.name}: {c.problem}" for c in found]
            raise ResumeError(
                "{@resume}: {out} holds a run ({what}) but no usable checkpoint ({findings}). "
                "Nothing was changed. Restore the checkpoints from a copy, or start over with "
                "{@overwrite} (deletes the run) or another {@out}.",
                out=self.out,
                what=", ".join(finished + ([_checkpoint.CHECKPOINT_DIR] if found else [])),
                findings="; ".join(findings) or "none",
            )
        what = "unfinished checkpoint writes only" if found else "no checkpoint"
        self.log(f"nothing to resume in {self.out} ({what}); starting from scratch")
        return -1

    def _check_compatible(self, meta: dict[str, Any]) -> None:
        self._check_order(meta)
        saved = meta.get("config", {})
        for name in MUST_MATCH:
            ours = getattr(self.config, name)
            theirs = saved.get(name, BEFORE_RECORDED.get(name, "(not recorded)"))
            theirs = (
                tuple(theirs) if isinstance(ours, tuple) and isinstance(theirs, list) else theirs
            )
            if theirs != ours:
                raise ResumeError(
                    "{@resume}: the checkpoint in {root} was written with {@" + name + "} "
                    "{theirs}, this run has {ours}. Resume with the same settings, or start a "
                    "new run (another {@out}, or {@overwrite}).",
                    root=self.store.root,
                    theirs=_as_typed(theirs),
                    ours=_as_typed(ours),
                )
        recorded = meta.get("data", {}).get("sha256")
        if recorded is None:
            if meta.get("num_train") != self.data["num_train"]:
                raise ResumeError(
                    "{@resume}: the checkpoint was trained on {theirs} examples, this run's "
                    "training split has {ours}; resume with the same data.",
                    theirs=meta.get("num_train"),
                    ours=self.data["num_train"],
                )
            self.log(
                "warning: the checkpoint records no data fingerprint (an older train.py); only "
                "the number of training examples was compared"
            )
        elif recorded != self.data["sha256"]:
            theirs = meta["data"]
            raise ResumeError(
                "{@resume}: the checkpoint was trained on other data (SHA-256 {theirs_sha}..., "
                "{theirs_n} training examples from {theirs_src}); this run's data is "
                "{ours_sha}... ({ours_n} from {ours_src}). Resume with the same data, or start a "
                "new run (another {@out}, or {@overwrite}).",
                theirs_sha=recorded[:12],
                theirs_n=theirs.get("num_train"),
                theirs_src=theirs.get("source"),
                ours_sha=self.data["sha256"][:12],
                ours_n=self.data["num_train"],
                ours_src=self.data["source"],
            )
        if meta["epoch"] > self.config.epochs:
            raise ResumeError(
                "{@resume}: the checkpoint is at epoch {epoch}, past {@epochs} {epochs}; pass "
                "{@epochs} {epoch} or more.",
                epoch=meta["epoch"],
                epochs=self.config.epochs,
            )

    def _check_order(self, meta: dict[str, Any]) -> None:
        """Warns when a checkpoint taken inside an epoch ordered that epoch otherwise."""
        shuffle = meta.get("data_order", {}).get("shuffle", SHUFFLE_BEFORE_RECORDED)
        if shuffle == SHUFFLE or not meta.get("step_in_epoch"):
            return  # at an epoch's end, only later epochs' orders matter: all drawn here
        self.log(
            f"warning: the checkpoint was taken inside epoch {meta['epoch'] + 1} by a train.py "
            f"that shuffled otherwise ({shuffle!r}, this one {SHUFFLE!r}): the rest of that "
            "epoch follows this version's order, so some of its examples may be seen twice "
            "and others not at all; later epochs are unaffected"
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
            "num_train": self.data["num_train"],
            "data": self.data,
            "data_order": {"seed": self.config.seed, "epoch": epoch, "shuffle": SHUFFLE},
            "config": self.config.as_dict(),
            "history": self.history,
        }
        try:
            with interrupt.deferred():  # Ctrl-C or SIGTERM: after this checkpoint is committed
                self.last_saved = str(self.store.save(step, state, meta))
        except Exception as err:  # a full disk, a failing filesystem: Orbax's errors vary
            kept = (
                f"the last good checkpoint is {self.last_saved}"
                if self.last_saved
                else "no checkpoint was written before it"
            )
            raise WriteError(
                "writing the checkpoint of global step {step} to {root} failed ({reason}); "
                "{kept}. Free space or fix the filesystem{peers}, then rerun with {@resume}.",
                step=step,
                root=self.store.root,
                reason=write_failure(err),
                kept=kept,
                peers=_PEERS if jax.process_count() > 1 else "",
            ) from None

    def _stop(self, losses: np.ndarray, epoch: int) -> None:
        bad = int(np.argmin(np.isfinite(losses)))
        step = epoch * self.steps_per_epoch + bad + 1
        kept = (
            f"the last good checkpoint is {self.last_saved}"
            if self.last_saved
            else "no checkpoint was written before it"
        )
        raise NonFiniteLossError(
            "training loss is {loss} at epoch {epoch}, step {bad}/{steps} (global step {step}); "
            "stopped without saving it, {kept}. A smaller {@learning_rate} usually helps; "
            "{@resume} continues from the last good checkpoint.",
            loss=losses[bad],
            epoch=epoch + 1,
            bad=bad + 1,
            steps=self.steps_per_epoch,
            step=step,
            kept=kept,
        )


def _as_typed(value: Any) -> str:
    """A setting as it is written on the command line (``(256, 128)`` -> ``256 128``)."""
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
