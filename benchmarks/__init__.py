"""Hand-run benchmarks (``python -m benchmarks.loss``); not part of the test suite."""
