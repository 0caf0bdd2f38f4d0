"""adamjax aliases against Optax's where the definitions agree; documented differences."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamjax
from tests.helpers import gradient_sequence, random_tree, run

STEPS = 200


AGREE = [
    ("adam", adamjax.adam(1e-2), optax.adam(1e-2)),
    (
        "adam-eps_root",
        adamjax.adam(1e-3, b1=0.8, b2=0.99, eps=1e-7, eps_root=1e-9),
        optax.adam(1e-3, b1=0.8, b2=0.99, eps=1e-7, eps_root=1e-9),
    ),
    ("adamax", adamjax.adamax(0.002), optax.adamax(0.002)),
    (
        "adagrad-eps-in-root",
        adamjax.adagrad(0.1, eps=1e-7),
        optax.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-7),
    ),
    ("rmsprop-eps-in-root", adamjax.rmsprop(1e-3, 0.9, 1e-8), optax.rmsprop(1e-3, 0.9, 1e-8)),
    ("sgd", adamjax.sgd(0.05), optax.sgd(0.05)),
    ("sgd-momentum", adamjax.sgd(0.05, 0.9), optax.sgd(0.05, 0.9)),
    ("sgd-nesterov", adamjax.sgd(0.05, 0.9, True), optax.sgd(0.05, 0.9, nesterov=True)),
    ("adadelta", adamjax.adadelta(1.0, 0.95, 1e-6), optax.adadelta(1.0, rho=0.95, eps=1e-6)),
]


@pytest.mark.parametrize("name,ours,theirs", AGREE, ids=[a[0] for a in AGREE])
def test_matches_optax(name, ours, theirs):
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        params = random_tree(rng, np.float64)
        grads = gradient_sequence(rng, params, STEPS, np.float64)
        got = run(ours, params, grads, apply=adamjax.apply_updates)
        want = run(theirs, params, grads, apply=optax.apply_updates)
        chex.assert_trees_all_close(got, want, rtol=1e-9, atol=1e-11)


def test_rmsprop_eps_placement_differs_from_torch_style():
    """The paper's RMSProp puts eps inside the root; Optax's eps_in_sqrt=False (the PyTorch
    form) puts it outside. With a large eps the two take visibly different steps."""
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    g = {"w": jnp.array([1e-3, 2e-3, -1e-3])}
    ours = adamjax.rmsprop(0.1, eps=1e-4)
    outside = optax.rmsprop(0.1, eps=1e-4, eps_in_sqrt=False)
    inside = optax.rmsprop(0.1, eps=1e-4, eps_in_sqrt=True)
    u_ours, _ = ours.update(g, ours.init(params), params)
    u_in, _ = inside.update(g, inside.init(params), params)
    u_out, _ = outside.update(g, outside.init(params), params)
    np.testing.assert_allclose(u_ours["w"], u_in["w"], rtol=1e-6)
    # g / sqrt(0.1 g^2 + 1e-4) vs g / (sqrt(0.1 g^2) + 1e-4): different by far more than rounding.
    assert np.all(np.abs(np.asarray(u_ours["w"]) - np.asarray(u_out["w"])) > 1e-2 * 0.1)


def test_adagrad_optax_default_accumulator_differs():
    """Optax's adagrad starts the accumulator at 0.1; the paper (and adamjax) at 0."""
    params = {"w": jnp.ones(3)}
    g = {"w": jnp.array([0.1, 0.2, 0.3])}
    ours = adamjax.adagrad(1.0, eps=1e-7)
    theirs = optax.adagrad(1.0, eps=1e-7)  # initial_accumulator_value=0.1
    u1, _ = ours.update(g, ours.init(params), params)
    u2, _ = theirs.update(g, theirs.init(params), params)
    # ours: -g/|g| = -1 (first step); optax: -g/sqrt(0.1 + g^2)
    np.testing.assert_allclose(u1["w"], -np.ones(3), rtol=1e-5)
    np.testing.assert_allclose(u2["w"], -g["w"] / np.sqrt(0.1 + g["w"] ** 2), rtol=1e-5)
