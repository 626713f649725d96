"""Training parity: the 784-128-10 ReLU MLP in Flax NNX (jaxce loss) and in torch, step by step.

Both start from the same float32 weights (drawn once in numpy, torch's default init law
U(+-1/sqrt(fan_in))), see the same float32 batches in the same order (a seeded permutation per
epoch, last partial batch dropped) and take Adam steps (lr 1e-3, betas 0.9/0.999, eps 1e-8).
JAX runs with matmul precision "highest"; torch with TF32 off, float32 matmul precision
"highest" and one thread (deterministic, and fast on a shared 2-core machine).

Which Adam on the JAX side. torch computes the bias corrections 1 - beta^t in float64 (Python
floats). optax.adam computes them in float32 from float32(0.999) = 0.99900001287, so at t = 1
its 1 - beta2^t is off by 1.3e-5 relative (cancellation), about 100x float32's epsilon; Adam
turns that into a systematic update difference that has nothing to do with the loss. The
parity run therefore uses optax's Adam with the corrections computed as -expm1(t * log(beta))
(accurate to a few float32 ulp), and also runs optax.adam unchanged and reports its curve
separately (not a pass/fail criterion).

Tolerance, derived. The two runs are the same algorithm in float32; each differs from the exact
(float64) trajectory only by rounding, and Adam carries every rounding difference forward
(its update is scale-free, so a perturbation of a near-zero gradient moves a weight by O(lr)).
We measure that growth instead of guessing it: torch is also run in float64 from the same
weights and batches, and E_k = max_{j<=k} |L32_torch(j) - L64_torch(j)| is the largest loss
error float32 rounding has produced in torch by step k (a running max, because a parameter
perturbation shows up in later losses with either sign). By the triangle inequality,
|L_jax - L_torch| <= |L_jax - L64| + |L_torch - L64|, and with both float32 pipelines making
rounding errors of the same size that is <= 2 E_k; a factor 2 on top allows for the two error
sequences peaking at different steps. Step k passes when

    |L_jax(k) - L_torch(k)| <= 4 * E_k + 4 * ulp32(L_torch(k)),

the second term being the resolution of a float32 loss (before any step both losses come from
the same weights). Measured on mnist-mini (seeds 0-3, 1000 steps), max_k |L_jax - L_torch| / E_k
stayed below 2.2. Two effects are not rounding-sized and need the two sections below: without
them `--batch-size 4000 --steps 60` failed 38 of 64 checks (all 4 tensors, JAX's w1 1.1e-3 from
float64, torch's 7.5e-8) and `--batch-size 8000 --steps 100` its 4 tensors.

The two, ReLU decisions shared between the runs and Adam's per-element allowance, are
``parity._train_rounding``'s.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from tqdm import tqdm

from jaxce.loss import cross_entropy
from parity._env import environment
from parity._train_report import ADAM_NOTE, DERIVATION, summary_line, write_reports
from parity._train_rounding import AdamAllowance, gradient_scale, shared_relu
from parity._usage import UsageError
from training._idx import load_idx_dir
from training._model import MLP

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
SIZES = (784, 128, 10)
NAMES = ("w1", "b1", "w2", "b2")  # torch's layout: w (out, in)


class Setup(NamedTuple):
    images: np.ndarray  # float32 (N, 784) in [0, 1]
    labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    init: dict  # NAMES -> float32 arrays, torch layout
    steps: int
    batch_size: int
    seed: int
    data_warnings: list

    def batches(self):
        """Each step's indices: a seeded permutation per epoch, the last partial batch dropped."""
        rng = np.random.default_rng(self.seed + 1)
        per_epoch, size = len(self.labels) // self.batch_size, self.batch_size
        step = 0
        while step < self.steps:
            perm = rng.permutation(len(self.labels))
            for i in range(min(per_epoch, self.steps - step)):
                yield perm[i * size : (i + 1) * size]
            step += per_epoch


class Run(NamedTuple):
    losses: np.ndarray  # float64 (steps,), the loss of each step before its update
    params: dict  # NAMES -> float64 arrays, torch layout
    test_accuracy: float
    seconds: float
    relu: np.ndarray | None = None  # JAX: its ReLU decisions z > 0, (steps, B, 128/8) packed bits
    relu_adopted: int = 0  # torch: decisions taken from JAX (own |z| within the float32 band)
    relu_refused: int = 0  # torch: JAX's decisions outside the band, not taken
    grads0: dict | None = None  # torch: the first step's gradients (NAMES -> float64 arrays)
    allowance: dict | None = None  # float64 reference: AdamAllowance.total per tensor
    rounding_ratio: float | None = None  # float64 reference: c0 of AdamAllowance


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def load_setup(config) -> Setup:
    """The data and initial weights of a run; bad data or sizes raise UsageError (one line)."""
    try:
        return make_setup(
            config.data_dir, steps=config.steps, batch_size=config.batch_size, seed=config.seed
        )
    except (ValueError, OSError) as err:  # the data loader's errors name the file and the fix
        render = getattr(err, "render", None)
        raise UsageError(render(_flag) if render else str(err)) from None


def make_setup(data_dir, *, steps: int, batch_size: int, seed: int) -> Setup:
    """Loads the IDX data and draws the initial weights; the batch order is ``Setup.batches``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_idx_dir(data_dir)
    if len(ds.train_labels) < batch_size:
        raise ValueError(
            f"--batch-size {batch_size} exceeds the {len(ds.train_labels)} "
            f"training images in {data_dir}; pass a smaller one."
        )
    rng = np.random.default_rng(seed)
    init = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(SIZES)):
        bound = 1.0 / math.sqrt(fan_in)
        init[f"w{i + 1}"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        init[f"b{i + 1}"] = rng.uniform(-bound, bound, fan_out).astype(np.float32)

    def pixels(images):
        return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)

    return Setup(
        pixels(ds.train_images),
        ds.train_labels.astype(np.int64),
        pixels(ds.test_images),
        ds.test_labels.astype(np.int64),
        init,
        steps,
        batch_size,
        seed,
        # what differs, not training's remedy (strict_checksums: parity train has no such flag)
        [getattr(w.message, "finding", str(w.message)) for w in caught],
    )


def adam_accurate_bias(learning_rate: float) -> optax.GradientTransformation:
    """optax.adam with 1 - beta^t computed as -expm1(t log beta): a few ulp, like torch's."""
    (b1, b2), log_b1, log_b2 = BETAS, math.log(BETAS[0]), math.log(BETAS[1])

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return (jnp.zeros([], jnp.int32), zeros, zeros)

    def update_fn(grads, state, params=None):
        count, mu, nu = state
        count = count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, grads)
        t = count.astype(jnp.float32)
        c1, c2 = -jnp.expm1(t * log_b1), -jnp.expm1(t * log_b2)
        updates = jax.tree.map(
            lambda m, v: -learning_rate * (m / c1) / (jnp.sqrt(v / c2) + EPS), mu, nu
        )
        return updates, (count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def run_flax(setup: Setup, tx: optax.GradientTransformation, *, label: str, progress: bool) -> Run:
    """Trains training._model.MLP((128,)) with the jaxce loss; one compiled step per batch."""
    start = time.perf_counter()
    model = MLP((128,), rngs=nnx.Rngs(0))
    for i, layer in enumerate(model.layers):
        layer.kernel[...] = jnp.asarray(setup.init[f"w{i + 1}"].T)
        layer.bias[...] = jnp.asarray(setup.init[f"b{i + 1}"])
    graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))

    @jax.jit
    def step(state, x, y):
        model, opt = nnx.merge(graphdef, state)
        # The hidden ReLU's decisions: the same expression as the model's first layer in the
        # same program (XLA computes it once). Were they ever not the ones the gradient used,
        # torch would follow wrong ones and the run would fail, never pass wrongly.
        relu = jnp.packbits(model.layers[0](x) > 0, axis=-1)
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
        opt.update(model, grads)
        return nnx.state((model, opt)), loss, relu

    losses, relus = [], []
    for b in tqdm(
        setup.batches(), desc=label, total=setup.steps, disable=not progress, leave=False
    ):
        state, loss, relu = step(state, setup.images[b], setup.labels[b].astype(np.int32))
        losses.append(loss)
        relus.append(relu)
    model, _ = nnx.merge(graphdef, state)
    logits = jax.jit(lambda m, x: m(x))(model, setup.test_images)
    params = {}
    for i, layer in enumerate(model.layers):
        params[f"w{i + 1}"] = np.asarray(layer.kernel[...], np.float64).T
        params[f"b{i + 1}"] = np.asarray(layer.bias[...], np.float64)
    accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == setup.test_labels))
    return Run(
        np.asarray(jax.device_get(losses), np.float64),
        params,
        accuracy,
        time.perf_counter() - start,
        relu=np.stack(jax.device_get(relus)),
    )


def run_torch(
    setup: Setup,
    dtype: torch.dtype,
    *,
    label: str,
    progress: bool,
    relu_from: np.ndarray | None = None,
    rounding_from: Run | None = None,
) -> Run:
    """The same network and steps in torch (nn.Linear, F.cross_entropy, torch.optim.Adam).

    The ReLU is where(mask, z, 0) (relu's values and gradient for mask = z > 0); with
    ``relu_from`` (a JAX run's packed decisions) the mask is ``shared_relu``'s. With
    ``rounding_from`` (the float32 torch run; this one float64) the run also accumulates the
    ``AdamAllowance`` of every parameter element.
    """
    start = time.perf_counter()
    layers = [torch.nn.Linear(i, o, dtype=dtype) for i, o in itertools.pairwise(SIZES)]
    net = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1])
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer.weight.copy_(torch.from_numpy(setup.init[f"w{i + 1}"]).to(dtype))
            layer.bias.copy_(torch.from_numpy(setup.init[f"b{i + 1}"]).to(dtype))
    opt = torch.optim.Adam(net.parameters(), lr=LR, betas=BETAS, eps=EPS)
    images = torch.from_numpy(setup.images).to(dtype)  # float32 -> float64 is exact
    labels = torch.from_numpy(setup.labels)
    losses, adopted, refused, grads0, allowance = [], 0, 0, None, None
    for k, b in enumerate(
        tqdm(setup.batches(), desc=label, total=setup.steps, disable=not progress, leave=False)
    ):
        idx = torch.from_numpy(b)
        x = images[idx]
        z = layers[0](x)
        theirs = None
        if relu_from is not None:
            bits = np.unpackbits(relu_from[k], axis=-1, count=SIZES[1])
            theirs = torch.from_numpy(bits.astype(bool))
        mask, a, r = shared_relu(z, x, layers[0], theirs)
        adopted, refused = adopted + a, refused + r
        h = torch.where(mask, z, torch.zeros((), dtype=dtype))
        logits = layers[1](h)
        loss = torch.nn.functional.cross_entropy(logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        grads = dict(zip(NAMES, net.parameters(), strict=True))
        if k == 0:
            grads0 = {n: g.grad.detach().to(torch.float64).numpy().copy() for n, g in grads.items()}
        if rounding_from is not None:
            scale = gradient_scale(x, mask, logits, labels[idx], layers)
            if allowance is None:
                ratio = AdamAllowance.first_step_ratio(rounding_from.grads0, grads0, scale)
                allowance = AdamAllowance(ratio, lr=LR, betas=BETAS, eps=EPS)
        opt.step()
        if allowance is not None:
            state = {n: opt.state[w] for n, w in grads.items()}
            moments = {
                n: (st["exp_avg"].numpy(), st["exp_avg_sq"].numpy()) for n, st in state.items()
            }
            allowance.add(k + 1, scale, moments)
        losses.append(loss.item())
    with torch.no_grad():
        pred = net(torch.from_numpy(setup.test_images).to(dtype)).argmax(-1).numpy()
    params = {}
    for i, layer in enumerate(layers):
        params[f"w{i + 1}"] = layer.weight.detach().to(torch.float64).numpy()
        params[f"b{i + 1}"] = layer.bias.detach().to(torch.float64).numpy()
    return Run(
        np.asarray(losses),
        params,
        float(np.mean(pred == setup.test_labels)),
        time.perf_counter() - start,
        relu_adopted=adopted,
        relu_refused=refused,
        grads0=grads0,
        allowance=None if allowance is None else allowance.total,
        rounding_ratio=None if allowance is None else allowance.c0,
    )


def ulp32(x) -> np.ndarray:
    """The spacing of float32 numbers at |x|."""
    return np.spacing(np.abs(np.asarray(x, np.float32))).astype(np.float64)


def step_tolerance(torch32: Run, torch64: Run) -> np.ndarray:
    """4 * E_k + 4 * ulp32(L_torch(k)); see the module docstring."""
    envelope = np.maximum.accumulate(np.abs(torch32.losses - torch64.losses))
    return 4.0 * envelope + 4.0 * ulp32(torch32.losses)


def param_check(jax_run: Run, torch32: Run, torch64: Run) -> dict:
    """Per tensor: |jax - torch| against its per-element tolerance, and the float64 errors.

    Element e passes when |P_jax - P_torch| <= 4 max |P_torch - P64| + 4 ulp32(max |P_torch|)
    + 2 allowance_e (``AdamAllowance``, once for each float32 run); "tolerance" is the one of
    the element with the largest ratio |P_jax - P_torch| / tolerance.
    """
    out = {}
    for name in NAMES:
        j, t, t64 = jax_run.params[name], torch32.params[name], torch64.params[name]
        base = 4.0 * float(np.max(np.abs(t - t64))) + 4.0 * float(ulp32(np.max(np.abs(t))))
        allowance = np.zeros_like(t) if torch64.allowance is None else torch64.allowance[name]
        tol = base + 2.0 * allowance
        diff = np.abs(j - t)
        worst = np.unravel_index(np.argmax(diff / tol), diff.shape)
        out[name] = {
            "max_abs_jax_vs_torch": float(diff.max()),
            "tolerance": float(tol[worst]),
            "max_ratio": float(diff[worst] / tol[worst]),
            "ok": bool(np.all(diff <= tol)),
            "base_tolerance": base,
            "max_allowance": float(allowance.max()),
            "beyond_base": int(np.sum(diff > base)),
            "max_abs_jax_vs_float64": float(np.max(np.abs(j - t64))),
            "max_abs_torch_vs_float64": float(np.max(np.abs(t - t64))),
            "max_abs_value": float(np.max(np.abs(t))),
        }
    return out


def run_training_parity(config, setup: Setup) -> int:
    """``python -m parity train``: four runs, the verdict, the reports; 0 only if all pass."""
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.set_num_threads(1)
    kw = {"progress": config.progress}
    runs = {"jax": run_flax(setup, adam_accurate_bias(LR), label="flax+jaxce", **kw)}
    shared = {"relu_from": runs["jax"].relu, **kw}
    runs["torch"] = run_torch(setup, torch.float32, label="torch float32", **shared)
    runs["torch_float64"] = run_torch(
        setup, torch.float64, label="torch float64", rounding_from=runs["torch"], **shared
    )
    runs["jax_optax_adam"] = run_flax(setup, optax.adam(LR), label="flax optax.adam", **kw)
    runs["torch_float64_own_relu"] = run_torch(
        setup, torch.float64, label="torch float64, own ReLU", **kw
    )
    payload = build_training_payload(config, setup, runs)
    write_reports(payload, Path(config.out))
    print(f"reports: {Path(config.out) / 'report.json'}, report.md, report.html")
    print(summary_line(payload))
    return 0 if payload["summary"]["failed"] == 0 else 1


def build_training_payload(config, setup: Setup, runs: dict) -> dict:
    tol = step_tolerance(runs["torch"], runs["torch_float64"])
    diff = np.abs(runs["jax"].losses - runs["torch"].losses)
    ok = diff <= tol
    params = param_check(runs["jax"], runs["torch"], runs["torch_float64"])
    steps_passed, params_passed = int(ok.sum()), sum(p["ok"] for p in params.values())
    passed = steps_passed + params_passed
    failing = np.flatnonzero(~ok)
    own = runs["torch_float64_own_relu"]
    summary = {
        "steps": len(diff),
        "passed": passed,
        "failed": len(diff) + len(params) - passed,
        "steps_passed": steps_passed,
        "tensors": len(params),
        "tensors_passed": params_passed,
        "max_abs_loss_diff": float(diff.max()),
        "argmax_step": int(diff.argmax()),
        "max_ratio": float(np.max(diff / tol)),
        "first_failing_step": int(failing[0]) if failing.size else None,
        "max_torch32_vs_64": float(
            np.max(np.abs(runs["torch"].losses - runs["torch_float64"].losses))
        ),
        "max_abs_loss_diff_optax_adam": float(
            np.max(np.abs(runs["jax_optax_adam"].losses - runs["torch"].losses))
        ),
        "rounding_ratio": runs["torch_float64"].rounding_ratio,
        "relu_adopted": {k: runs[k].relu_adopted for k in ("torch", "torch_float64")},
        "relu_refused": {k: runs[k].relu_refused for k in ("torch", "torch_float64")},
        "max_abs_loss_diff_float64_own_relu": float(
            np.max(np.abs(runs["jax"].losses - own.losses))
        ),
        "max_abs_param_diff_float64_own_relu": {
            name: float(np.max(np.abs(runs["jax"].params[name] - own.params[name])))
            for name in NAMES
        },
        "test_accuracy": {k: r.test_accuracy for k, r in runs.items()},
        "seconds": {k: round(r.seconds, 2) for k, r in runs.items()},
        "train_examples": len(setup.labels),
        "test_examples": len(setup.test_labels),
    }
    curves = {k: r.losses.tolist() for k, r in runs.items()}
    return {
        "kind": "training-parity",
        "summary": summary,
        "config": config.as_json(),
        "environment": environment(),
        "parameters": params,
        "derivation": DERIVATION,
        "adam_note": ADAM_NOTE,
        "data_warnings": setup.data_warnings,
        "curves": {**curves, "tolerance": tol.tolist(), "step_ok": ok.tolist()},
    }
