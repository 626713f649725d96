"""Training parity parts that need no data: the accurate Adam, the tolerance rules, the verdict."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import torch

from parity._train import BETAS, EPS, LR, Run, adam_accurate_bias, step_tolerance, ulp32
from parity._train_report import summary_line
from parity._train_rounding import U32, AdamAllowance, relu_band, shared_relu


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


def test_shared_relu_takes_jax_decisions_only_within_the_float32_band():
    layer = torch.nn.Linear(3, 2, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [0.25, 0.25, 0.25]]))
        layer.bias.copy_(torch.tensor([0.0, -0.5]))
    x = torch.tensor([[0.5, 0.5 + 1e-9, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    z = layer(x)  # [[-1e-9, -0.25], [0.5, 0.25]]: only z[0, 0] is within the band
    tau = relu_band(layer.weight, layer.bias, x, torch.tensor([0]), torch.tensor([0]))
    assert abs(z[0, 0].item()) < tau.item() < 1e-3 < abs(z[1, 0].item())
    theirs = torch.tensor([[True, False], [False, True]])  # differs at [0, 0] and [1, 0]
    mask, adopted, refused = shared_relu(z, x, layer, theirs)
    assert mask.tolist() == [[True, False], [True, True]]
    assert (adopted, refused) == (1, 1)
    assert shared_relu(z, x, layer, None)[0].tolist() == (z > 0).tolist()


def test_adam_allowance_is_lr_delta_over_eps_near_zero_gradients_and_zero_without_terms():
    """One step (t = 1) for three elements: gradient exactly 0 with no terms, ~0, and large."""
    g = np.array([0.0, 0.0, 1e-3])
    a = np.array([0.0, 1e-3, 1e-3])  # the rounding magnitude A of each gradient
    scale = {n: torch.from_numpy(a) for n in ("w1", "b1", "w2", "b2")}
    moments = {n: (0.1 * g, 0.001 * g * g) for n in scale}
    allowance = AdamAllowance(c0=0.5, lr=LR, betas=BETAS, eps=EPS)  # c = 4 max(c0, 1) = 4
    allowance.add(1, scale, moments)
    delta = 4 * U32 * a[1]
    e = allowance.total["w1"]
    assert e[0] == 0.0
    np.testing.assert_allclose(e[1], LR * delta / EPS, rtol=1e-12)  # ~0.024 lr: Adam's gain
    assert e[2] < 1e-3 * e[1]  # far from eps: a relative error, tiny
    huge = AdamAllowance(c0=1e6, lr=LR, betas=BETAS, eps=EPS)
    huge.add(1, scale, moments)
    assert huge.total["w1"][1] == 2 * LR  # never more than two whole steps


def test_summary_line_says_which_checks_failed():
    payload = {
        "summary": {
            "passed": 100,
            "failed": 4,
            "steps": 100,
            "steps_passed": 96,
            "tensors": 4,
            "tensors_passed": 4,
        }
    }
    assert summary_line(payload) == (
        "100 passed, 4 failed (96 of 100 training steps and 4 of 4 parameter tensors within "
        "the derived tolerance)"
    )
