"""Schedules: constant and the paper's alpha / sqrt(t)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import adamjax


def test_inverse_sqrt_schedule_is_one_based():
    s = adamjax.inverse_sqrt_schedule(0.5)
    counts = jnp.arange(5)
    np.testing.assert_allclose(s(counts), 0.5 / np.sqrt(np.arange(1, 6)), rtol=1e-6)


def test_constant_schedule():
    s = adamjax.constant_schedule(0.1)
    np.testing.assert_allclose(s(jnp.arange(3)), [0.1, 0.1, 0.1], rtol=1e-7)


def test_scale_by_lr_with_schedule_uses_zero_based_count():
    opt = adamjax.scale_by_lr(adamjax.inverse_sqrt_schedule(1.0))
    state = opt.init(jnp.zeros(1))
    steps = []
    for _ in range(4):
        u, state = opt.update(jnp.ones(1), state)
        steps.append(float(u[0]))
    np.testing.assert_allclose(steps, -1 / np.sqrt([1, 2, 3, 4]), rtol=1e-6)
