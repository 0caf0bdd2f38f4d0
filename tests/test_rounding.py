"""Stochastic rounding of bfloat16/float16 parameters: unbiased, and no stall."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamjax
from adamjax.rounding import stochastic_round, stochastic_rounding


def _neighbours(x: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference: the two values of ``dtype`` around each x (lo <= x <= hi)."""
    near = np.asarray(jnp.asarray(x).astype(dtype).astype(jnp.float32), np.float64)
    up = np.asarray(
        jnp.nextafter(jnp.asarray(x).astype(dtype), jnp.asarray(np.inf, dtype)).astype(jnp.float32),
        np.float64,
    )
    down = np.asarray(
        jnp.nextafter(jnp.asarray(x).astype(dtype), jnp.asarray(-np.inf, dtype)).astype(
            jnp.float32
        ),
        np.float64,
    )
    lo = np.where(near <= x, near, down)
    hi = np.where(near >= x, near, up)
    return lo, hi


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_each_draw_is_a_neighbour_and_the_mean_is_x(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(512) * np.exp(rng.uniform(-4, 4, 512))).astype(np.float32)
    lo, hi = _neighbours(x.astype(np.float64), dtype)
    n = 4096
    draws = jax.vmap(lambda k: stochastic_round(jnp.asarray(x), k, dtype))(
        jax.random.split(jax.random.key(1), n)
    )
    assert draws.dtype == dtype
    d = np.asarray(draws.astype(jnp.float32), np.float64)
    assert np.all((d == lo) | (d == hi))
    # Unbiased: the mean of n draws is x within 5 standard errors; one draw's standard
    # deviation is sqrt(p (1-p)) (hi - lo) <= (hi - lo) / 2.
    gap = hi - lo
    err = np.abs(d.mean(0) - x)
    assert np.all(err <= 5 * gap / 2 / np.sqrt(n) + 1e-12), np.max(err / gap)
    # ... and round-to-nearest is not: its mean error is up to half a gap.
    rn = np.asarray(jnp.asarray(x).astype(dtype).astype(jnp.float32), np.float64)
    inexact = gap > 0
    assert np.max(np.abs(rn - x)[inexact] / gap[inexact]) > 0.4


def test_representable_and_nonfinite_values_are_kept():
    x = jnp.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, 3.0e38], jnp.float32)
    got = stochastic_round(x, jax.random.key(0))
    want = x.astype(jnp.bfloat16)
    g, w = (np.asarray(a[:7].astype(jnp.float32)) for a in (got, want))
    np.testing.assert_array_equal(g[:6], w[:6])
    assert np.isnan(g[6])
    assert jnp.isfinite(got[7]) or jnp.isinf(got[7])  # near bf16's max: a neighbour or inf


def _train(opt, steps=1000):
    params = {"w": jnp.ones(4096, jnp.bfloat16), "f": jnp.ones(3, jnp.float32)}
    grads = {"w": jnp.ones(4096, jnp.bfloat16), "f": jnp.ones(3, jnp.float32)}
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        u, s = opt.update(grads, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return params


def test_round_to_nearest_stalls_and_stochastic_rounding_does_not():
    # SGD with step 1e-4 on weights at 1.0 in bfloat16, whose spacing there is 2**-7:
    # each step is below half a spacing, so round-to-nearest never moves.
    stalled = _train(adamjax.sgd(1e-4))
    assert np.all(np.asarray(stalled["w"].astype(jnp.float32)) == 1.0)
    moved = _train(stochastic_rounding(adamjax.sgd(1e-4), 0))
    w = np.asarray(moved["w"].astype(jnp.float32), np.float64)
    # Expected 1 - 1000 * 1e-4 = 0.9. Each step's rounding error has mean 0 and standard
    # deviation <= 2**-8, so the mean of 4096 weights after 1000 steps is within
    # 5 * 2**-8 * sqrt(1000) / sqrt(4096) of 0.9.
    assert abs(w.mean() - 0.9) <= 5 * 2**-8 * np.sqrt(1000) / 64
    # float32 leaves are updated as by the plain optimizer.
    np.testing.assert_allclose(np.asarray(moved["f"]), 1 - 1000 * 1e-4, rtol=1e-4)


def test_updates_land_exactly_on_the_rounded_value_through_every_apply():
    opt = stochastic_rounding(adamjax.adam(1e-3), jax.random.key(7))
    params = {"w": jnp.linspace(-2, 2, 1000).astype(jnp.bfloat16)}
    grads = {"w": jnp.cos(jnp.arange(1000.0)).astype(jnp.bfloat16)}
    u, _ = opt.update(grads, opt.init(params), params)
    assert u["w"].dtype == jnp.bfloat16
    via_optax = optax.apply_updates(params, u)["w"]
    via_adamjax = adamjax.apply_updates(params, u)["w"]
    np.testing.assert_array_equal(np.asarray(via_optax), np.asarray(via_adamjax))
    new, old = (np.asarray(a.astype(jnp.float32), np.float64) for a in (via_optax, params["w"]))
    # Adam's first step is lr * sign(g): each weight moved to one of its two neighbours of
    # old - 1e-3 * sign(g), never further.
    target = old - 1e-3 * np.sign(np.asarray(grads["w"].astype(jnp.float32)))
    lo, hi = _neighbours(target, jnp.bfloat16)
    assert np.all((new == lo) | (new == hi))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_large_steps_within_a_factor_of_two_still_land_on_a_neighbour(dtype):
    """Sterbenz's lemma: when the new value is within a factor of two of the old one the
    difference is representable, so even a step of 60 % of the parameter lands exactly."""
    opt = stochastic_rounding(adamjax.sgd(1.0), jax.random.key(3))
    rng = np.random.default_rng(0)
    old = rng.uniform(0.5, 4.0, 2000) * rng.choice([-1.0, 1.0], 2000)
    params = {"w": jnp.asarray(old).astype(dtype)}
    old = np.asarray(params["w"].astype(jnp.float32), np.float64)
    frac = rng.uniform(-0.45, 0.45, 2000)  # new = old * (1 - frac): within a factor of two
    grads = {"w": jnp.asarray(old * frac, jnp.float32)}
    u, _ = opt.update(grads, opt.init(params), params)
    new = np.asarray(optax.apply_updates(params, u)["w"].astype(jnp.float32), np.float64)
    g32 = np.asarray(grads["w"])
    target = (old.astype(np.float32) - g32).astype(np.float64)  # theta + u, in float32
    lo, hi = _neighbours(target, dtype)
    assert np.all((new == lo) | (new == hi))


def test_key_advances_and_state_is_reproducible():
    opt = stochastic_rounding(adamjax.sgd(1e-4), 3)
    a = _train(opt, steps=20)["w"]
    b = _train(opt, steps=20)["w"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    st = opt.init({"w": jnp.ones(2)})
    _, st2 = opt.update({"w": jnp.ones(2)}, st, {"w": jnp.ones(2)})
    assert not np.array_equal(np.asarray(st.key), np.asarray(st2.key))


def test_update_without_params_is_an_error():
    opt = stochastic_rounding(adamjax.sgd(0.1), 0)
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)}))
