"""Cross-framework parity reports for jaxce: loss, gradients and training against PyTorch.

``python -m parity [--quick] [--out DIR] [--impl MODULE:FUNCTION]`` checks a cross-entropy
against ``torch.nn.functional.cross_entropy`` and a float64 reference over a case matrix, and
jaxce's fused linear cross-entropy (``torch_linear_cross_entropy``, ``linear_cross_entropy``)
against ``torch.nn.functional.linear_cross_entropy`` on torch's reference and chunked paths;
``python -m parity train --data-dir DIR --steps N --out DIR`` trains the same MLP in Flax and
torch and compares the loss curves. Each writes report.json, report.md and report.html.
"""
