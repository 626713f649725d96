"""What float32 rounding can do to a training run beyond its size: the two effects training
parity must allow for (``parity._train``).

ReLU decisions, shared. A hidden pre-activation z within float32 rounding of 0 can fall on
ReLU's other side in one float32 pipeline than in another (or than in float64). That is no
small error: the example's whole contribution to that unit's gradient, delta * x / B (about
1e-5 at B = 4000), appears or not, and Adam, scale-free, turns it into steps of up to lr for the
weights whose gradient is otherwise smaller (pixels lit in few images: their gradient is 0
without it). On mnist-mini at --batch-size 4000, step 0 has one: example 6251, unit 74,
z = -1.89e-8 in float64, +1.82e-8 in JAX's float32, -1.16e-8 in torch's; JAX's w1 then ended
1.1e-3 from float64 and its losses 10x torch's error from it, while at --batch-size 2000 torch
is the one that flips. Which framework flips is luck, so no multiple of torch's error bounds it.
The runs therefore share these decisions: JAX records its ReLU's decisions (z > 0) at every
step, and both torch runs (float32 and float64) take JAX's decision wherever theirs differs and
their own |z| <= tau = 2 gamma_n (sum_p |W_cp x_p| + |b_c|), gamma_n = n u / (1 - n u), n = 785,
u = 2^-24: the bound on the float32 rounding error of the dot product and bias add, once per
float32 pipeline (it also covers the rounding-sized drift between the two runs' weights). A
decision outside that band is refused (torch keeps its own; the report counts both kinds), so a
wrong pre-activation cannot be excused: its effect shows in the losses. Torch's float32 and
float64 runs then differ only by rounding, and E_k measures that. A float64 run with its own
ReLU decisions is reported for information (the gap that sharing removes).

Parameters: Adam's amplification, per element. Adam's step lr m^ / (sqrt(v^) + eps) is
scale-free, so for an element whose gradient stays within about eps of 0 (unit 42's weights at
--batch-size 8000, gradient -4.7e-10 at step 0) an absolute gradient error Delta moves the
weight by about lr Delta / eps per step: there JAX's float32 gradient was 7e-11 off float64,
torch's 8e-12, and JAX's w1 ended 6.8e-6 from float64 against torch's worst 7.7e-7 anywhere.
The error of one element says nothing about another's, so a tensor-wide multiple of torch's
error cannot bound it either. Element e passes when

    |P_jax - P_torch| <= 4 * max |P_torch - P64| + 4 * ulp32(max |P_torch|) + 2 * allowance_e,

allowance_e (``AdamAllowance``) being a bound on how far Adam can carry float32 rounding of that
element's gradients, computed along the float64 run from its Adam state and a per-element
magnitude of the rounding (``gradient_scale``), once for each float32 run. It is about lr Delta
/ eps per step in Adam's eps regime, small elsewhere, and 0 for a weight whose gradient is
exactly 0 (a pixel no batch lights). Planted bugs on the JAX side still fail (the parameter
ratio |P_jax - P_torch| / tolerance in parentheses, --batch-size 4000, 20 steps): eps 1e-7
(1.9e4), beta2 0.99 (6.2e3), lr x 1.001 (2.2e3), b1 initialised to 0 (1.9e5), another batch
order (7.9e2), and a mean over B - 1 (2.3; its losses 306 times their tolerance).
"""

from __future__ import annotations

import math

import numpy as np
import torch

U32 = 2.0**-24  # float32's unit roundoff
GAMMA32 = 785 * U32 / (1 - 785 * U32)  # gamma_n of the 784-term dot product + bias


def gradient_scale(x, mask, logits, labels, layers) -> dict:
    """A, per gradient element: the magnitude its float32 rounding error is proportional to.

    The network run on magnitudes (a running error bound): zbar = |x| |W1|^T + |b1| bounds the
    terms of each pre-activation (hbar = zbar where the ReLU passes), so the rounding of h is
    O(u hbar) and that of the logits O(u lbar), lbar = hbar |W2|^T + |b2|; softmax turns the
    latter into O(u p (1 + lbar)), and p - y cancels for a confident example, so dL/dlogits =
    (p - y) / B is taken at the magnitude sbar = (p (1 + lbar) + y) / B. Back through the
    layers: dbar = (sbar |W2|) masked, and A = dbar^T |x|, sum dbar, sbar^T hbar, sum sbar.
    """
    with torch.no_grad():  # in float32: a magnitude needs no more, and it halves the time
        f32 = torch.float32
        (w1, b1), (w2, b2) = (
            (layer.weight.abs().to(f32), layer.bias.abs().to(f32)) for layer in layers
        )
        x, mask = x.abs().to(f32), mask.to(f32)
        hbar = (x @ w1.T + b1) * mask
        p = torch.softmax(logits.to(f32), -1)
        y = torch.nn.functional.one_hot(labels, logits.shape[-1]).to(f32)
        sbar = (p * (1 + hbar @ w2.T + b2) + y) / len(labels)
        dbar = (sbar @ w2) * mask
        out = {"w1": dbar.T @ x, "b1": dbar.sum(0), "w2": sbar.T @ hbar, "b2": sbar.sum(0)}
        return {name: a.to(torch.float64) for name, a in out.items()}


class AdamAllowance:
    """How far Adam can carry float32 rounding of each gradient element into the parameter.

    Fed the float64 reference's gradient scale A and Adam state (m, v) after every step. The
    rounding of a gradient element is taken as Delta = c u A, c = 4 max(1, c0), where c0 is the
    largest |g_torch32 - g_float64| / (u A) of the first step (both from the same weights and
    batch; measured, not guessed, and never from the run under test; the factor 4 as in the
    loss rule). Bounds on the errors of Adam's moments follow from their recursions,
    |dm| <= M = b1 M + (1 - b1) Delta and, by the triangle inequality of the weighted 2-norm
    s = sqrt(v / c2), |ds| <= sqrt(W / c2) with W = b2 W + (1 - b2) Delta^2, so one update
    lr m^ / (s + eps) moves by at most

        e = lr (M / c1 + r sqrt(W / c2)) / (max(s - sqrt(W / c2), 0) + eps),  r = |m^| / (s + eps),

    and never more than 2 lr R_t, R_t = max |m^| / s over all gradient histories (Cauchy-
    Schwarz). The allowance is the sum of e over the steps. It is about lr Delta / eps per step
    for an element whose gradient is within eps of 0 (Adam's scale-free step), negligible for
    the others, and 0 for an element whose every term is 0 (a pixel no batch lights).
    """

    def __init__(self, c0: float, *, lr: float, betas: tuple[float, float], eps: float):
        self.c0, self.c = c0, 4.0 * max(c0, 1.0)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m_err: dict = {}
        self.v_err: dict = {}
        self.total: dict = {}

    def add(self, t: int, scale: dict, moments: dict) -> None:
        (b1, b2), lr, eps = self.betas, self.lr, self.eps
        q = b1**2 / b2
        c1, c2 = 1 - b1**t, 1 - b2**t
        cap = 2 * lr * (1 - b1) / c1 * math.sqrt(c2 / (1 - b2) * (1 - q**t) / (1 - q))
        for name in scale:
            delta = self.c * U32 * scale[name].numpy()
            m, v = moments[name]
            self.m_err[name] = b1 * self.m_err.get(name, 0.0) + (1 - b1) * delta
            self.v_err[name] = b2 * self.v_err.get(name, 0.0) + (1 - b2) * delta * delta
            s, ds = np.sqrt(v / c2), np.sqrt(self.v_err[name] / c2)
            r = np.abs(m / c1) / (s + eps)
            e = lr * (self.m_err[name] / c1 + r * ds) / (np.maximum(s - ds, 0.0) + eps)
            self.total[name] = self.total.get(name, 0.0) + np.minimum(e, cap)

    @staticmethod
    def first_step_ratio(g32: dict, g64: dict, scale: dict) -> float:
        """c0: max over elements with A > 0 of |g32 - g64| / (u A)."""
        worst = 0.0
        for name in scale:
            a = scale[name].numpy()
            err = np.abs(g32[name] - g64[name])[a > 0] / (U32 * a[a > 0])
            worst = max(worst, float(err.max(initial=0.0)))
        return worst


def relu_band(weight, bias, x, rows, cols) -> torch.Tensor:
    """tau = 2 gamma_n (sum_p |W[c, p] x[r, p]| + |b[c]|) at each (row r, unit c), float64.

    Two float32 evaluations of the pre-activation z[r, c] (any summation order) differ by at
    most this much, so within it the sign of z is not a fact about the network.
    """
    w, b, x = weight.detach().double(), bias.detach().double(), x.detach().double()
    return 2 * GAMMA32 * ((w[cols] * x[rows]).abs().sum(-1) + b[cols].abs())


def shared_relu(z, x, layer, theirs):
    """The ReLU mask: z > 0, except JAX's decision where they differ and |z| <= relu_band."""
    own = z.detach() > 0
    if theirs is None:
        return own, 0, 0
    rows, cols = torch.nonzero(own != theirs, as_tuple=True)
    if rows.numel() == 0:
        return own, 0, 0
    near = z.detach()[rows, cols].double().abs() <= relu_band(
        layer.weight, layer.bias, x, rows, cols
    )
    own[rows[near], cols[near]] = theirs[rows[near], cols[near]]
    return own, int(near.sum()), int((~near).sum())
