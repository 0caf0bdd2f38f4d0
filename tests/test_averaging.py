"""Temporal averaging (Sec. 7.2) against the NumPy transcription."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamjax
from tests import reference as ref


def test_temporal_average_matches_reference():
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        theta0 = rng.normal(size=4)
        grads = rng.normal(size=(60, 4)) + 0.5
        opt = adamjax.temporal_averaging(adamjax.adam(1e-2), decay=0.9)
        params = {"w": jnp.asarray(theta0)}
        state = opt.init(params)
        averages = []
        for g in grads:
            u, state = jax.jit(opt.update)({"w": jnp.asarray(g)}, state, params)
            params = adamjax.apply_updates(params, u)
            averages.append(np.asarray(adamjax.averaged_params(state)["w"]))
        thetas = ref.adam(theta0, grads, 1e-2)
        np.testing.assert_allclose(params["w"], thetas[-1], rtol=1e-12)
        np.testing.assert_allclose(
            np.stack(averages), ref.temporal_average(thetas, 0.9), rtol=1e-6
        )  # weight is kept in float32


def test_averaged_params_found_inside_nested_state_and_cast_like():
    opt = adamjax.chain(adamjax.temporal_averaging(adamjax.sgd(0.1), decay=0.5))
    params = {"w": jnp.ones(2, jnp.bfloat16)}
    state = opt.init(params)
    u, state = opt.update({"w": jnp.ones(2, jnp.bfloat16)}, state, params)
    avg = adamjax.averaged_params({"nested": state}, like=params)
    assert avg["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(avg["w"], np.float32), 0.9, rtol=1e-2)


def test_averaging_errors_are_clear():
    opt = adamjax.temporal_averaging(adamjax.sgd(0.1))
    with pytest.raises(ValueError, match="params"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)))
    with pytest.raises(ValueError, match="temporal_averaging"):
        adamjax.averaged_params(adamjax.adam(0.1).init(jnp.ones(2)))
