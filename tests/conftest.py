"""Shared fixtures: seeded randomness and float64 scoping."""

from __future__ import annotations

import contextlib
import importlib.util
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


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# tests/test_compiled.py compiles for GPU and TPU with their compilers (the CUDA plugin, libtpu),
# which only `make accel-check` installs (into .venv-accel): without both it is not collected.
collect_ignore = [] if _compilers_installed() else ["test_compiled.py"]


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
