"""The flag checks the benchmarks' command lines share.

Each bad value is a usage error (``parser.error``: exit status 2, one ``prog: error:`` line
naming the flag, the value got and what it must be), raised before any measurement, so a run
never fails at its end for want of, say, a directory to write its JSON to.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable

from training import _interrupt as interrupt


def flag(name: str) -> str:
    """The flag of a config field: ``row_chunk_size`` -> ``--row-chunk-size``."""
    return "--" + name.replace("_", "-")


def check_counts(p: argparse.ArgumentParser, values: dict, **at_least: int) -> None:
    """Refuses each ``values[name]`` below ``at_least[name]``: one integer, or each of a tuple
    or list (a flag that takes several). A value that is None or absent was not given."""
    for name, low in at_least.items():
        value = values.get(name)
        if value is None:
            continue
        several = isinstance(value, (tuple, list))
        if any(v < low for v in (value if several else (value,))):
            got = " ".join(map(str, value)) if several else value
            p.error(f"{flag(name)} must {'all ' if several else ''}be >= {low}, got {got}")


def check_output_file(
    p: argparse.ArgumentParser, path: str | None, name: str = "json", *, partial: bool = False
) -> None:
    """Refuses an output path the run could not write at its end: a directory, or a file in
    a directory that does not exist or is not writable (``_harness.write_json`` writes a
    temporary file beside it, then renames it). None: no output asked for. ``partial``: the
    run also keeps its results so far in ``path + ".partial"``, checked the same way."""
    if path is None:
        return
    parent = os.path.dirname(path) or "."
    problem = None
    if not path:
        problem = "an empty path"
    elif os.path.isdir(path):
        problem = "a directory"
    elif os.path.islink(path):  # the rename would replace the link, not write its target
        problem = f"a symbolic link; pass its target, {os.path.realpath(path)}"
    elif os.path.exists(path) and not os.path.isfile(path):  # /dev/null, a FIFO: replaced
        problem = "not a regular file (a device or a pipe), which the write would replace"
    elif os.path.lexists(f"{path}.tmp"):
        problem = f"{path}.tmp, its temporary file, exists; remove it"
    elif not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist; create it"
        problem = f"{parent} {what}"
    else:
        try:  # as the write will: a new file beside it (access() misleads root, read-only mounts)
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-check-"):
                pass
        except OSError as err:
            problem = f"cannot create a file in {parent}: {err.strerror or err}"
    if problem:
        got = path or "''"
        p.error(f"{flag(name)} must be a file in a writable directory, got {got} ({problem})")
    if partial:
        check_output_file(p, f"{path}.partial", name)


def usable_cpus() -> int | None:
    """The CPUs this process may run on (None where the platform does not say)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def check_threads(p: argparse.ArgumentParser, values: dict, name: str = "threads") -> None:
    """Refuses ``--threads`` (or the flag of ``name``) beyond the CPUs this process may use:
    each measurement pins its process to that many CPUs, so the rest would not run (torch
    would oversubscribe them)."""
    threads = values.get("threads")
    available = usable_cpus()
    if threads is not None and available is not None and threads > available:
        p.error(
            f"{flag(name)} must be at most the {available} CPUs this process may use, got "
            f"{threads}; pass {flag(name)} {available} or less"
        )


def check_no_repeats(p: argparse.ArgumentParser, values: dict, *names: str) -> None:
    """Refuses a list flag naming a value twice (it would be measured twice as one cell)."""
    for name in names:
        seen: set = set()
        for value in values.get(name, ()):
            if value in seen:
                text = "x".join(map(str, value)) if isinstance(value, tuple) else value
                p.error(f"{flag(name)} lists {text} twice; name each once")
            seen.add(value)


def check_shapes(
    p: argparse.ArgumentParser, texts: list[str], available_mib: float | None, name="shapes"
) -> tuple[tuple[int, int], ...]:
    """NxC texts as (N, C) pairs; a malformed, zero or negative one, or one whose float32
    logits alone exceed ``available_mib`` (None: unknown), is a usage error."""
    shapes = []
    for text in texts:
        try:
            n, c = (int(part) for part in text.lower().split("x"))
        except ValueError:
            n = c = 0
        if n < 1 or c < 1:
            p.error(f"{flag(name)} must be NxC with N >= 1 and C >= 1, e.g. 4096x32768, got {text}")
        need = n * c * 4 / 2**20
        if available_mib is not None and need > available_mib:
            p.error(
                f"{flag(name)} must fit in memory, got {text} (its float32 logits alone take "
                f"{need / 1024:.1f} GiB, {available_mib / 1024:.1f} GiB available): lower N or C"
            )
        shapes.append((n, c))
    return tuple(shapes)


PARTIAL = (
    "the measurements finished so far are printed above and, with --json FILE, in FILE.partial "
    "(an earlier FILE is kept)"
)


def run_main(main: Callable[[], None], prog: str, kept: str = PARTIAL) -> None:
    """``main()``; Ctrl-C or SIGTERM ends it with one line saying what was ``kept``, and exit
    status 130. A signal that lands where Python drops the KeyboardInterrupt (a garbage-
    collection callback) is recorded, and the next JSON write or measurement raises it
    (``interrupt.check``): such a run never ends as if complete."""
    try:
        with interrupt.handling():
            main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {kept}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
