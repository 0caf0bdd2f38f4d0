"""skip_nonfinite: a step with NaN/Inf gradients leaves params and state untouched."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamjax
from tests.helpers import assert_trees_equal


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_skip_nonfinite_leaves_params_and_state_untouched(bad):
    opt = adamjax.skip_nonfinite(adamjax.adam(0.1))
    params = {"a": jnp.ones(3), "b": jnp.zeros((2, 2))}
    good = {"a": jnp.array([0.1, -0.2, 0.3]), "b": jnp.ones((2, 2))}
    poisoned = {"a": jnp.array([0.1, bad, 0.3]), "b": jnp.ones((2, 2))}
    update = jax.jit(opt.update)
    state = opt.init(params)
    u, state = update(good, state, params)
    params = adamjax.apply_updates(params, u)
    before_params, before_state = params, state

    u, state = update(poisoned, state, params)
    params = adamjax.apply_updates(params, u)
    assert_trees_equal(params, before_params)
    assert_trees_equal(state.inner, before_state.inner)
    assert int(state.skipped) == 1 and not bool(state.last_finite)

    # The next finite step proceeds exactly as if the bad step never happened.
    u_skip, state = update(good, state, params)
    ref = adamjax.adam(0.1)
    ref_state = ref.init(before_params)
    _, ref_state = ref.update(good, ref_state, before_params)
    u_ref, _ = ref.update(good, ref_state, before_params)
    for x, y in zip(jax.tree.leaves(u_skip), jax.tree.leaves(u_ref), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    assert int(state.skipped) == 1 and bool(state.last_finite)


def test_skip_nonfinite_counts_under_vmap():
    opt = adamjax.skip_nonfinite(adamjax.sgd(0.1))
    grads = jnp.array([[1.0, 2.0], [jnp.nan, 1.0], [1.0, jnp.inf]])

    def one(g):
        p = jnp.zeros(2)
        u, s = opt.update(g, opt.init(p), p)
        return adamjax.apply_updates(p, u), s.skipped

    p, skipped = jax.vmap(one)(grads)
    np.testing.assert_array_equal(skipped, [0, 1, 1])
    np.testing.assert_allclose(p, [[-0.1, -0.2], [0.0, 0.0], [0.0, 0.0]])
