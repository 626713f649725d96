"""Benchmarks, run by hand: ``python -m benchmarks.loss``, ``.linear`` and ``.train_epoch``.

Their speed and memory numbers (and targets) come only from these hand runs; no test times
anything. The test suite runs smoke tests of the loss benchmark's harness
(``tests/test_benchmarks.py``: a 64x16 problem, one repeat, the JSON schema, the ratio
arithmetic and the pass counter), so the benchmark code cannot rot between runs.
"""
