"""The host a benchmark ran on: CPU model, caches, cores, vector ISA, load and package versions.

CPU speed claims hold per CPU family (the XLA:CPU forms of ``jaxce._xla_cpu`` were chosen on
two), so every benchmark records the machine beside its numbers. Linux only for the cache and
topology fields (``/sys``, ``/proc``); elsewhere they are empty.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

# the accelerator plugins too, where installed: they decide the programs XLA compiles
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu", "optax", "torch",
            "numpy")  # fmt: skip
_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
_ISA = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in _read(Path("/proc/cpuinfo")).splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def caches() -> list[dict]:
    """cpu0's caches: level, type, size and how many CPUs share it."""
    out = []
    for index in sorted(_CACHE_DIR.glob("index*")):
        shared = _read(index / "shared_cpu_list")
        cpus = sum(
            int(b) - int(a) + 1 if b else 1
            for a, _, b in (part.partition("-") for part in shared.split(",") if part)
        )
        out.append(
            {
                "level": int(_read(index / "level") or 0),
                "type": _read(index / "type"),
                "size": _read(index / "size"),
                "shared_by_cpus": cpus,
            }
        )
    return out


def installed(names) -> dict[str, str]:
    """The versions of the packages among ``names`` that are installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def describe() -> dict:
    """The machine as a JSON-ready dict (see ``summary_line`` for its one-line form)."""
    info = _cpuinfo()
    siblings = _read(Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list"))
    versions = {"python": platform.python_version(), **installed(PACKAGES)}
    flags = set(info.get("flags", info.get("Features", "")).split())
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cpus_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpus_online": os.cpu_count(),
        "threads_per_core": len(siblings.replace("-", ",").split(",")) if siblings else None,
        "hypervisor": "hypervisor" in flags,
        "isa": [name for name in _ISA if name in flags],
        "caches": caches(),
        "platform": platform.platform(),
        "versions": versions,
        "env": {k: os.environ[k] for k in ("XLA_FLAGS", "JAXCE_XLA_CPU_FORMS") if k in os.environ},
        "loadavg_start": list(os.getloadavg()),
    }


def summary_line(machine: dict) -> str:
    """One line for a table header: CPU, caches, cores, ISA, load and versions."""
    sizes = ", ".join(
        f"L{c['level']}{'d' if c['type'] == 'Data' else ''} {c['size']}"
        + (f"/{c['shared_by_cpus']} CPUs" if c["shared_by_cpus"] > 1 else "")
        for c in machine["caches"]
        if c["type"] != "Instruction"
    )
    load = machine["loadavg_start"]
    if "loadavg_end" in machine:
        load = f"{load[0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end"
    else:
        load = f"{load[0]:.2f}"
    v = machine["versions"]
    return (
        f"{machine['cpu']} ({machine['cpus_available']} CPUs, {sizes or 'caches unknown'}; "
        f"{'/'.join(machine['isa']) or 'no AVX2'}); load average {load}; "
        f"jax {v.get('jax', '?')}, optax {v.get('optax', '?')}, torch {v.get('torch', '?')}"
    )
