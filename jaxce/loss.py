"""Cross-entropy losses with torch.nn.CrossEntropyLoss semantics (public namespace)."""

from jaxce._cross_entropy import cross_entropy
from jaxce._linear_cross_entropy import linear_cross_entropy
from jaxce._module import CrossEntropyLoss
from jaxce._sharded import sharded_cross_entropy

__all__ = [
    "CrossEntropyLoss",
    "cross_entropy",
    "linear_cross_entropy",
    "sharded_cross_entropy",
]
