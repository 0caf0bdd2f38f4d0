"""experiments.models / tasks: output shapes, initial losses, penalties, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.models import Dropout, keep_fraction, keep_mask
from experiments.tasks import make_task

X = jax.random.uniform(jax.random.PRNGKey(0), (8, 784))
Y = jnp.arange(8) % 10


@pytest.mark.parametrize("model", ["logreg", "mlp", "cnn"])
def test_classifier_shapes_and_initial_loss(model):
    task = make_task(model)
    params = task.init(jax.random.PRNGKey(0))
    logits = task.module.apply({"params": params}, X.reshape(8, 28, 28, 1) if model == "cnn" else X)
    assert logits.shape == (8, 10)
    loss = task.cost(params, X, Y, jax.random.PRNGKey(1), False)
    assert 1.0 < float(loss) < 4.0  # near ln(10) = 2.30 for a fresh classifier
    nll, correct = task.evaluate(params, X, Y)
    assert nll.shape == (8,) and set(np.unique(correct)) <= {0.0, 1.0}


def test_paper_layer_sizes():
    mlp = make_task("mlp").init(jax.random.PRNGKey(0))
    assert mlp["hidden0"]["kernel"].shape == (784, 1000) and mlp["hidden1"]["kernel"].shape == (
        1000,
        1000,
    )
    cnn = make_task("cnn").init(jax.random.PRNGKey(0))
    assert [cnn[f"conv{i}"]["kernel"].shape for i in range(3)] == [
        (5, 5, 1, 64),
        (5, 5, 64, 64),
        (5, 5, 64, 128),
    ]
    assert cnn["fc"]["kernel"].shape == (4 * 4 * 128, 1000)
    vae = make_task("vae").init(jax.random.PRNGKey(0))
    assert vae["enc_hidden"]["kernel"].shape == (784, 500) and vae["enc_mean"]["kernel"].shape == (
        500,
        50,
    )


def test_l2_penalty_counts_kernels_only():
    task = make_task("logreg", weight_decay=0.5)
    params = jax.tree.map(jnp.ones_like, task.init(jax.random.PRNGKey(0)))
    assert float(task.penalty(params)) == pytest.approx(0.5 * 0.5 * 784 * 10)
    plain = make_task("logreg")
    diff = task.cost(params, X, Y, None, False) - plain.cost(params, X, Y, None, False)
    assert float(diff) == pytest.approx(0.25 * 7840, rel=1e-5)


def test_dropout_only_in_training():
    task = make_task("mlp", dropout=0.5, input_dropout=0.2)
    params = task.init(jax.random.PRNGKey(0))
    a = task.cost(params, X, Y, jax.random.PRNGKey(1), True)
    b = task.cost(params, X, Y, jax.random.PRNGKey(2), True)
    c = task.cost(params, X, Y, jax.random.PRNGKey(1), False)
    d = task.cost(params, X, Y, jax.random.PRNGKey(2), False)
    assert float(a) != float(b) and float(c) == float(d)


def test_vae_negative_elbo():
    task = make_task("vae")
    params = task.init(jax.random.PRNGKey(0))
    loss = task.cost(params, X, None, jax.random.PRNGKey(1))
    # a fresh decoder outputs p ~ 0.5 per pixel: reconstruction ~ 784 ln 2 = 543 nats, KL >= 0
    assert 400 < float(loss) < 800
    per_example, _ = task.evaluate(params, X, None)
    assert per_example.shape == (8,)
    grads = jax.grad(task.cost)(params, X, None, jax.random.PRNGKey(1))
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "rate, bits, threshold",
    [(0.5, 1, 1), (0.25, 2, 3), (0.75, 2, 1), (0.2, 16, 52429), (0.1, 16, 58982)],
)
def test_keep_fraction_takes_the_fewest_bits_that_hold_the_rate(rate, bits, threshold):
    assert keep_fraction(rate) == (bits, threshold)
    assert abs(threshold / 2**bits - (1 - rate)) <= 2**-17  # exact or nearest on 16 bits


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.2])
def test_keep_mask_is_the_numpy_transcription_of_its_random_words(rate):
    shape = (37, 29)  # not a multiple of the fields per word
    key = jax.random.PRNGKey(7)
    bits, threshold = keep_fraction(rate)
    per_word = 32 // bits
    n = shape[0] * shape[1]
    words = np.asarray(jax.random.bits(key, (-(-n // per_word),), jnp.uint32)).astype(np.uint64)
    fields = [(int(w) >> (bits * j)) & (2**bits - 1) for w in words for j in range(per_word)]
    expected = (np.array(fields[:n]) < threshold).reshape(shape)
    np.testing.assert_array_equal(np.asarray(keep_mask(key, rate, shape)), expected)


@pytest.mark.parametrize("rate", [0.5, 0.2])
def test_keep_mask_units_are_bernoulli_and_uncorrelated(rate):
    n = 1_000_000
    m = np.asarray(keep_mask(jax.random.PRNGKey(3), rate, (n,)), np.float64)
    q = 1 - rate
    sigma = np.sqrt(q * (1 - q) / n)
    assert abs(m.mean() - q) < 5 * sigma + 3e-6
    for lag in (1, 2, 31, 32):  # neighbours in a word, and across words
        c = np.corrcoef(m[:-lag], m[lag:])[0, 1]
        assert abs(c) < 5 / np.sqrt(n), (lag, c)


def test_dropout_module_keeps_the_mean_and_zeroes_the_dropped_units():
    x = jnp.full((4000, 250), 3.0)
    layer = Dropout(0.2)
    y = np.asarray(layer.apply({}, x, rngs={"dropout": jax.random.PRNGKey(1)}))
    bits, threshold = keep_fraction(0.2)
    assert set(np.unique(y)) == {0.0, np.float32(3.0 * 2**bits / threshold)}
    assert abs(y.mean() - 3.0) < 5 * 3.0 * np.sqrt(0.2 / 0.8 / y.size)
    np.testing.assert_array_equal(Dropout(0.2, deterministic=True).apply({}, x), x)
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x), x)
