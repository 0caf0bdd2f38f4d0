"""adamjax drops into Flax unchanged: a Linen TrainState and an nnx.Optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen, nnx
from flax.training import train_state

import adamjax


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32) + 0.1
    return jnp.asarray(x), jnp.asarray(y)


def test_linen_train_state_takes_ten_adam_steps_like_optax():
    x, y = _data()
    model = linen.Dense(1)
    params = model.init(jax.random.key(0), x)

    def loss_fn(p):
        return jnp.mean((model.apply(p, x)[:, 0] - y) ** 2)

    @jax.jit
    def step(state):
        grads = jax.grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads)

    ours = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=adamjax.adam(0.05))
    theirs = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(0.05))
    loss0 = loss_fn(params)
    for _ in range(10):
        ours, theirs = step(ours), step(theirs)
    assert int(ours.step) == 10
    assert loss_fn(ours.params) < 0.7 * loss0
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(theirs.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _nnx_losses(tx):
    x, y = _data()
    model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def loss_fn(m):
        return jnp.mean((m(x)[:, 0] - y) ** 2)

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    return np.array([float(step(model, optimizer)) for _ in range(10)] + [float(loss_fn(model))])


def test_nnx_optimizer_takes_ten_adam_steps():
    ours = _nnx_losses(adamjax.adam(0.2))
    np.testing.assert_allclose(ours, _nnx_losses(optax.adam(0.2)), rtol=1e-5)
    assert ours[-1] < 0.5 * ours[0]
