"""AdaDelta's step computes each output from ``d_t`` twice (the second behind an optimisation
barrier, so that XLA:CPU fuses it): the bits must be those of the formula written once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamjax
from adamjax.adadelta import AdadeltaState
from tests.helpers import assert_trees_equal, gradient_sequence, random_tree, run


def plain_scale_by_adadelta(rho, eps):
    """Zeiler's Algorithm 1 with ``d_t`` computed once and used by both of its consumers."""

    def init(params):
        zeros = lambda p: jnp.zeros_like(p)  # noqa: E731
        return AdadeltaState(jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(grads, state, params=None):
        del params
        eg = jax.tree.map(lambda g, e: rho * e + (1 - rho) * (g * g), grads, state.sq_grad)
        d = jax.tree.map(
            lambda g, e, ed: jnp.sqrt(ed + eps) / jnp.sqrt(e + eps) * g, grads, eg, state.sq_delta
        )
        ed = jax.tree.map(lambda dd, old: rho * old + (1 - rho) * (dd * dd), d, state.sq_delta)
        return d, AdadeltaState(eg, ed)

    return optax.GradientTransformation(init, update)


def _chain(scale, lr=0.5, wd=1e-4, rho=0.9, eps=1e-6):
    # adamjax.adadelta's chain: L2 into the gradient, AdaDelta's direction, the step size
    return optax.chain(adamjax.add_decayed_weights(wd), scale(rho, eps), adamjax.scale_by_lr(lr))


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(7)
    params = random_tree(rng)
    return params, gradient_sequence(rng, params, 30)


def test_the_step_has_the_bits_of_the_plain_formula_in_a_jitted_scan(problem):
    params, grads = problem
    got = run(adamjax.adadelta(0.5, 0.9, 1e-6, 1e-4), params, grads)
    want = run(_chain(plain_scale_by_adadelta), params, grads)
    assert not np.allclose(got["dense"]["w"][-1], params["dense"]["w"])  # it moved
    assert_trees_equal(got, want)


def test_the_state_has_the_bits_of_the_plain_formula_donated_and_wrapped(problem):
    # One jitted step with the buffers donated, as the experiments' epochs run it, under a
    # wrapper (skip_nonfinite) and inside a longer chain (clipping first).
    params, grads = problem
    wrap = lambda scale: adamjax.skip_nonfinite(  # noqa: E731
        optax.chain(optax.clip_by_global_norm(1.0), _chain(scale))
    )
    out = {}
    for name, opt in (
        ("new", wrap(adamjax.scale_by_adadelta)),
        ("plain", wrap(plain_scale_by_adadelta)),
    ):

        def step(p, s, g, opt=opt):
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        f = jax.jit(step, donate_argnums=(0, 1))
        p = jax.tree.map(jnp.array, params)
        s = opt.init(p)
        for t in range(12):
            p, s = f(p, s, jax.tree.map(lambda x, t=t: x[t], grads))
        out[name] = (p, s)
    assert_trees_equal(out["new"], out["plain"])


def test_a_vmapped_rho_grid_has_the_bits_of_the_plain_formula(problem):
    params, grads = problem
    rhos = jnp.asarray([0.5, 0.9, 0.95, 0.99])

    def final(scale):
        return jax.vmap(
            lambda r: jax.tree.map(lambda x: x[-1], run(_chain(scale, rho=r), params, grads))
        )(rhos)

    got, want = final(adamjax.scale_by_adadelta), final(plain_scale_by_adadelta)
    assert len(np.unique(np.asarray(got["dense"]["w"])[:, 0, 0])) == 4  # four different runs
    assert_trees_equal(got, want)
