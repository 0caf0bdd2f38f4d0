"""Step-size schedules ``alpha_t`` taking Optax's 0-based step count.

Reference: Kingma & Ba, ICLR 2015, Sec. 4 and 6.1 (``alpha_t = alpha / sqrt(t)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from adamjax import _validate

Schedule = Callable[[jax.Array], jax.Array]


def constant_schedule(alpha: Any) -> Schedule:
    r"""``alpha_t = alpha`` for every step."""
    _validate.check_nonnegative("constant_schedule", "alpha", alpha)

    def schedule(count):
        return jnp.asarray(alpha) + jnp.zeros_like(count, dtype=jnp.result_type(float))

    return schedule


def inverse_sqrt_schedule(alpha: Any) -> Schedule:
    r"""The paper's decay :math:`\alpha_t = \alpha / \sqrt{t}` with 1-based ``t``.

    Called with Optax's 0-based step counter ``count``, it returns
    ``alpha / sqrt(count + 1)``, so the first step uses ``alpha`` itself.
    """
    _validate.check_nonnegative("inverse_sqrt_schedule", "alpha", alpha)

    def schedule(count):
        t = jnp.asarray(count).astype(jnp.result_type(float)) + 1
        return alpha / jnp.sqrt(t)

    return schedule
