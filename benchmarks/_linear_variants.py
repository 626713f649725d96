"""The variants of the fused linear benchmark: one training step's loss and its gradients.

Each computes, for hidden (N, D), a (C, D) or (D, C) weight, a (C,) bias and integer labels,
the mean cross-entropy of the logits ``hidden @ weight^T + bias`` and its gradients w.r.t.
hidden, the weight and the bias, in ``dtype`` (float32 or bfloat16):

- ``torch_reference``: ``F.linear_cross_entropy(..., options=None)`` (the logits
  materialised), then ``torch.autograd.grad``;
- ``torch_chunked``: the same with ``options=LinearCrossEntropyOptions()`` (torch's chunked
  path, its defaults for this device and dtype);
- ``jaxce_unfused``: ``jaxce.loss.cross_entropy(hidden @ kernel + bias, labels)`` under
  ``jit(value_and_grad)``, the logits materialised;
- ``jaxce_fused``: ``jaxce.loss.linear_cross_entropy(hidden, kernel, labels, bias=bias)``.

``prepare`` builds the inputs (seeded numpy, the same in both frameworks) and returns a call
that blocks until its work is done; on a machine with a GPU both frameworks run there.
JAX variants are compiled ahead of time (timed apart). ``warm_up`` runs a small matmul with
its gradient first, so the frameworks' one-time set-up (thread pools, matmul scratch) is part
of the idle baseline, not of the measured call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

VARIANTS = ("torch_reference", "torch_chunked", "jaxce_unfused", "jaxce_fused")


def is_torch(variant: str) -> bool:
    return variant.startswith("torch")


def warm_up(variant: str, dtype: str, threads: int) -> None:
    if is_torch(variant):
        import torch

        torch.set_num_threads(threads)
        x = torch.ones(64, 128, dtype=getattr(torch, dtype), requires_grad=True)
        (x @ x.T).sum().backward()
        return
    import jax
    import jax.numpy as jnp

    x = jnp.ones((64, 128), dtype)
    jax.block_until_ready(jax.jit(jax.grad(lambda x: jnp.sum(x @ x.T)))(x))


def inputs(spec: dict) -> dict:
    """The seeded float32 inputs, the same for every variant: hidden (N, D), kernel (D, C)
    scaled by 1/sqrt(D), bias (C,) scaled by 0.1, labels (N,) int32."""
    import numpy as np

    n, d, c = spec["rows"], spec["features"], spec["classes"]
    rng = np.random.default_rng(0)
    h = rng.standard_normal((n, d), np.float32)
    k = rng.standard_normal((d, c), np.float32) / np.float32(d**0.5)
    b = rng.standard_normal(c, np.float32) * np.float32(0.1)
    return {"h": h, "k": k, "b": b, "y": rng.integers(0, c, n).astype(np.int32)}


def prepare(spec: dict) -> tuple[Callable[[], object], float | None]:
    """The variant's call and its compile seconds (None for torch)."""
    if is_torch(spec["variant"]):
        return _torch(spec), None
    return _jax(spec)


def _torch(spec: dict) -> Callable[[], object]:
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, spec["dtype"])
    arrays = inputs(spec)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hidden, kernel, bias = (
        torch.from_numpy(arrays[k]).to(device=device, dtype=dtype) for k in ("h", "k", "b")
    )
    hidden, bias = hidden.requires_grad_(), bias.requires_grad_()
    weight = kernel.T.contiguous().requires_grad_()  # (C, D), as nn.Linear
    labels = torch.from_numpy(arrays["y"]).to(device=device, dtype=torch.int64)
    options = None
    if spec["variant"] == "torch_chunked":
        options = torch.nn.LinearCrossEntropyOptions()

    def call():
        value = F.linear_cross_entropy(hidden, weight, labels, linear_bias=bias, options=options)
        grads = torch.autograd.grad(value, (hidden, weight, bias))
        if device == "cuda":
            torch.cuda.synchronize()
        return value.detach(), grads

    return call


def _jax(spec: dict) -> tuple[Callable[[], object], float]:
    import jax
    import jax.numpy as jnp

    from jaxce import loss

    dtype = jnp.dtype(spec["dtype"])
    arrays = inputs(spec)
    args = [jnp.asarray(arrays[k], dtype) for k in ("h", "k", "b")] + [jnp.asarray(arrays["y"])]
    args = jax.block_until_ready(args)
    del arrays

    def fused(hidden, kernel, bias, labels):
        return loss.linear_cross_entropy(
            hidden, kernel, labels, bias=bias, chunk_size=spec.get("chunk_size"),
            row_chunk_size=spec.get("row_chunk_size"),
        )  # fmt: skip

    def unfused(hidden, kernel, bias, labels):
        return loss.cross_entropy(hidden @ kernel + bias, labels)

    fn = fused if spec["variant"] == "jaxce_fused" else unfused
    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2))).lower(*args).compile()
    compile_s = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(*args))), compile_s


def loss_value(out) -> float:
    return float(out[0])


def device_peak_mib(variant: str) -> float | None:
    """The accelerator's peak bytes in use so far, in MiB (None on CPU)."""
    if is_torch(variant):
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.max_memory_allocated() / 2**20
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None
