"""Numerics users rely on: dtypes, complex parameters, None leaves, the step counter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamjax
from tests import reference as ref
from tests.helpers import run_loop


def test_state_dtype_bfloat16_storage_float32_math():
    params = {"w": jnp.linspace(-1, 1, 64, dtype=jnp.float32)}
    rng = np.random.default_rng(1)
    grads = [{"w": jnp.asarray(rng.normal(size=64), jnp.float32)} for _ in range(50)]
    opt = adamjax.adam(1e-2, state_dtype=jnp.bfloat16)
    state = opt.init(params)
    assert state[0].mu["w"].dtype == jnp.bfloat16 and state[0].nu["w"].dtype == jnp.bfloat16
    u, _ = opt.update(grads[0], state, params)
    assert u["w"].dtype == jnp.float32  # math (and the update) in float32
    p16, _ = run_loop(opt, params, grads)
    p32, _ = run_loop(adamjax.adam(1e-2), params, grads)
    want = ref.adam(np.asarray(params["w"]), [np.asarray(g["w"]) for g in grads], 1e-2)[-1]
    np.testing.assert_allclose(p32["w"], want, atol=1e-5)
    # bfloat16 keeps 8 significant bits: each store of m or v rounds it by <= u = 2^-9
    # relative. A rounding of m decays with b1, so m carries the last ~1/sqrt(1 - b1^2)
    # roundings (random signs add in quadrature): 2.3 u; v (b2 = 0.999) keeps all T = 50 of
    # them, sqrt(T) u, halved by the square root: the step m_hat / sqrt(v_hat), at most
    # ~alpha here, is off by (2.3 + sqrt(T) / 2) u relative, 1.1%, with a random sign each
    # step. Over T steps: sigma = alpha * 1.1% * sqrt(T) = 8e-4; the largest of 64 entries
    # stays under 3 sigma. (Seen: 7e-4. Rounding that does not average out, e.g. the moment
    # arithmetic itself in bfloat16, grows like T instead of sqrt(T): 2.8e-3.)
    u, steps, alpha = 2.0**-9, 50, 1e-2
    sigma = alpha * (1 / np.sqrt(1 - 0.9**2) + np.sqrt(steps) / 2) * u * np.sqrt(steps)
    err = np.max(np.abs(np.asarray(p16["w"]) - want))
    assert 0 < err < 3 * sigma, (err, 3 * sigma)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params_math_in_float32_updates_in_gradient_dtype(dtype):
    params = {"w": jnp.full((8,), 1.0, dtype)}
    grads = {"w": jnp.full((8,), 0.25, dtype)}
    opt = adamjax.adam(1e-3)
    state = opt.init(params)
    assert state[0].mu["w"].dtype == jnp.float32  # default state: float32 math and storage
    u, state = opt.update(grads, state, params)
    assert u["w"].dtype == dtype  # Optax's contract: updates in the gradients' dtype
    # The first step is -alpha * g/(|g| + eps) computed in float32, rounded once to dtype.
    want = jnp.asarray(np.float32(-1e-3) * (np.float32(0.25) / np.float32(0.25 + 1e-8)), dtype)
    np.testing.assert_array_equal(np.asarray(u["w"], np.float32), np.float32(want))
    new = adamjax.apply_updates(params, u)
    assert new["w"].dtype == dtype


# A step of Adam whose float32 update is -(2^-9)(1 + 2^-12): just beyond half a bfloat16 ulp
# below 1.0 (the ulp there is 2^-8). Added in float32 and rounded once, 1.0 moves to 1 - 2^-8;
# rounded to bfloat16 first, the update becomes exactly -2^-9, 1 - 2^-9 is a tie and rounds to
# the even 1.0: the step is lost.
_LR_PAST_HALF_ULP = 2.0**-9 * (1 + 2.0**-12)


def _bf16(x):
    return float(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16))


def test_apply_gradients_rounds_low_precision_params_once():
    params = {"w": jnp.ones((4,), jnp.bfloat16)}
    grads = {"w": jnp.full((4,), 0.5, jnp.bfloat16)}
    opt = adamjax.adam(_LR_PAST_HALF_ULP, eps=0.0)
    exact = 1.0 - _LR_PAST_HALF_ULP  # float64: the first Adam step is -alpha * sign(g)
    assert _bf16(exact) == 1.0 - 2.0**-8  # one rounding
    assert _bf16(1.0 + _bf16(-_LR_PAST_HALF_ULP)) == 1.0  # two roundings: the step is lost
    state = opt.init(params)
    stepped, _ = jax.jit(adamjax.apply_gradients, static_argnums=0)(opt, grads, state, params)
    np.testing.assert_array_equal(np.asarray(stepped["w"], np.float64), _bf16(exact))
    # The two-call form rounds the update to the gradients' dtype first (Optax's contract).
    u, _ = jax.jit(opt.update)(grads, state, params)
    assert u["w"].dtype == jnp.bfloat16
    two_calls = adamjax.apply_updates(params, u)
    np.testing.assert_array_equal(np.asarray(two_calls["w"], np.float64), 1.0)


def test_apply_updates_rounds_once_for_bfloat16():
    p = jnp.asarray([1.0], jnp.bfloat16)
    u = jnp.asarray([0.00390625 * 0.6], jnp.float32)  # 0.6 of a bfloat16 ulp at 1.0 (2^-7 / 2)
    # Rounding u to bfloat16 first and adding in bfloat16 can differ from one float32 add.
    out = adamjax.apply_updates(p, u)
    assert out.dtype == jnp.bfloat16
    assert float(out[0]) == float(jnp.asarray(1.0 + 0.00390625 * 0.6, jnp.bfloat16))


def test_complex_parameters_use_squared_modulus():
    rng = np.random.default_rng(3)
    w0 = (rng.normal(size=5) + 1j * rng.normal(size=5)).astype(np.complex64)
    gs = [(rng.normal(size=5) + 1j * rng.normal(size=5)).astype(np.complex64) for _ in range(20)]
    opt = adamjax.adam(1e-2)
    state = opt.init({"w": jnp.asarray(w0)})
    assert state[0].nu["w"].dtype == jnp.float32 and state[0].mu["w"].dtype == jnp.complex64
    p, _ = run_loop(opt, {"w": jnp.asarray(w0)}, [{"w": jnp.asarray(g)} for g in gs])
    # NumPy transcription with |g|^2 = g * conj(g).
    theta, m, v = w0.astype(np.complex128), np.zeros(5, complex), np.zeros(5)
    for t, g in enumerate(gs, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * (g * np.conj(g)).real
        theta = theta - 1e-2 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(np.asarray(p["w"]), theta, atol=2e-5)


@pytest.mark.parametrize(
    "make",
    [
        adamjax.adam,
        adamjax.adamax,
        adamjax.adagrad,
        adamjax.rmsprop,
        adamjax.sgd,
        lambda lr: adamjax.sgd(lr, 0.9),
        adamjax.adadelta,
    ],
)
def test_none_leaves_and_empty_trees_pass_through(make):
    opt = make(0.1)
    params = {"a": jnp.ones(2), "frozen": None, "nested": {"b": jnp.ones(()), "c": None}}
    grads = {"a": jnp.ones(2), "frozen": None, "nested": {"b": jnp.ones(()), "c": None}}
    u, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    assert u["frozen"] is None and u["nested"]["c"] is None
    assert u["a"].shape == (2,)
    new = adamjax.apply_updates(params, u)
    assert new["frozen"] is None
    for empty in ({}, [], ()):
        u, _ = jax.jit(opt.update)(empty, opt.init(empty), empty)
        assert u == empty


def test_step_counter_saturates_instead_of_overflowing():
    params = {"w": jnp.ones(3)}
    opt = adamjax.adam(1e-3)
    state = opt.init(params)
    big = jnp.asarray(jnp.iinfo(jnp.int32).max - 1, jnp.int32)
    state = (state[0]._replace(count=big),) + tuple(state[1:])
    g = np.array([1.0, -2.0, 0.5])
    m = v = np.zeros(3)
    for _ in range(3):
        u, state = jax.jit(opt.update)({"w": jnp.asarray(g, jnp.float32)}, state, params)
        assert int(state[0].count) == jnp.iinfo(jnp.int32).max
        # At t = 2^31 - 1 both bias corrections are exactly 1 (0.9^t and 0.999^t underflow):
        # the step is Algorithm 1's with m_hat = m, v_hat = v. A counter that wrapped to
        # -2^31 would give b^t = inf, corrections of -inf and a zero (finite!) step instead.
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
        want = -1e-3 * m / (np.sqrt(v) + 1e-8)
        np.testing.assert_allclose(np.asarray(u["w"]), want, rtol=1e-5)


def test_schedule_counter_saturates():
    opt = adamjax.scale_by_lr(adamjax.inverse_sqrt_schedule(1.0))
    state = adamjax.ScheduleState(count=jnp.asarray(jnp.iinfo(jnp.int32).max, jnp.int32))
    for _ in range(2):
        u, state = opt.update(jnp.ones(2), state)
        assert int(state.count) == jnp.iinfo(jnp.int32).max
        # alpha_t = 1/sqrt(t) at t = 2^31 - 1 (a wrapped counter would give NaN, or 1/sqrt(1)).
        np.testing.assert_allclose(np.asarray(u), -1 / np.sqrt(2.0**31 - 1), rtol=1e-6)
