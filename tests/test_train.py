"""train.py and its loop: the README's command end to end, chunked epochs, the partial batch."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxce.loss
import train
from tests.conftest import SHARED_DATA, seeded_rng
from tests.tolerances import assert_close
from training import MLP, Config, Dataset, Trainer, make_loss, put_dataset
from training._run import chunk_bounds

ROOT = Path(__file__).resolve().parents[1]
MNIST_MINI = SHARED_DATA / "mnist-mini"
NUM_TRAIN = 300  # with batch 32: 10 steps, the last one of 12 examples
BATCH = 32


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    rng = seeded_rng("synthetic-mnist")
    return Dataset(
        name="mnist",
        source="synthetic",
        train_images=rng.integers(0, 256, (NUM_TRAIN, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, NUM_TRAIN).astype(np.int32),
        test_images=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, 10, 50).astype(np.int32),
    )


@pytest.fixture(scope="module")
def compiled(synthetic):
    """One trainer, compiled ahead of time as train.py does, shared by the module's tests."""
    trainer = Trainer(hidden=(16,), learning_rate=1e-2, batch_size=BATCH, num_train=NUM_TRAIN)
    data = put_dataset(synthetic, trainer.mesh)
    trainer.compile(trainer.init_state(0), data)
    return trainer, data


@pytest.fixture(scope="module")
def trainer(compiled):
    return compiled[0]


@pytest.fixture(scope="module")
def data(compiled):
    return compiled[1]


def run(trainer, data, bounds, *, seed=0, epoch=0):
    state = trainer.init_state(seed)
    order = trainer.epoch_order(seed, epoch)
    for start, num in bounds:
        state = trainer.run_steps(state, data, order, start, num)
    return jax.device_get(state)


def assert_trees_identical(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize(
    "bounds",
    [
        pytest.param([(0, 3), (3, 4), (7, 3)], id="three-chunks"),
        pytest.param([(0, 1)] + [(i, 1) for i in range(1, 10)], id="one-step-calls"),
    ],
)
def test_chunked_epoch_is_bit_identical_to_one_call(trainer, data, bounds):
    whole = run(trainer, data, [(0, trainer.steps_per_epoch)])
    assert_trees_identical(run(trainer, data, bounds), whole)


def test_same_seed_same_run_other_seed_other_run(trainer, data):
    first = run(trainer, data, [(0, 10)], seed=3, epoch=2)
    assert_trees_identical(run(trainer, data, [(0, 10)], seed=3, epoch=2), first)
    assert not np.array_equal(run(trainer, data, [(0, 10)], seed=4).step_losses, first.step_losses)
    order = [np.asarray(trainer.epoch_order(3, e)) for e in (0, 1)]
    assert sorted(order[0][:NUM_TRAIN]) == list(range(NUM_TRAIN))
    assert not np.array_equal(order[0], order[1])


def test_every_seed_the_flag_takes_runs(trainer, data):
    # Python ints reach the compiled functions as int32: 2**31 and above overflowed
    last = run(trainer, data, [(0, 2)], seed=2**32 - 1)
    assert np.isfinite(last.step_losses[:2]).all()
    order = np.asarray(trainer.epoch_order(2**32 - 1, 0))
    assert sorted(order[:NUM_TRAIN]) == list(range(NUM_TRAIN))
    # below 2**31, a uint32 seed gives the key of the int seed (the orders of earlier runs)
    for seed in (0, 7, 2**31 - 1):
        want = jax.random.key_data(jax.random.key(seed))
        np.testing.assert_array_equal(jax.random.key_data(jax.random.key(np.uint32(seed))), want)


@pytest.fixture(scope="module")
def last_step(trainer, data, synthetic):
    """The epoch's states before and after its last, partial step, and that step's 12 real
    examples (images in [0, 1], labels)."""
    assert trainer.steps_per_epoch == 10
    before_last = run(trainer, data, [(0, 9)])
    after = run(trainer, data, [(0, 10)])
    rows = np.asarray(trainer.epoch_order(0, 0))[9 * BATCH : NUM_TRAIN]
    images = jnp.asarray(synthetic.train_images[rows], jnp.float32) / 255.0
    return before_last, after, images, jnp.asarray(synthetic.train_labels[rows])


def test_last_partial_batch_is_the_mean_over_its_real_examples(trainer, last_step):
    before_last, after, images, labels = last_step
    logits = nnx.merge(trainer.graphdef, before_last.params)(images)
    expected = jaxce.loss.cross_entropy(logits, labels)
    assert_close(after.step_losses[9], expected, dtype="float32", quantity="loss")
    sizes = np.array([BATCH] * 9 + [NUM_TRAIN - 9 * BATCH])
    weighted = float(np.asarray(after.step_losses, np.float64) @ sizes / NUM_TRAIN)
    assert trainer.epoch_train_loss(after) == pytest.approx(weighted, rel=1e-12)


def test_last_partial_batch_updates_with_the_mean_gradient_of_its_real_examples(trainer, last_step):
    """The last step's Adam update uses the gradient of the mean loss over its 12 real rows."""
    before_last, after, images, labels = last_step

    def mean_loss(params):
        logits = nnx.merge(trainer.graphdef, params)(images)
        return jaxce.loss.cross_entropy(logits, labels)

    grads = jax.grad(mean_loss)(before_last.params)
    updates, _ = trainer.tx.update(grads, before_last.opt_state, before_last.params)
    expected = jax.tree.map(lambda p, u: p + u, before_last.params, updates)
    jax.tree.map(
        lambda got, want: assert_close(got, want, dtype="float32", quantity="grad"),
        after.params,
        expected,
    )


def test_evaluate_matches_the_model(trainer, data, synthetic):
    state = trainer.init_state(0)
    loss, accuracy = trainer.evaluate(state.params, data)
    logits = trainer.model(state)(jnp.asarray(synthetic.test_images, jnp.float32) / 255.0)
    labels = synthetic.test_labels
    assert_close(loss, jaxce.loss.cross_entropy(logits, labels), dtype="float32", quantity="loss")
    assert float(accuracy) == np.mean(np.argmax(logits, -1) == labels)


@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["plain", "smoothed"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_jaxce_and_optax_losses_agree(reduction, smoothing):
    rng = seeded_rng("losses", reduction)
    logits = jnp.asarray(rng.standard_normal((64, 10)) * 3, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
    mask = jnp.arange(64) < 40
    ours = make_loss("jaxce", smoothing)(logits, labels, mask, reduction=reduction)
    theirs = make_loss("optax", smoothing)(logits, labels, mask, reduction=reduction)
    assert_close(ours, theirs, dtype="float32", quantity="loss")
    plain = make_loss("jaxce")(logits, labels, mask, reduction=reduction)
    assert (float(ours) == float(plain)) == (smoothing == 0.0)


def test_label_smoothing_trains_with_it_and_evaluates_without():
    """The training loss is smoothed (a smoothed step differs), the test loss is not."""
    smooth = Trainer(
        hidden=(16,), learning_rate=1e-2, batch_size=BATCH, num_train=NUM_TRAIN, label_smoothing=0.2
    )
    logits = jnp.asarray(seeded_rng("eval-smoothing").standard_normal((6, 10)), jnp.float32)
    labels, mask = jnp.arange(6) % 10, jnp.ones(6, bool)
    assert_close(
        smooth.eval_loss_fn(logits, labels, mask, reduction="mean"),
        jaxce.loss.cross_entropy(logits, labels),
        dtype="float32",
        quantity="loss",
    )
    assert_close(
        smooth.loss_fn(logits, labels, mask, reduction="mean"),
        jaxce.loss.cross_entropy(logits, labels, label_smoothing=0.2),
        dtype="float32",
        quantity="loss",
    )


def test_chunk_bounds_cover_the_epoch_from_any_step():
    assert chunk_bounds(0, 10, 3) == [(0, 4), (4, 4), (8, 2)]
    assert chunk_bounds(5, 10, 3) == [(5, 3), (8, 2)]
    assert chunk_bounds(0, 10, 1) == [(0, 10)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"hidden": ()}, "hidden needs positive integer widths", id="no-hidden"),
        pytest.param({"hidden": (0,)}, "hidden needs positive integer widths", id="zero"),
    ],
)
def test_bad_model_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param(
            {"learning_rate": 0.0}, "learning_rate must be a positive, finite number", id="lr"
        ),
        pytest.param(
            {"learning_rate": float("inf")}, "learning_rate must be a positive", id="lr-inf"
        ),
        pytest.param({"loss": "mse"}, "loss must be one of jaxce, optax", id="loss"),
        pytest.param({"batch_size": 0}, "batch_size 0 does not split evenly", id="batch"),
        pytest.param(
            {"batch_size": 16},
            r"batch_size 16 is larger than the training split \(10 examples\).* at most "
            "batch_size 10",
            id="batch-larger-than-data",
        ),
        pytest.param({"num_train": 0}, "the training split must not be empty", id="no-data"),
        pytest.param(
            {"hidden": (10**9,)},
            r"hidden 1000000000 with batch_size 8 needs about [\d,.]+ GiB, more than",
            id="beyond-memory",
        ),
    ],
)
def test_bad_trainer_settings(kwargs, match):
    settings = {"hidden": (8,), "learning_rate": 1e-3, "batch_size": 8, "num_train": 10}
    with pytest.raises(ValueError, match=match):
        Trainer(**{**settings, **kwargs})


def test_defaults_are_the_tutorials():
    config = train.parse_args([])
    assert (config.epochs, config.batch_size, config.learning_rate, config.hidden) == (
        10,
        64,
        1e-3,
        (128,),
    )
    assert (config.loss, config.dataset, config.data_dir) == ("jaxce", "mnist", None)
    assert config.out is None  # a new runs/<timestamp>, made when the run starts
    assert train.parse_args(["--hidden", "256", "64"]).hidden == (256, 64)
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        Config(epochs=0)


def test_every_config_field_is_a_flag():
    parser = train.build_parser()
    flags = {a.dest: a.option_strings for a in parser._actions if a.dest != "help"}
    assert set(flags) == {f for f in vars(Config())}
    assert flags["learning_rate"] == ["--lr"] and flags["batch_size"] == ["--batch-size"]
    assert train.parse_args([]) == Config()  # the flags' defaults are Config's


@pytest.fixture
def in_repo_root(monkeypatch):
    """The working directory is the repository root, as for a user who follows the README."""
    monkeypatch.chdir(ROOT)


def created_run(output: str) -> Path:
    """The run directory a run reported ("run directory <path>; ...")."""
    line = next(x for x in output.splitlines() if x.startswith("run directory "))
    return Path(line.removeprefix("run directory ").split(";")[0])


def readme_metrics_fields() -> set[str]:
    """The top-level ``metrics.json`` fields the README lists (its names in backquotes)."""
    text = " ".join((ROOT / "README.md").read_text().split())
    listed = text.split("`metrics.json` (", 1)[1].split(") and `curves.png`", 1)[0]
    return set(re.findall(r"`(\w+)`", listed))


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_MINI.is_dir(), reason="needs ../shared/data/mnist-mini")
def test_readme_offline_command_from_the_repository_root(in_repo_root, capsys):
    # `make train ARGS="--data-dir ../shared/data/mnist-mini --epochs 2"`, exactly: a relative
    # --data-dir and the default --out, a new runs/<timestamp> under the repository root.
    train.main(["--data-dir", "../shared/data/mnist-mini", "--epochs", "2"])
    output = capsys.readouterr().out
    out = created_run(output)
    try:
        assert out.parent == ROOT / "runs"
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["train_loss"][1] < metrics["train_loss"][0]
        assert metrics["test_loss"][1] < metrics["test_loss"][0]
        assert metrics["final_test_accuracy"] >= 0.92  # 93.8% measured with seed 0 on CPU
        assert metrics["dataset"]["num_train"] == 8000
        assert metrics["steps_per_epoch"] == 125
        assert len(metrics["epoch_seconds"]) == 2
        assert metrics["compile_seconds"] > 0
        assert metrics["device"]["device_count"] == len(jax.devices())
        assert metrics["versions"]["jax"] == jax.__version__
        assert metrics["config"]["hidden"] == [128]
        assert metrics["config"]["out"] == str(out)
        assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert set(metrics) == readme_metrics_fields()
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
            "step_00000125",
            "step_00000125.commit.json",
            "step_00000250",
            "step_00000250.commit.json",
        ]
    finally:
        shutil.rmtree(out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--epochs", "0"], "--epochs must be at least 1", id="epochs"),
        pytest.param(["--resume", "--overwrite"], "pass one of them", id="resume-and-overwrite"),
    ],
)
def test_bad_flag_combinations_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
