"""JAX variants of the loss benchmark: jaxce, plain autodiff, optax and the three limits.

Every variant is compiled ahead of time (``jit(...).lower(...).compile()``), so compile time is
measured apart from the calls. Settings (see ``benchmarks.loss`` for what each one measures):

- ``outside``: ``f(logits, target) -> (loss, grad)``; the gradient is a new buffer every call.
- ``in_step``: ``step(logits, target, g) -> (loss, g')`` with ``g`` donated, so the gradient is
  written into the previous call's buffer, as inside a training step.
- ``forward``: ``f(logits, target) -> loss``, the jit of the loss alone (no gradient), as in
  evaluation; ``jnp_autodiff`` is then just its textbook formula.

Targets (``TARGETS``), each loss written as its library's user writes it:

- ``index``: int32 class indices. jaxce ``cross_entropy(x, y)``; optax
  ``softmax_cross_entropy_with_integer_labels``; the textbook ``logsumexp(x) - x[y]``.
- ``smoothed``: class indices with ``label_smoothing=SMOOTHING``. jaxce's option; optax
  ``softmax_cross_entropy`` of ``smooth_labels(one_hot(y))``; the textbook
  ``logsumexp(x) - (1 - eps) x[y] - eps * mean(x)``.
- ``probs``: float32 class probabilities (each row a softmax of normal noise). jaxce
  ``cross_entropy(x, q)``; optax ``softmax_cross_entropy``; the textbook
  ``-sum(q * log_softmax(x))``. The limits read the probabilities too (a loss must).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from benchmarks._harness import TARGETS
from jaxce import loss as jaxce_loss

SMOOTHING = 0.1


def _jaxce(targets: str, **options) -> Callable:
    smoothing = SMOOTHING if targets == "smoothed" else 0.0
    return lambda x, t: jaxce_loss.cross_entropy(x, t, label_smoothing=smoothing, **options)


def _optax(targets: str) -> Callable:
    if targets == "index":
        return lambda x, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x, y))
    if targets == "smoothed":

        def smoothed(x, y):
            q = optax.smooth_labels(jax.nn.one_hot(y, x.shape[-1], dtype=x.dtype), SMOOTHING)
            return jnp.mean(optax.softmax_cross_entropy(x, q))

        return smoothed
    return lambda x, q: jnp.mean(optax.softmax_cross_entropy(x, q))


def _textbook(targets: str) -> Callable:
    """The textbook formula, differentiated by autodiff (what a user writes by hand)."""

    def picked(x, y):
        return jnp.take_along_axis(x, y[:, None], axis=-1)[:, 0]

    if targets == "index":
        return lambda x, y: jnp.mean(jax.nn.logsumexp(x, axis=-1) - picked(x, y))
    if targets == "smoothed":

        def smoothed(x, y):
            eps = SMOOTHING
            lse = jax.nn.logsumexp(x, axis=-1)
            return jnp.mean(lse - (1 - eps) * picked(x, y) - eps * jnp.mean(x, axis=-1))

        return smoothed
    return lambda x, q: jnp.mean(-jnp.sum(q * jax.nn.log_softmax(x, axis=-1), axis=-1))


def losses(targets: str) -> dict[str, Callable]:
    """The loss variants for ``targets``: ``f(logits, target) -> scalar``."""
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    return {
        "jaxce": _jaxce(targets),
        "jaxce_autodiff": _jaxce(targets, custom_vjp=False),
        "optax": _optax(targets),
        "jnp_autodiff": _textbook(targets),
    }


def bounds(targets: str) -> dict[str, Callable]:
    """The limits ``f(logits, target)``: read the inputs once and write a logits-size array
    (``bound_copy``), the same with one ``exp`` (``bound_exp``; both for the settings with a
    gradient); read the inputs once and write one float per row (``bound_read``, ``forward``:
    the cheapest row reduction, no transcendental, so no loss can beat it). With probability
    targets every limit reads the probabilities too, as any loss of them must.
    """
    if targets == "probs":
        return {
            "bound_copy": lambda x, q: x - q,
            "bound_exp": lambda x, q: jnp.exp(x) - q,
            # two plain reductions: a fused product would take XLA:CPU's slow path on long rows
            "bound_read": lambda x, q: jnp.max(x, axis=-1) + jnp.max(q, axis=-1),
        }
    return {
        "bound_copy": lambda x, y: x * 2,
        "bound_exp": lambda x, y: jnp.exp(x),
        "bound_read": lambda x, y: jnp.max(x, axis=-1),
    }


NAMES = (*losses("index"), *bounds("index"))


def warm_up_framework() -> None:
    """Initialises the CPU backend so the idle baseline includes it."""
    jnp.ones(8).block_until_ready()


def device_memory() -> tuple[float, float] | None:
    """(bytes in use, peak bytes in use) of the first device in MiB; None on CPU."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["bytes_in_use"] / 2**20, stats["peak_bytes_in_use"] / 2**20


def reset_device_peak() -> None:
    """JAX cannot reset the peak: the child compares it with the use before the call."""


def make_inputs(n: int, c: int, seed: int, targets: str = "index") -> tuple[jax.Array, jax.Array]:
    """float32 (N, C) logits and the target: (N,) int32 class indices or (N, C) probabilities."""
    kx, ky = jax.random.split(jax.random.key(seed))
    logits = jax.random.normal(kx, (n, c), jnp.float32)
    if targets == "probs":
        target = jax.nn.softmax(jax.random.normal(ky, (n, c), jnp.float32), axis=-1)
    else:
        target = jax.random.randint(ky, (n,), 0, c, jnp.int32)
    return jax.block_until_ready((logits, target))


def _build(name: str, setting: str, targets: str) -> tuple[Callable, tuple[int, ...]]:
    limits, loss_fns = bounds(targets), losses(targets)
    if name not in limits and name not in loss_fns:
        raise ValueError(f"variant must be one of {NAMES}, got {name!r}")
    if name in limits:
        op = limits[name]
        if setting == "in_step":
            return (lambda x, t, g: op(x, t)), (2,)  # g donated: its buffer gets the output
        return op, ()
    loss = loss_fns[name]
    if setting == "forward":
        return loss, ()
    vg = jax.value_and_grad(loss)
    if setting == "in_step":
        return (lambda x, t, g: vg(x, t)), (2,)  # g donated: its buffer gets the new gradient
    return vg, ()


SETTINGS = ("outside", "in_step", "forward")


@dataclass
class Prepared:
    """A compiled variant and the state its calls carry."""

    compiled: Callable
    args: list
    setting: str

    def call(self):
        """One call, blocked until done; returns its output (loss, (loss, grad) or the bound's)."""
        out = self.compiled(*self.args)
        if self.setting == "in_step":
            grad = out[1] if isinstance(out, tuple) else out
            self.args[2] = grad  # the next call donates this buffer again
        return jax.block_until_ready(out)


def prepare(
    name: str, setting: str, logits, target, targets: str = "index"
) -> tuple[Prepared, float, str]:
    """Compiles ``name`` for ``setting`` and ``targets``; returns it, compile seconds, a note."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {list(SETTINGS)}, got {setting!r}")
    fn, donate = _build(name, setting, targets)
    args = [logits, target]
    if setting == "in_step":
        args.append(jnp.zeros_like(logits))
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate, keep_unused=True).lower(*args).compile()
    compile_s = time.perf_counter() - start
    note = ""
    if donate and "input_output_alias" not in compiled.as_text():
        note = "donated gradient buffer was not aliased to the output"
    return Prepared(compiled, args, setting), compile_s, note


def hlo_text(name: str, setting: str, n: int, c: int, targets: str = "index") -> str:
    """Optimized HLO of a variant (for profiling passes over the logits)."""
    logits, target = make_inputs(n, c, 0, targets)
    return prepare(name, setting, logits, target, targets)[0].compiled.as_text()
