"""Training parity parts that need no data: the accurate Adam and the tolerance rule."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from parity._train import LR, Run, adam_accurate_bias, step_tolerance, ulp32


def test_accurate_bias_correction_matches_float64_adam_where_optax_adam_does_not():
    g = [jnp.asarray(np.float32([1e-3, -2e-6, 5.0]))]
    exact = (
        -LR
        * np.sign(np.float64(g[0]))
        * (np.abs(np.float64(g[0])) / (np.abs(np.float64(g[0])) + 1e-8))
    )
    ours, _ = adam_accurate_bias(LR).update(g, adam_accurate_bias(LR).init(g))
    shipped, _ = optax.adam(LR).update(g, optax.adam(LR).init(g))
    err_ours = np.max(np.abs(np.float64(ours[0]) - exact) / np.abs(exact))
    err_shipped = np.max(np.abs(np.float64(shipped[0]) - exact) / np.abs(exact))
    assert err_ours < 4 * 2.0**-23
    assert err_shipped > 1e-6  # 1 - float32(0.999) is off by 1.3e-5: halved by the sqrt


def test_step_tolerance_is_four_envelopes_plus_four_ulps():
    t32 = Run(np.array([2.0, 1.5, 1.0]), {}, 0.0, 0.0)
    t64 = Run(np.array([2.0 + 2.0**-20, 1.5, 1.0 - 2.0**-19]), {}, 0.0, 0.0)  # exact diffs
    tol = step_tolerance(t32, t64)
    expected = 4 * np.array([2.0**-20, 2.0**-20, 2.0**-19]) + 4 * ulp32(t32.losses)
    np.testing.assert_array_equal(tol, expected)
    assert ulp32(1.0) == 2.0**-23 and ulp32(-3.0) == 2.0**-22
