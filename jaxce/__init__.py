"""jaxce: torch.nn.CrossEntropyLoss semantics in JAX, with better numerics.

The public API is exactly what ``__all__`` lists; every other module is private.
"""

from jaxce import loss
from jaxce.loss import CrossEntropyLoss, cross_entropy

__version__ = "0.1.0"

__all__ = ["CrossEntropyLoss", "cross_entropy", "loss"]
