"""experiments.models / tasks: output shapes, initial losses, penalties, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
