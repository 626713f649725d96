"""PyTorch variants of the loss benchmark.

- ``torch_eager`` / ``torch_compile`` (setting ``outside``): ``loss = F.cross_entropy(logits,
  labels)`` (plain or under ``torch.compile``), then ``torch.autograd.grad(loss, logits)``, which
  returns a new gradient tensor every call.
- ``torch_eager_out`` (setting ``in_step``): the very ATen kernels autograd runs for that call
  (``_log_softmax``, ``nll_loss_forward``, ``nll_loss_backward``,
  ``_log_softmax_backward_data``), each writing into a buffer allocated once. Torch has no
  in-program buffer reuse on CPU (its allocator hands large blocks back to the OS), so this is the
  analogue of XLA reusing the gradient buffer inside a training step: eager kernels, no
  allocation, no page faults.
- ``torch_eager`` / ``torch_compile`` (setting ``forward``): ``F.cross_entropy(logits, labels)``
  (plain or under ``torch.compile``) under ``torch.no_grad()`` on logits that do not require a
  gradient, as in evaluation: the loss value only.

Targets (see ``benchmarks._jax_variants``): ``index`` calls ``F.cross_entropy(logits, labels)``,
``smoothed`` adds ``label_smoothing=SMOOTHING``, ``probs`` passes (N, C) probabilities. The
``out=`` kernels follow what autograd runs for each: with smoothing also the row sum of the
log-softmax and the uniform term added to its gradient; with probabilities the product with
the targets and ``-q / N`` as the log-softmax's gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from benchmarks._jax_variants import SMOOTHING

NAMES = ("torch_eager", "torch_compile", "torch_eager_out")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_aten = torch.ops.aten


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def device_memory() -> tuple[float, float] | None:
    """(bytes in use, peak since the last reset) on the GPU in MiB; None on CPU."""
    if DEVICE != "cuda":
        return None
    return torch.cuda.memory_allocated() / 2**20, torch.cuda.max_memory_allocated() / 2**20


def reset_device_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def warm_up_framework(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.ones(8).sum().item()


def make_inputs(
    n: int, c: int, seed: int, targets: str = "index"
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (N, C) logits and the target: (N,) int64 class indices or (N, C) probabilities."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen, dtype=torch.float32).to(DEVICE).requires_grad_()
    if targets == "probs":
        target = torch.randn(n, c, generator=gen, dtype=torch.float32).softmax(-1).to(DEVICE)
    else:
        target = torch.randint(0, c, (n,), generator=gen).to(DEVICE)
    _sync()
    return logits, target


def _loss_fn(targets: str) -> Callable:
    smoothing = SMOOTHING if targets == "smoothed" else 0.0
    return lambda logits, target: F.cross_entropy(logits, target, label_smoothing=smoothing)


@dataclass
class Autograd:
    """One call: forward, then the gradient as a new tensor."""

    loss_fn: Callable
    logits: torch.Tensor
    labels: torch.Tensor

    def call(self) -> torch.Tensor:
        loss = self.loss_fn(self.logits, self.labels)
        (grad,) = torch.autograd.grad(loss, self.logits)
        _sync()
        del grad
        return loss.detach()


@dataclass
class NoGrad:
    """One call: the loss alone, under ``torch.no_grad()``, of logits that need no gradient."""

    loss_fn: Callable
    logits: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        self.logits = self.logits.detach()

    def call(self) -> torch.Tensor:
        with torch.no_grad():
            loss = self.loss_fn(self.logits, self.labels)
        _sync()
        return loss


@dataclass
class OutBuffers:
    """One call of the ATen kernels behind F.cross_entropy's forward+backward, out= buffers."""

    logits: torch.Tensor
    labels: torch.Tensor
    targets: str = "index"
    bufs: list[torch.Tensor] = field(init=False)

    def __post_init__(self):
        self.logits = self.logits.detach()
        self.bufs = [torch.empty_like(self.logits) for _ in range(3)]
        self.rows = self.logits.new_empty(self.logits.shape[0])
        self.one = torch.ones((), dtype=self.logits.dtype, device=self.logits.device)

    def call(self) -> torch.Tensor:
        lsm, grad_lsm, grad = self.bufs
        x, t = self.logits, self.labels
        n, c = x.shape
        _aten._log_softmax.out(x, 1, False, out=lsm)
        if self.targets == "probs":  # -(lsm * q).sum() / N; its gradient w.r.t. lsm is -q / N
            torch.sum(torch.mul(lsm, t, out=grad_lsm), 1, out=self.rows)
            loss = -self.rows.sum() / n
            torch.mul(t, -1.0 / n, out=grad_lsm)
        else:
            eps = SMOOTHING if self.targets == "smoothed" else 0.0
            nll, total = _aten.nll_loss_forward(lsm, t, None, 1, -100)  # 1: mean
            _aten.nll_loss_backward.grad_input(
                self.one * (1 - eps), lsm, t, None, 1, -100, total, grad_input=grad_lsm
            )
            loss = nll
            if eps:  # (1 - eps) nll + eps / C * mean(-sum(lsm)), as torch composes it
                torch.sum(lsm, 1, out=self.rows)
                loss = (1 - eps) * nll - eps / c * self.rows.sum() / total
                grad_lsm.sub_(eps / (c * total))
        _aten._log_softmax_backward_data.out(grad_lsm, lsm, 1, x.dtype, out=grad)
        _sync()
        return loss


def prepare(
    name: str, setting: str, logits, labels, targets: str = "index"
) -> Autograd | NoGrad | OutBuffers:
    """The call of ``name`` in ``setting``; torch.compile compiles lazily, on the first call."""
    if name not in NAMES:
        raise ValueError(f"variant must be one of {NAMES}, got {name!r}")
    if name == "torch_eager_out":
        return OutBuffers(logits, labels, targets)
    loss_fn = _loss_fn(targets)
    if name == "torch_compile":
        loss_fn = torch.compile(loss_fn)
    call = NoGrad if setting == "forward" else Autograd
    return call(loss_fn, logits, labels)
