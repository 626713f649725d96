"""Cross-entropy losses with torch.nn.CrossEntropyLoss semantics (public namespace)."""

from jaxce._cross_entropy import cross_entropy
from jaxce._module import CrossEntropyLoss

__all__ = ["CrossEntropyLoss", "cross_entropy"]
