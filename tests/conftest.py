"""Shared fixtures: seeded randomness and float64 scoping; one compilation cache per run."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is absent
        return False


def _compilers_installed() -> bool:
    return _installed("jax_plugins.xla_cuda12") and _installed("libtpu")


ROOT = Path(__file__).resolve().parents[1]  # the repository root
SHARED_DATA = ROOT.parent / "shared" / "data"

# tests/test_compiled.py compiles for GPU and TPU with their compilers (the CUDA plugin, libtpu),
# which only `make accel-check` installs (into .venv-accel): without both it is not collected.
collect_ignore = [] if _compilers_installed() else ["test_compiled.py"]


# jax's persistent compilation cache, for every program of the run: the xdist workers and the
# processes the tests start (train.py, parity, the README's commands) inherit these variables, so
# a program compiled once (the same computation, options and shapes) is read back, not compiled
# again, by the other worker or a later process. The executables are the same, so are the results.
CACHE_VARIABLES = (
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
)


# Where the README's commands write (tests/test_readme.py removes what each one made): the run
# leaves these folders only if they were there before it.
OUTPUT_FOLDERS = ("runs", "reports")


def pytest_configure(config):
    """A fresh cache directory for this run, unless the user set one (then theirs is used)."""
    if hasattr(config, "workerinput"):
        return  # an xdist worker inherits the controller's variables
    config.jaxce_new_folders = [ROOT / d for d in OUTPUT_FOLDERS if not (ROOT / d).exists()]
    if os.environ.get(CACHE_VARIABLES[0]):
        return
    config.jaxce_xla_cache = tempfile.mkdtemp(prefix="jaxce-tests-xla-cache-")
    os.environ.update(dict(zip(CACHE_VARIABLES, (config.jaxce_xla_cache, "0", "0"), strict=True)))
    jax.config.update("jax_compilation_cache_dir", config.jaxce_xla_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if cache := getattr(config, "jaxce_xla_cache", None):
        shutil.rmtree(cache, ignore_errors=True)
    for folder in getattr(config, "jaxce_new_folders", ()):
        with contextlib.suppress(OSError):  # absent, or holding something: left as it is
            folder.rmdir()


def main_in_fresh_process(module: str, argv: list[str], watched: tuple[str, ...]):
    """Runs ``module.main(argv)`` in a new interpreter from the repository root.

    Returns ``(imported, status, stderr)``: which of the ``watched`` modules it had imported
    when it returned or exited, its exit status (``main``'s return value if it returned), and
    the end of its stderr; ``imported`` and ``status`` are None if it printed nothing.
    """
    code = (
        f"import json, sys\nfrom {module} import main\n"
        "try:\n    status = main(sys.argv[1:])\n"
        "except SystemExit as exit:\n    status = exit.code\n"
        f"print(json.dumps([[m for m in {watched!r} if m in sys.modules], status]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stdout.strip().splitlines()
    imported, status = json.loads(lines[-1]) if lines else (None, None)
    return imported, status, proc.stderr[-2000:]


def x64_scope(dtype):
    """A context enabling float64 in JAX for float64 cases, and nothing otherwise."""
    if np.dtype(dtype) == np.float64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def seeded_rng(*key) -> np.random.Generator:
    """A generator seeded from a readable key, so each case draws its own fixed numbers."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@pytest.fixture
def rng(request) -> np.random.Generator:
    return seeded_rng(request.node.nodeid)


def pytest_collection_modifyitems(items):
    """The slow end-to-end tests first (in their collected order, so module fixtures still run
    once): under ``pytest -n 2`` they overlap the many short tests instead of ending the run on
    one worker while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
