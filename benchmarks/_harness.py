"""Timing, peak-memory and fresh-process plumbing shared by the benchmarks.

Each measured variant runs in its own child process (``python -m benchmarks._child SPEC``), so
its peak memory is its own: the child reads ``VmHWM`` from ``/proc/self/status`` and resets it
through ``/proc/self/clear_refs`` between phases (Linux only; elsewhere memory is reported as
None). The child prints one line ``RESULT_MARKER + json`` that the parent parses.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from training import _interrupt as interrupt

RESULT_MARKER = "@@benchmark-result@@ "
TARGETS = ("index", "smoothed", "probs")  # the kinds of target (see benchmarks._jax_variants)
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Spec:
    """What one child process measures."""

    variant: str  # a name from benchmarks.loss.VARIANTS
    setting: str  # "outside", "in_step" or "forward" (see benchmarks.loss)
    n: int
    c: int
    repeats: int
    warmup: int
    threads: int
    seed: int = 0
    targets: str = "index"  # one of TARGETS


def child_env(threads: int) -> dict[str, str]:
    """The environment of a child: thread counts pinned, quiet logs."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
        TORCHINDUCTOR_COMPILE_THREADS="1",
        TORCHINDUCTOR_FORCE_DISABLE_CACHES="1",  # cold compile times, as a fresh machine sees
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


def pin_threads(threads: int) -> list[int]:
    """Restricts this process to ``threads`` CPUs (XLA sizes its pool from the affinity mask)."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def _status_kib() -> dict[str, int]:
    try:
        with open("/proc/self/status") as f:
            lines = [line.split() for line in f if line.startswith(("VmRSS", "VmHWM"))]
    except OSError:
        return {}
    return {parts[0].rstrip(":"): int(parts[1]) for parts in lines}


def rss_mib() -> float | None:
    """Resident set size of this process now, in MiB (None where /proc is unavailable)."""
    kib = _status_kib().get("VmRSS")
    return None if kib is None else kib / 1024


def available_mib() -> float | None:
    """Memory the machine can give a new process now (``MemAvailable``), in MiB (None where
    /proc is unavailable)."""
    try:
        with open("/proc/meminfo") as f:
            kib = [int(line.split()[1]) for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        return None
    return kib[0] / 1024 if kib else None


def peak_mib() -> float | None:
    """Peak resident set size (VmHWM) since start or the last ``reset_peak``, in MiB."""
    kib = _status_kib().get("VmHWM")
    return None if kib is None else kib / 1024


def reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where getrusage is unavailable)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_calls(call: Callable[[], object], repeats: int, cpu: list | None = None) -> list[float]:
    """Wall seconds of ``repeats`` calls; ``call`` must block until its work is done.

    ``cpu``, when given, receives the CPU seconds of each call (all threads of the process),
    which other processes on the machine disturb less than wall time.
    """
    times = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return times


def warm_up(call: Callable[[], object], calls: int, *, until_no_faults: int = 0) -> int:
    """Runs ``calls`` calls, then more (``until_no_faults`` in all at most) until two in a row
    do not fault (more than 256 minor faults, 1 MiB of 4 KiB pages). Returns the calls made.

    Used where calls should reuse their memory: timing before the steady state would count the
    page faults of first touching it.
    """
    made = 0
    for _ in range(calls):
        call()
        made += 1
    quiet = 0  # consecutive calls without faults; two in a row end the warm-up
    while made < until_no_faults and quiet < 2:
        before = minor_faults()
        call()
        made += 1
        quiet = quiet + 1 if minor_faults() - before <= 256 else 0
    return made


@dataclass(frozen=True)
class Stats:
    """Robust summary of repeated timings, in milliseconds."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    min_ms: float
    repeats: int


def summarize(times_s: list[float]) -> Stats:
    """Median, quartiles, IQR and minimum of timings given in seconds."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return Stats(float(med), float(q1), float(q3), float(q3 - q1), float(ms.min()), len(ms))


def stats_dict(times_s: list[float]) -> dict:
    return asdict(summarize(times_s))


def emit(result: dict) -> None:
    """Prints a child's result line for the parent (the only line it parses)."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_child(spec: Spec, *, timeout_s: float) -> dict:
    """Runs one variant in a fresh interpreter and returns its result dictionary.

    A crash, a timeout or a missing result line becomes ``{"ok": False, "error": ...}`` so one
    broken variant never stops the suite.
    """
    cmd = [sys.executable, "-m", "benchmarks._child", json.dumps(asdict(spec))]
    env = child_env(spec.threads)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"ok": False, "error": f"exit code {proc.returncode}: " + " | ".join(tail)}


def write_json(path: str | None, doc: dict, *, quiet: bool = False) -> None:
    """Writes a benchmark's JSON document to ``path`` (nothing when None) and says so.

    Atomically (a temporary file beside it, then a rename): an interrupted write never leaves a
    truncated document in place of the last complete one. A signal that arrived during the run
    (``interrupt.check``) stops it here, before anything is written.
    """
    interrupt.check()
    if path:
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, path)
        except OSError as err:  # a full disk, a failing filesystem: one line, not a traceback
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise SystemExit(
                f"error: writing {path} failed ({err.strerror or err}); what was printed is "
                "what was measured"
            ) from None
        if not quiet:
            print(f"wrote {path}")


def partial_path(path: str) -> str:
    """Where a run keeps its results so far: beside ``path``, which keeps the last complete
    document until this run's own replaces it."""
    return f"{path}.partial"


def partial_writer(path: str | None, head: dict) -> Callable[[dict], None]:
    """``save(partial)``: rewrites ``partial_path(path)`` with ``head``, the results so far and
    ``"complete": false``, so a run stopped midway (interrupted, a crash, a timeout) keeps what
    it measured, and an earlier complete document at ``path`` stays as it was. The finished run
    writes ``path`` with ``"complete": true`` (`write_complete`), which removes the partial
    file."""

    def save(partial: dict) -> None:
        interrupt.check()  # after each measurement, with or without --json
        if path:
            write_json(partial_path(path), {**head, **partial, "complete": False}, quiet=True)

    return save


def write_complete(path: str | None, doc: dict) -> None:
    """`write_json` of a finished run's document, then its results-so-far file removed."""
    write_json(path, doc)
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial_path(path))
