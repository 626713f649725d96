"""The PyTorch tutorial's MLP in Flax NNX: Flatten, Linear(784, 128), ReLU, Linear(128, 10)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from training._errors import check_hidden

NUM_PIXELS = 28 * 28
NUM_CLASSES = 10


class MLP(nnx.Module):
    """Flatten, then ``Linear -> ReLU`` per hidden size, then ``Linear`` to the 10 class logits.

    Initialisation is Flax's default (kernels LeCun-normal, biases zero), not torch's
    (kernels and biases uniform in +-1/sqrt(fan_in)). Both keep the activations' variance
    near 1 at these widths; the accuracies reported in the README are measured with Flax's.

    Args:
      hidden: hidden layer widths; ``(128,)`` is the tutorial's 784-128-10 network.
      rngs: the random streams for initialisation.
    """

    def __init__(self, hidden: tuple[int, ...] = (128,), *, rngs: nnx.Rngs):
        check_hidden(hidden)
        sizes = (NUM_PIXELS, *hidden, NUM_CLASSES)
        self.layers = nnx.List(
            [nnx.Linear(n_in, n_out, rngs=rngs) for n_in, n_out in itertools.pairwise(sizes)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for a batch.

        Args:
          x: (B, 28, 28) or (B, 784) floating images.

        Returns:
          (B, 10) logits in ``x``'s dtype.
        """
        x = jnp.reshape(x, (x.shape[0], -1))
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)
