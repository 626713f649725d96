"""JAX variants of the loss benchmark: jaxce, plain autodiff, optax and the three limits.

Every variant is compiled ahead of time (``jit(...).lower(...).compile()``), so compile time is
measured apart from the calls. Settings (see ``benchmarks.loss`` for what each one measures):

- ``outside``: ``f(logits, labels) -> (loss, grad)``; the gradient is a new buffer every call.
- ``in_step``: ``step(logits, labels, g) -> (loss, g')`` with ``g`` donated, so the gradient is
  written into the previous call's buffer, as inside a training step.
- ``forward``: ``f(logits, labels) -> loss``, the jit of the loss alone (no gradient), as in
  evaluation; ``jnp_autodiff`` is then just its textbook formula.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from jaxce import loss as jaxce_loss


def _jaxce(logits, labels):
    return jaxce_loss.cross_entropy(logits, labels)


def _jaxce_autodiff(logits, labels):
    return jaxce_loss.cross_entropy(logits, labels, custom_vjp=False)


def _optax(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _jnp_reference(logits, labels):
    """The textbook formula, differentiated by autodiff (what a user writes by hand)."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jnp.mean(lse - picked)


LOSSES: dict[str, Callable] = {
    "jaxce": _jaxce,
    "jaxce_autodiff": _jaxce_autodiff,
    "optax": _optax,
    "jnp_autodiff": _jnp_reference,
}
# The limits: stream the logits once and write a same-size array; one transcendental pass
# (both for the settings with a gradient); read the logits once and write one float per row
# (``forward``: the cheapest row reduction, no transcendental, so no loss can beat it).
BOUNDS: dict[str, Callable] = {
    "bound_copy": lambda x: x * 2,
    "bound_exp": jnp.exp,
    "bound_read": lambda x: jnp.max(x, axis=-1),
}
NAMES = (*LOSSES, *BOUNDS)


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


def make_inputs(n: int, c: int, seed: int) -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(jax.random.key(seed))
    logits = jax.random.normal(kx, (n, c), jnp.float32)
    labels = jax.random.randint(ky, (n,), 0, c, jnp.int32)
    return jax.block_until_ready((logits, labels))


def _outside(name: str) -> tuple[Callable, tuple[int, ...]]:
    if name in BOUNDS:
        op = BOUNDS[name]
        return (lambda x, y: op(x)), ()
    return jax.value_and_grad(LOSSES[name]), ()


def _forward(name: str) -> tuple[Callable, tuple[int, ...]]:
    if name in BOUNDS:
        op = BOUNDS[name]
        return (lambda x, y: op(x)), ()
    return LOSSES[name], ()


def _in_step(name: str) -> tuple[Callable, tuple[int, ...]]:
    op = BOUNDS.get(name)
    vg = None if op else jax.value_and_grad(LOSSES[name])

    def step(x, y, g):
        del g  # donated: its buffer receives the new gradient (or the bound's output)
        return op(x) if op else vg(x, y)

    return step, (2,)


_BUILDERS = {"outside": _outside, "in_step": _in_step, "forward": _forward}


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


def prepare(name: str, setting: str, logits, labels) -> tuple[Prepared, float, str]:
    """Compiles ``name`` for ``setting``; returns it, compile seconds and a note."""
    if setting not in _BUILDERS:
        raise ValueError(f"setting must be one of {sorted(_BUILDERS)}, got {setting!r}")
    fn, donate = _BUILDERS[setting](name)
    args = [logits, labels]
    if setting == "in_step":
        args.append(jnp.zeros_like(logits))
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate, keep_unused=True).lower(*args).compile()
    compile_s = time.perf_counter() - start
    note = ""
    if donate and "input_output_alias" not in compiled.as_text():
        note = "donated gradient buffer was not aliased to the output"
    return Prepared(compiled, args, setting), compile_s, note


def hlo_text(name: str, setting: str, n: int, c: int) -> str:
    """Optimized HLO of a variant (for profiling passes over the logits)."""
    logits, labels = make_inputs(n, c, 0)
    return prepare(name, setting, logits, labels)[0].compiled.as_text()
