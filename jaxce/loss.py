"""Cross-entropy losses with torch.nn.CrossEntropyLoss semantics (public namespace).

- ``cross_entropy``: logits and class indices or probabilities, any class axis.
- ``CrossEntropyLoss``: the torch module, in torch's layout (classes on dim 1).
- ``linear_cross_entropy``: a final linear layer fused with the loss (Flax's kernel layout),
  in row chunks, never holding the logits.
- ``torch_linear_cross_entropy``: the same, with torch's ``F.linear_cross_entropy`` layout,
  names and defaults.
- ``mean_divisor``: the divisor of ``reduction="mean"``, to sum over micro-batches or devices
  and pass back as ``divisor=``.
- ``sharded_cross_entropy``: logits split over a mesh axis by class, inside ``jax.shard_map``.
"""

from jaxce._cross_entropy import cross_entropy
from jaxce._cross_entropy_loss import CrossEntropyLoss
from jaxce._linear_cross_entropy import linear_cross_entropy
from jaxce._linear_torch import torch_linear_cross_entropy
from jaxce._sharded_cross_entropy import sharded_cross_entropy
from jaxce._weighting import mean_divisor

__all__ = [
    "CrossEntropyLoss",
    "cross_entropy",
    "linear_cross_entropy",
    "mean_divisor",
    "sharded_cross_entropy",
    "torch_linear_cross_entropy",
]
