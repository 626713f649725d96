"""jaxce: torch.nn.CrossEntropyLoss semantics in JAX, with better numerics.

The public API is exactly what ``__all__`` lists (every loss is also in ``jaxce.loss``); every
other module is private.
"""

from importlib import metadata as _metadata

from jaxce import loss
from jaxce.loss import (
    CrossEntropyLoss,
    cross_entropy,
    linear_cross_entropy,
    mean_divisor,
    sharded_cross_entropy,
    torch_linear_cross_entropy,
)

try:
    __version__ = _metadata.version("jaxce")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "CrossEntropyLoss",
    "cross_entropy",
    "linear_cross_entropy",
    "loss",
    "mean_divisor",
    "sharded_cross_entropy",
    "torch_linear_cross_entropy",
]
