"""Compiled training and evaluation on a device-resident dataset, sharded over a "data" mesh.

The whole dataset is put on the devices once (uint8 pixels; the training split replicated so any
device can gather any shuffled row, the test split sharded). An epoch is:

- `Trainer.epoch_order` (compiled): the epoch's shuffle, a permutation drawn on the device from
  ``(seed, epoch)`` alone, so a resumed run recomputes exactly the same order
  (`training._shuffle`: O(N), no sort);
- `Trainer.run_steps` (compiled once, whatever the range): steps ``[start_step, start_step +
  num_steps)`` of that epoch in one `lax.fori_loop`: gather the batch, scale the pixels to
  [0, 1], forward, loss, backward, Adam, record the step's loss. Running an epoch in one call or
  in several chunks gives bit-identical results (the checkpoint hook relies on it).

The batch dimension is sharded over the mesh's ``"data"`` axis and everything else is
replicated; one device is the one-device case. Every epoch has ``ceil(N / batch_size)`` steps:
like the PyTorch DataLoader of the tutorial, the last, partial batch is kept; it is padded to
the full batch and the padding is masked out of the loss, so its update is the mean over its
real examples only. That count follows from the step, so the step sums the loss and divides
by it: the loss and the gradients then cross the devices (and hosts) in one all-reduce, not a
second one for the divisor.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxce.loss
from training import _distributed
from training._config import LOSSES
from training._dataset import Dataset
from training._errors import ConfigError, check_choice, check_fraction, check_positive
from training._model import MLP, NUM_CLASSES, NUM_PIXELS
from training._shuffle import permutation

_DATA_STREAM = 1  # fold_in tag separating the data-order keys from the init keys


class TrainState(NamedTuple):
    """Everything a training step changes: a pytree of arrays (what a checkpoint saves).

    Attributes:
      params: the model's parameters, a nested dict of arrays (`nnx.split`'s state as a pure
        dict; `nnx.merge(graphdef, params)` rebuilds the model). Replicated.
      opt_state: the optax (Adam) state. Replicated.
      step_losses: float32 (steps_per_epoch,): the mean loss of each step of the current epoch
        so far (entries past the last step run are stale). Replicated.
    """

    params: Any
    opt_state: Any
    step_losses: jax.Array


class DeviceData(NamedTuple):
    """A `Dataset` on the devices.

    Attributes:
      train_images: uint8 (N, 784), replicated.
      train_labels: int32 (N,), replicated.
      test_images: uint8 (M', 784), M' = M rounded up to a multiple of the device count; sharded.
      test_labels: int32 (M',), sharded.
      test_mask: bool (M',): False on the padding rows; sharded.
    """

    train_images: jax.Array
    train_labels: jax.Array
    test_images: jax.Array
    test_labels: jax.Array
    test_mask: jax.Array


def compiler_options() -> dict[str, Any]:
    """XLA options for the compiled functions on the current backend (none off CPU).

    On CPU, ``xla_cpu_prefer_vector_width=512``: XLA emits 256-bit vectors by default (avoiding
    AVX-512 clock drops on old Intel parts); 512-bit ones make the Adam update, bound by its
    square roots and divisions, cheaper (an epoch ~8% faster on this project's 2-core AMD
    machine). CPUs without AVX-512 ignore it.

    XLA's other CPU defaults stay, the splitting of elementwise kernels over the intra-op
    threads (pass ``cpu-parallel-task-assigner``) included. Disabling it was once measured as
    faster; with jax 0.10.2 it makes the epoch 1.6-1.8x slower (Fashion-MNIST, batch 64: 0.11 s
    against 0.19 s; XLA's profile puts most of the difference in the first layer's forward
    product, 46 against 83 ms per epoch), and the benchmark's matrix products alone 1.5x slower.
    """
    if jax.default_backend() != "cpu":
        return {}
    return {"xla_cpu_prefer_vector_width": 512}


def make_loss(name: str, label_smoothing: float = 0.0) -> Callable[..., jax.Array]:
    """The loss ``f(logits (B, 10), labels (B,), mask (B,), *, reduction) -> scalar``.

    ``"jaxce"`` is `jaxce.loss.cross_entropy` with ``where=mask`` and ``label_smoothing``;
    ``"optax"`` is `optax.softmax_cross_entropy_with_integer_labels` (with smoothing,
    `optax.softmax_cross_entropy` against `optax.smooth_labels` of the one-hot labels, the
    same targets), masked and then averaged or summed. ``reduction`` is ``"mean"`` (over the
    unmasked rows) or ``"sum"``.

    Raises:
      ConfigError: an unknown ``name``, or ``label_smoothing`` outside [0, 1].
    """
    check_choice("loss", name, LOSSES)
    check_fraction("label_smoothing", label_smoothing)
    if name == "jaxce":
        return lambda logits, labels, mask, *, reduction: jaxce.loss.cross_entropy(
            logits, labels, where=mask, reduction=reduction, label_smoothing=label_smoothing
        )

    def per_example_optax(logits, labels):
        if not label_smoothing:
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        return optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, label_smoothing))

    def optax_loss(logits, labels, mask, *, reduction):
        per_example = per_example_optax(logits, labels)
        total = jnp.sum(jnp.where(mask, per_example, 0.0))
        return total / jnp.maximum(jnp.sum(mask), 1) if reduction == "mean" else total

    return optax_loss


def put_dataset(dataset: Dataset, mesh: jax.sharding.Mesh) -> DeviceData:
    """Copies a dataset's arrays to the mesh's devices (see `DeviceData` for the layout).

    Every process passes the same full dataset; each device receives only the rows its sharding
    gives it, so this works unchanged with several processes.
    """
    devices = mesh.devices.size
    pad = -len(dataset.test_labels) % devices
    test_images = np.pad(
        dataset.test_images.reshape(len(dataset.test_images), -1), ((0, pad), (0, 0))
    )
    host = {
        "train_images": (dataset.train_images.reshape(len(dataset.train_images), -1), False),
        "train_labels": (dataset.train_labels, False),
        "test_images": (test_images, True),
        "test_labels": (np.pad(dataset.test_labels, (0, pad)), True),
        "test_mask": (np.arange(len(test_images)) < len(dataset.test_labels), True),
    }
    arrays = {}
    for name, (array, sharded) in host.items():
        sharding = (
            _distributed.batch_sharded(mesh, array.ndim)
            if sharded
            else _distributed.replicated(mesh)
        )
        arrays[name] = jax.make_array_from_callback(array.shape, sharding, lambda i, a=array: a[i])
    return DeviceData(**arrays)


def check_memory(
    hidden: tuple[int, ...], batch_size: int, num_train: int, mesh: jax.sharding.Mesh
) -> None:
    """Refuses a model and batch that cannot fit a device's memory, before anything is allocated.

    The estimate counts, per device, the parameters four times (values, gradients, Adam's two
    moments), a batch's activations three times, and the replicated training split; it is
    meant to catch sizes off by orders of magnitude (``hidden=(10**9,)``), not to be tight.

    Raises:
      ConfigError: the estimate exceeds the device's memory (the host's, for CPU devices, which
        share it).
    """
    sizes = (NUM_PIXELS, *hidden, NUM_CLASSES)
    params = sum((n_in + 1) * n_out for n_in, n_out in itertools.pairwise(sizes))
    rows = -(-batch_size // mesh.devices.size)
    need = 4 * 4 * params + 3 * 4 * rows * sum(sizes) + num_train * (NUM_PIXELS + 4)
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    try:
        stats = local[0].memory_stats() if local else None
    except jax.errors.JaxRuntimeError:  # not every backend keeps statistics
        stats = None
    if stats and "bytes_limit" in stats:
        capacity, where = stats["bytes_limit"], f"one {local[0].device_kind}"
    else:  # CPU devices share the host's memory
        capacity = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        need *= max(1, len(local))
        where = "this host"
    if need > capacity:
        raise ConfigError(
            "{@hidden} {hidden} with {@batch_size} {batch} needs about {need:,.1f} GiB, more than "
            "the {capacity:,.1f} GiB of {where}; use fewer or narrower hidden layers, or a "
            "smaller batch",
            hidden=" ".join(map(str, hidden)),
            batch=batch_size,
            need=need / 2**30,
            capacity=capacity / 2**30,
            where=where,
        )


class Trainer:
    """The compiled functions that train and evaluate one model on one mesh.

    Args:
      hidden: the MLP's hidden widths.
      learning_rate: Adam's learning rate.
      batch_size: the global batch size; must be a multiple of the mesh's device count.
      num_train: examples in the training split (fixes the steps per epoch).
      loss: ``"jaxce"`` or ``"optax"`` (see `make_loss`).
      label_smoothing: the training loss' label smoothing; evaluation is unsmoothed.
      mesh: a 1-D mesh with axis ``"data"``; `training._distributed.make_mesh()` when None.

    Raises:
      ConfigError: a batch size that is not a positive multiple of the device count or is
        larger than the training split, an empty training split, a learning rate that is not
        positive and finite, bad hidden widths, or an unknown loss.
    """

    def __init__(
        self,
        *,
        hidden: tuple[int, ...],
        learning_rate: float,
        batch_size: int,
        num_train: int,
        loss: str = "jaxce",
        label_smoothing: float = 0.0,
        mesh: jax.sharding.Mesh | None = None,
    ):
        self.mesh = _distributed.make_mesh() if mesh is None else mesh
        if num_train < 1:
            raise ConfigError("the training split must not be empty, got {n} examples", n=num_train)
        _distributed.check_batch_size(
            batch_size,
            num_devices=self.mesh.devices.size,
            num_processes=jax.process_count(),
            num_train=num_train,
        )
        check_positive("learning_rate", learning_rate, float32=True)
        self.hidden = tuple(hidden)
        self.batch_size = batch_size
        self.num_train = num_train
        self.steps_per_epoch = math.ceil(num_train / batch_size)
        self.loss_fn = make_loss(loss, label_smoothing)
        self.eval_loss_fn = make_loss(loss)
        self.tx = optax.adam(learning_rate)
        self.graphdef, _ = nnx.split(nnx.eval_shape(lambda: MLP(self.hidden, rngs=nnx.Rngs(0))))
        check_memory(self.hidden, batch_size, num_train, self.mesh)
        self._replicated = _distributed.replicated(self.mesh)
        self._rows = _distributed.batch_sharded(self.mesh, 1)
        self._batch = _distributed.batch_sharded(self.mesh, 2)
        self._order_fn = jax.jit(self._epoch_order, out_shardings=self._replicated)
        self.run_steps = jax.jit(self._run_steps, donate_argnums=0, out_shardings=self._replicated)
        self.evaluate = jax.jit(self._evaluate, out_shardings=self._replicated)
        self._init_fn = jax.jit(self._init_state, out_shardings=self._replicated)

    # A seed is passed to the compiled functions as a uint32 array: a Python int is taken as
    # int32, and seeds from 2**31 to 2**32-1 (which the flag accepts) would overflow it. The
    # keys of seeds below 2**31 are the same either way.
    def init_state(self, seed: int) -> TrainState:
        """Fresh parameters (from ``seed``, 0 to 2**32-1), Adam state and loss record,
        replicated: every process computes the same state from ``seed``."""
        return self._init_fn(np.uint32(seed))

    def epoch_order(self, seed: int, epoch: int) -> jax.Array:
        """The example order of ``epoch`` (0-based) of the run seeded ``seed`` (0 to 2**32-1):
        int32 (steps_per_epoch * batch_size,), compiled by `compile`."""
        return self._order_fn(np.uint32(seed), np.int32(epoch))

    def _init_state(self, seed) -> TrainState:
        _, params = nnx.split(MLP(self.hidden, rngs=nnx.Rngs(jax.random.key(seed))))
        params = nnx.to_pure_dict(params)
        return TrainState(
            params, self.tx.init(params), jnp.zeros(self.steps_per_epoch, jnp.float32)
        )

    def compile(self, state: TrainState, data: DeviceData) -> float:
        """Compiles `epoch_order`, `run_steps` and `evaluate` ahead of time for these arguments.

        Afterwards they run compiled executables, so no later call compiles (arguments must
        keep these shapes, dtypes and shardings).

        Returns:
          The seconds spent tracing and compiling.
        """
        start = time.perf_counter()
        order = jax.ShapeDtypeStruct(
            (self.steps_per_epoch * self.batch_size,), jnp.int32, sharding=self._replicated
        )
        options = compiler_options()
        self._order_fn = self._order_fn.lower(np.uint32(0), np.int32(0)).compile(
            compiler_options=options
        )
        self.run_steps = self.run_steps.lower(state, data, order, 0, 0).compile(
            compiler_options=options
        )
        self.evaluate = self.evaluate.lower(state.params, data).compile(compiler_options=options)
        return time.perf_counter() - start

    def model(self, state: TrainState) -> MLP:
        """The `MLP` holding ``state``'s parameters."""
        return nnx.merge(self.graphdef, state.params)

    def _epoch_order(self, seed, epoch) -> jax.Array:
        """int32 (steps_per_epoch * batch_size,): the epoch's example order, padded by wrapping."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _DATA_STREAM), epoch)
        order = permutation(key, self.num_train)
        # The last batch is topped up with examples from the start of the order (masked out
        # of the loss); `resize` repeats the order if that needs more than one copy.
        return jnp.resize(order, self.steps_per_epoch * self.batch_size)

    def _run_steps(self, state: TrainState, data: DeviceData, order, start_step, num_steps):
        """Steps ``[start_step, start_step + num_steps)`` of the epoch whose order is ``order``."""
        batch = self.batch_size
        positions = jnp.arange(batch, dtype=jnp.int32)

        def loss_of(params, images, labels, mask, count):
            logits = nnx.merge(self.graphdef, params)(images)
            return self.loss_fn(logits, labels, mask, reduction="sum") / count

        def step(i, state: TrainState) -> TrainState:
            rows = jax.lax.dynamic_slice_in_dim(order, i * batch, batch)
            rows = jax.lax.with_sharding_constraint(rows, self._rows)
            images = data.train_images[rows].astype(jnp.float32) / 255.0
            images = jax.lax.with_sharding_constraint(images, self._batch)
            mask = jax.lax.with_sharding_constraint(
                i * batch + positions < self.num_train, self._rows
            )
            # The mean over the step's real rows, whose count follows from the step: summing the
            # mask instead would cost one more all-reduce per step across devices and hosts.
            # Dividing the loss, not each gradient, scales the (batch, 10) logits' gradient
            # instead of making one more pass over every parameter's.
            count = jnp.minimum(batch, self.num_train - i * batch).astype(jnp.float32)
            loss, grads = jax.value_and_grad(loss_of)(
                state.params, images, data.train_labels[rows], mask, count
            )
            updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return TrainState(params, opt_state, state.step_losses.at[i].set(loss))

        return jax.lax.fori_loop(start_step, start_step + num_steps, step, state)

    def _evaluate(self, params, data: DeviceData) -> tuple[jax.Array, jax.Array]:
        """Mean test loss and test accuracy (float32 scalars) over the real test examples."""
        images = data.test_images.astype(jnp.float32) / 255.0
        logits = nnx.merge(self.graphdef, params)(images)
        mask = data.test_mask
        count = jnp.sum(mask)
        total = self.eval_loss_fn(logits, data.test_labels, mask, reduction="sum")
        correct = jnp.sum((jnp.argmax(logits, -1) == data.test_labels) & mask)
        return total / count, correct / count

    def epoch_train_loss(self, state: TrainState) -> float:
        """Mean per-example training loss of a finished epoch (its steps weighted by size)."""
        losses = np.asarray(jax.device_get(state.step_losses), np.float64)
        sizes = np.full(self.steps_per_epoch, self.batch_size, np.float64)
        sizes[-1] = self.num_train - (self.steps_per_epoch - 1) * self.batch_size
        return float(losses @ sizes / self.num_train)
