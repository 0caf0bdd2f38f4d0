"""Momentum: a trace of past gradients (heavy-ball and Nesterov).

References: B. T. Polyak, "Some methods of speeding up the convergence of iteration
methods", 1964; I. Sutskever et al., "On the importance of initialization and momentum in
deep learning", ICML 2013 (Nesterov momentum in the form used by PyTorch and Optax).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamjax import _validate
from adamjax.base import (
    GradientTransformation,
    compute_dtype,
    expect_updates,
    state_dtype_for,
)


class TraceState(NamedTuple):
    """State of :func:`trace`: the velocity ``b_t``."""

    trace: Any


def trace(
    momentum: Any = 0.9, nesterov: bool = False, *, state_dtype: Any | None = None
) -> GradientTransformation:
    r"""Momentum on the raw gradient.

    .. math::
        b_t = \mu\, b_{t-1} + g_t, \qquad
        d_t = \begin{cases} g_t + \mu\, b_t & \text{Nesterov} \\ b_t & \text{otherwise}
        \end{cases}

    with :math:`b_0 = 0`; followed by :func:`adamjax.scale_by_lr` this is
    ``theta_t = theta_{t-1} - alpha * d_t``.

    Args:
      momentum: :math:`\mu \in [0, 1)`.
      nesterov: a Python bool; use Nesterov's look-ahead form.
      state_dtype: storage dtype of the velocity.
    """
    fn = "trace"
    _validate.check_beta(fn, "momentum", momentum)
    _validate.check_dtype(fn, "state_dtype", state_dtype)

    def init(params):
        return TraceState(
            trace=jax.tree.map(
                lambda p: jnp.zeros_like(p, dtype=state_dtype_for(p, state_dtype)), params
            )
        )

    def update(updates, state, params=None):
        del params
        grads = expect_updates(fn, updates, "trace works on raw gradients; put it first.")
        grads = jax.tree.map(lambda g: jnp.asarray(g).astype(compute_dtype(g)), grads)
        new = jax.tree.map(lambda g, b: momentum * b.astype(g.dtype) + g, grads, state.trace)
        out = jax.tree.map(lambda g, b: g + momentum * b, grads, new) if nesterov else new
        stored = jax.tree.map(lambda b, old: b.astype(old.dtype), new, state.trace)
        return out, TraceState(trace=stored)

    return GradientTransformation(init, update)
