"""Compiles jaxce's losses for a GPU or a TPU without one, and reports their memory traffic.

``python -m benchmarks.compiled [--targets h100 v5e] [--shape 4096x32768] [--json FILE]``

Each case is one ``jax.jit(jax.value_and_grad(loss))`` step, compiled ahead of time for a
compile-only device: ``h100`` is an NVIDIA H100 80GB HBM3 (SXM) described by its target config
(``H100_TARGET_CONFIG``), ``v5e`` one chip of a TPU v5e (``v5e:1x1``). From the optimized HLO
(`benchmarks._hlo`) it reports, in units of the logits' bytes, what the kernels read and write
of (N, C) arrays (the bound of a loss with its gradient is 1 read + 1 write), the (N, C)
temporaries and their dtypes, and XLA's temporary bytes (``memory_analysis``).

Needs the target's compiler, not its hardware: the CUDA plugin for ``h100`` (``jax[cuda12]``,
about 5.5 GB installed with its CUDA libraries) and libtpu for ``v5e`` (``jax[tpu]``, 0.7 GB).
``make accel-check`` installs both into ``.venv-accel`` and runs this report and its tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from benchmarks import _cli, _hlo, _machine
from benchmarks._harness import write_json

# An H100 80GB HBM3 (SXM5): 132 SMs, compute capability 9.0, 3.35 TB/s, 50 MiB of L2 (NVIDIA's
# data sheet; the fields XLA reads from a GpuTargetConfigProto to compile without the GPU).
H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84942979072
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 minor: 0 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str  # jax's lowering platform
    device: str  # what it stands for
    needs: str  # the importable module that brings its compiler
    install: str  # the pip requirement that installs it


TARGETS = {
    "h100": Target(
        "h100", "cuda", "NVIDIA H100 80GB HBM3", "jax_plugins.xla_cuda12", "jax[cuda12]"
    ),
    "v5e": Target("v5e", "tpu", "TPU v5 lite (v5e)", "libtpu", "jax[tpu]"),
}


def missing(target: str) -> str | None:
    """Why ``target`` cannot be compiled for here (its compiler is not installed), or None."""
    t = TARGETS[target]
    try:
        found = importlib.util.find_spec(t.needs) is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return None
    return (
        f"compiling for {t.name} needs {t.needs} (pip install '{t.install}'; "
        f"`make accel-check` installs it into .venv-accel)"
    )


def devices(target: str, count: int = 1) -> list:
    """``count`` compile-only devices of ``target`` (for ``jit(...).trace().lower().compile()``).

    Raises:
      RuntimeError: the target's compiler is not installed (see `missing`).
    """
    reason = missing(target)
    if reason:
        raise RuntimeError(reason)
    from jax.experimental import topologies

    # The CUDA plugin checks the CUDA driver of an attached GPU unless told there is none to use
    # (JAX_PLATFORMS without cuda); a compile-only topology needs no driver.
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    if target == "h100":
        topo = topologies.get_topology_desc(
            "h100", "cuda", target_config=H100_TARGET_CONFIG, topology=f"1x1x{count}"
        )
    else:
        layout = {1: "1x1", 4: "2x2", 8: "2x4"}[count]
        bounds = (1, 1, 1) if count == 1 else (2, 2, 1)
        topo = topologies.get_topology_desc(f"v5e:{layout}", "tpu", chips_per_host_bounds=bounds)
    return list(topo.devices)[:count]


def compile_for(target: str, fn: Callable, *args: jax.ShapeDtypeStruct, **kwargs):
    """``jax.jit(fn, **kwargs)`` compiled for ``target``; ``args`` carry compile-only shardings."""
    lowered = (
        jax.jit(fn, **kwargs).trace(*args).lower(lowering_platforms=(TARGETS[target].platform,))
    )
    return lowered.compile()


def on(device, shape, dtype) -> jax.ShapeDtypeStruct:
    """An abstract array placed on one compile-only device."""
    return jax.ShapeDtypeStruct(shape, dtype, sharding=jax.sharding.SingleDeviceSharding(device))


# The option sets of the report: each alone, then all together.
CASES: dict[str, dict] = {
    "plain": {},
    "weight": {"weight": True},
    "ignore_index": {"ignore_index": 0},
    "reduction=sum": {"reduction": "sum"},
    "label_smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-4},
    "softcap": {"softcap": 30.0},
    "where": {"where": True},
    "all": {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-4, "softcap": 30.0, "where": True},
    "probabilities": {"probabilities": True},
    "probabilities+softcap": {"probabilities": True, "softcap": 30.0},
}


def loss_step(options: dict) -> Callable:
    """``step(logits, labels, weight, where) -> (loss, grads)`` of ``cross_entropy(options)``.

    The gradient is taken w.r.t. the logits and, with ``weight``, the class weights.
    """
    from jaxce import loss

    options = dict(options)
    weighted = options.pop("weight", False)
    masked = options.pop("where", False)
    options.pop("probabilities", None)

    def value(logits, labels, weight, where):
        kw = dict(options)
        if weighted:
            kw["weight"] = weight
        if masked:
            kw["where"] = where
        return loss.cross_entropy(logits, labels, **kw)

    def step(logits, labels, weight, where):
        return jax.value_and_grad(value, argnums=(0, 2) if weighted else 0)(
            logits, labels, weight, where
        )

    return step


@dataclasses.dataclass(frozen=True)
class Measurement:
    target: str
    case: str
    dtype: str
    shape: tuple[int, int]
    reads: float
    writes: float
    bound: float
    temporaries: tuple[str, ...]
    temp_bytes: int
    kernels: int
    transcendental_passes: int
    scatters: int
    compile_s: float

    @property
    def x_bound(self) -> float:
        """Reads plus writes over the bound (each (N, C) input read once, output written once)."""
        return (self.reads + self.writes) / self.bound

    @property
    def temp_x_logits(self) -> float:
        """XLA's temporary bytes over the logits' bytes."""
        n, c = self.shape
        return self.temp_bytes / (n * c * jnp.dtype(self.dtype).itemsize)


def compiled_step(target: str, case: str, dtype, n: int, c: int):
    """The compiled loss step of CASES[case] for ``target`` at (n, c) logits of ``dtype``."""
    options = CASES[case]
    (device,) = devices(target)
    dtype = jnp.dtype(dtype)
    labels = (
        on(device, (n, c), dtype) if options.get("probabilities") else on(device, (n,), jnp.int32)
    )
    args = (on(device, (n, c), dtype), labels, on(device, (c,), dtype), on(device, (n,), bool))
    return compile_for(target, loss_step(options), *args)


def measure(target: str, case: str, dtype, n: int, c: int) -> Measurement:
    """Compiles one case for ``target`` and sums its (N, C) traffic."""
    start = time.perf_counter()
    compiled = compiled_step(target, case, dtype, n, c)
    seconds = time.perf_counter() - start
    hlo = compiled.as_text()
    t = _hlo.traffic(hlo, n * c, dtype)
    return Measurement(
        target,
        case,
        jnp.dtype(dtype).name,
        (n, c),
        t.reads,
        t.writes,
        t.bound,
        t.temporaries,
        int(compiled.memory_analysis().temp_size_in_bytes),
        t.kernels,
        t.transcendental_passes,
        sum(ins.op == "scatter" for body in _hlo.parse(hlo)[1].values() for ins in body),
        round(seconds, 2),
    )


def _row(m: Measurement) -> str:
    temps = ", ".join(m.temporaries) or "-"
    return (
        f"| {m.target} | {m.case} | {m.dtype} | {m.reads:g} | {m.writes:g} | {m.x_bound:.2f} "
        f"| {temps} | {m.temp_x_logits:.2f} | {m.transcendental_passes} | {m.scatters} |"
    )


HEADER = (
    "| target | case | dtype | reads | writes | x bound | (N, C) temporaries | temp bytes / logits"
    " | exp/tanh passes | scatters |\n|---|---|---|---|---|---|---|---|---|---|"
)


FLOATS = ("bfloat16", "float16", "float32", "float64")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compiled", description=__doc__)
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--shape", default="4096x32768", metavar="NxC")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=FLOATS)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--x64", action="store_true", help="with jax_enable_x64 (inputs keep --dtypes)")
    p.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    args = p.parse_args(argv)
    ((n, c),) = _cli.check_shapes(p, [args.shape], None, name="shape")  # compiled, not run
    if min(n, c) < 2:  # (N, C) arrays are told apart by their size: (N,) labels when C = 1
        p.error(f"--shape must be NxC with N >= 2 and C >= 2, got {args.shape}")
    _cli.check_no_repeats(p, vars(args), "targets", "dtypes", "cases")
    if "float64" in args.dtypes and not args.x64:
        p.error("--dtypes float64 needs --x64 (without it JAX makes the inputs float32)")
    _cli.check_output_file(p, args.json)
    jax.config.update("jax_enable_x64", args.x64)
    if not jax.config.jax_platforms:
        jax.config.update("jax_platforms", "cpu")  # run on the host, compile for the targets
    absent = [f"{t}: {missing(t)}" for t in args.targets if missing(t)]
    if absent:
        print("error: cannot compile for " + "; ".join(absent), file=sys.stderr)
        return 2
    rows = []
    print(HEADER)
    for target in args.targets:
        for dtype in args.dtypes:
            for case in args.cases:
                m = measure(target, case, dtype, n, c)
                rows.append(m)
                print(_row(m), flush=True)
    if args.json:
        doc = {
            "command": "python -m benchmarks.compiled " + " ".join(argv or sys.argv[1:]),
            "jax": jax.__version__,
            # the host that compiled, jaxlib's and the accelerator plugins' versions
            "machine": _machine.describe(),
            "targets": {t: TARGETS[t].device for t in args.targets},
            "results": [
                {**dataclasses.asdict(m), "x_bound": m.x_bound, "temp_x_logits": m.temp_x_logits}
                for m in rows
            ],
        }
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    _cli.run_main(lambda: sys.exit(main()), "python -m benchmarks.compiled", "nothing was written")
