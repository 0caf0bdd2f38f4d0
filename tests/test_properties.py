"""Property tests of Adam's step size (Sec. 2.1 of the paper), eps = 0, in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import adamjax

T = 32
SETTINGS = settings(max_examples=40, deadline=None)

b1s = st.floats(0.0, 0.99)
b2s = st.floats(0.5, 0.9999)
alphas = st.floats(1e-4, 1.0)


def _updates(grads, alpha, b1, b2):
    """Per-step updates of adam(alpha, b1, b2, eps=0) on a 1-D gradient sequence."""
    opt = adamjax.adam(alpha, b1, b2, eps=0.0)

    def body(s, g):
        u, s = opt.update(g, s)
        return s, u

    return jax.lax.scan(body, opt.init(grads[0]), grads)[1]


_updates_jit = jax.jit(_updates)


def updates(grads, alpha, b1, b2):
    with jax.enable_x64(True):
        g = jnp.asarray(np.asarray(grads, np.float64).reshape(T, 1))
        h = [jnp.asarray(x, jnp.float64) for x in (alpha, b1, b2)]
        return np.asarray(_updates_jit(g, *h))[:, 0]


magnitudes = st.floats(1e-3, 1e3)
signs = st.sampled_from([-1.0, 1.0])
grad_sequences = st.lists(st.tuples(magnitudes, signs, st.booleans()), min_size=T, max_size=T).map(
    lambda xs: [m * s * (0.0 if zero and i > 0 else 1.0) for i, (m, s, zero) in enumerate(xs)]
)


@SETTINGS
@given(st.floats(-1e3, 1e3).filter(lambda g: abs(g) > 1e-6), alphas, b1s, b2s)
def test_constant_gradient_steps_exactly_alpha(g, alpha, b1, b2):
    u = updates([g] * T, alpha, b1, b2)
    np.testing.assert_allclose(np.abs(u), alpha, rtol=1e-9)
    assert np.all(np.sign(u) == -np.sign(g))


@SETTINGS
@given(st.integers(1, T), st.floats(1e-3, 1e3), alphas, b1s, b2s)
def test_single_nonzero_gradient_after_zeros(t, g, alpha, b1, b2):
    grads = [0.0] * T
    grads[t - 1] = g
    u = updates(grads, alpha, b1, b2)
    expected = alpha * (1 - b1) * np.sqrt(1 - b2**t) / ((1 - b1**t) * np.sqrt(1 - b2))
    np.testing.assert_allclose(abs(u[t - 1]), expected, rtol=1e-9)


@SETTINGS
@given(grad_sequences, alphas, b1s, b2s)
def test_cauchy_schwarz_bound_on_every_step(grads, alpha, b1, b2):
    u = updates(grads, alpha, b1, b2)
    for t in range(1, T + 1):
        k = np.arange(1, t + 1)
        w = (1 - b1) * b1 ** (t - k) / (1 - b1**t)  # weights of m_hat_t on g_k
        v = (1 - b2) * b2 ** (t - k) / (1 - b2**t)  # weights of v_hat_t on g_k^2
        bound = alpha * np.sqrt(np.sum(w**2 / v))
        assert abs(u[t - 1]) <= bound * (1 + 1e-9), (t, u[t - 1], bound)


@SETTINGS
@given(grad_sequences, st.floats(1e-3, 1e3), alphas, b1s, b2s)
def test_update_invariant_to_gradient_scale(grads, c, alpha, b1, b2):
    u1 = updates(grads, alpha, b1, b2)
    u2 = updates([c * g for g in grads], alpha, b1, b2)
    np.testing.assert_allclose(u2, u1, rtol=1e-9, atol=1e-300)
