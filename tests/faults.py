"""train.py with test-only faults: a SIGKILL at a chosen point, for the kill-and-resume tests.

    JAXCE_TEST_KILL=<point>:<step> python -m tests.faults <train.py's flags>

It patches the seams of the training package in this process only, then runs ``train.main``.
``<point>`` is one of:

- ``step``: after a training call that ends at or after global step ``<step>``, before that
  step is checkpointed (`RunCheckpointing.after_chunk`);
- ``ckpt-write``: all of checkpoint ``<step>``'s files are written, before Orbax renames its
  temporary directory into place (`CompositeCheckpointHandler.finalize`);
- ``ckpt-commit``: after Orbax's rename, before the commit file (`RunCheckpoints.commit`).

`install` does the same inside any test subprocess that saves checkpoints.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import orbax.checkpoint as ocp

from training._checkpoint import RunCheckpoints
from training._resume import RunCheckpointing

TEST_KILL_ENV = "JAXCE_TEST_KILL"


def _kill(point: str, target: int, step: int) -> None:
    print(
        f"[test hook] {TEST_KILL_ENV}={point}:{target}: killing process {os.getpid()} at step "
        f"{step}",
        file=sys.stderr,
        flush=True,
    )
    os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
    """Patches the seam named by ``spec`` (``<point>:<step>``) to SIGKILL this process."""
    point, _, target_text = spec.partition(":")
    target = int(target_text)
    if point == "step":
        after_chunk = RunCheckpointing.after_chunk

        def killing_after_chunk(self, state, done, *, epoch):
            step = epoch * self.steps_per_epoch + done
            if step >= target:
                _kill(point, target, step)
            return after_chunk(self, state, done, epoch=epoch)

        RunCheckpointing.after_chunk = killing_after_chunk
    elif point == "ckpt-write":
        finalize = ocp.CompositeCheckpointHandler.finalize

        def killing_finalize(self, directory):
            step = ocp.path.step.step_from_checkpoint_name(Path(directory).name)
            if step == target:
                _kill(point, target, step)
            return finalize(self, directory)

        ocp.CompositeCheckpointHandler.finalize = killing_finalize
    elif point == "ckpt-commit":
        commit = RunCheckpoints.commit

        def killing_commit(self, step, directory):
            if step == target:
                _kill(point, target, step)
            return commit(self, step, directory)

        RunCheckpoints.commit = killing_commit
    else:
        raise ValueError(f"unknown {TEST_KILL_ENV} point {point!r} in {spec!r}")


def main(argv: list[str] | None = None) -> None:
    if spec := os.environ.get(TEST_KILL_ENV):
        install(spec)
    import train

    train.main(argv)


if __name__ == "__main__":
    main()
