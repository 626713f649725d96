"""One variant, measured in a fresh process: ``python -m benchmarks._child '<Spec as JSON>'``.

Memory fields (MiB, host RSS): ``idle`` is the RSS with the framework imported and initialised;
``inputs`` the RSS growth from creating the inputs; ``call_extra`` the peak RSS growth during the
first call after compilation (the output and the temporaries); ``process_peak`` the process's
peak RSS minus ``idle`` (inputs, compilation and calls). On a GPU, ``device_call_extra`` is the
device's peak use after the first call minus its use before it (JAX cannot reset its peak
counter, so there it is the larger of that and the earlier peak).
"""

from __future__ import annotations

import json
import sys
import time
import traceback

from benchmarks import _harness as h


def _measure(spec: h.Spec) -> dict:
    cpus = h.pin_threads(spec.threads)
    is_torch = spec.variant.startswith("torch")
    if is_torch:
        from benchmarks import _torch_variants as fw

        fw.warm_up_framework(spec.threads)
    else:
        from benchmarks import _jax_variants as fw

        fw.warm_up_framework()
    idle = h.rss_mib()
    logits, labels = fw.make_inputs(spec.n, spec.c, spec.seed, spec.targets)
    inputs = h.rss_mib()
    if is_torch:
        prepared = fw.prepare(spec.variant, spec.setting, logits, labels, spec.targets)
        compile_s, note = None, ""
    else:
        prepared, compile_s, note = fw.prepare(
            spec.variant, spec.setting, logits, labels, spec.targets
        )
    setup_peak = h.peak_mib()
    can_reset = h.reset_peak()
    fw.reset_device_peak()
    before_call, device_before = h.rss_mib(), fw.device_memory()
    first_call_s = h.time_calls(prepared.call, 1)[0]
    call_peak, device_after = h.peak_mib(), fw.device_memory()
    until = 30 if spec.setting == "in_step" else 0
    warmup_calls = 1 + h.warm_up(prepared.call, max(spec.warmup - 1, 0), until_no_faults=until)
    faults = h.minor_faults()
    cpu: list[float] = []
    times = h.time_calls(prepared.call, spec.repeats, cpu)
    faults = (h.minor_faults() - faults) / spec.repeats
    stats = h.stats_dict(times)
    if is_torch and spec.variant == "torch_compile":
        compile_s = max(first_call_s - stats["median_ms"] / 1e3, 0.0)
    run_peak = h.peak_mib()
    mem = None
    if idle is not None and can_reset:
        mem = {
            "idle": idle,
            "inputs": inputs - idle,
            "call_extra": call_peak - before_call,
            "process_peak": max(setup_peak, run_peak) - idle,
        }
    if device_before is not None and device_after is not None:
        mem = dict(mem or {}, device_call_extra=device_after[1] - device_before[0])
    return {
        "ok": True,
        "cpus": cpus,
        "compile_s": compile_s,
        "first_call_s": first_call_s,
        "warmup_calls": warmup_calls,
        "minor_faults_per_call": faults,
        "time": stats,
        "times_ms": [t * 1e3 for t in times],
        "cpu_time": h.stats_dict(cpu),
        "memory_mib": mem,
        "note": note,
    }


def main() -> None:
    spec = h.Spec(**json.loads(sys.argv[1]))
    start = time.perf_counter()
    try:
        result = _measure(spec)
    except Exception as err:  # reported, never raised: one broken variant must not stop a run
        last = traceback.extract_tb(err.__traceback__)[-1]
        where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
        result = {"ok": False, "error": f"{type(err).__name__} at {where}: {err}"[:2000]}
    result["wall_s"] = time.perf_counter() - start
    h.emit(result)


if __name__ == "__main__":
    main()
