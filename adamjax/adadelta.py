"""AdaDelta's unit-corrected step (Zeiler, 2012), which the paper compares in Figure 2.

Reference: M. D. Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701,
Algorithm 1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamjax import _validate
from adamjax.base import (
    GradientTransformation,
    abs_sq,
    compute_dtype,
    expect_updates,
    real_dtype,
    state_dtype_for,
)


class AdadeltaState(NamedTuple):
    """Running averages ``E[g^2]`` and ``E[dx^2]`` of AdaDelta."""

    sq_grad: Any
    sq_delta: Any


def scale_by_adadelta(rho: Any = 0.95, eps: Any = 1e-6, *, state_dtype: Any | None = None):
    r"""AdaDelta's direction (Zeiler 2012, Algorithm 1):

    .. math::
        E[g^2]_t = \rho E[g^2]_{t-1} + (1-\rho) g_t^2, \quad
        d_t = \frac{\sqrt{E[\Delta x^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}\, g_t,
        \quad E[\Delta x^2]_t = \rho E[\Delta x^2]_{t-1} + (1-\rho) d_t^2

    Zeiler's update is ``x_t = x_{t-1} - d_t``; follow with ``scale_by_lr(1.0)``.

    Args:
      rho: decay rate in [0, 1).
      eps: the conditioning constant inside both roots, >= 0.
      state_dtype: storage dtype of the running averages.
    """
    fn = "scale_by_adadelta"
    _validate.check_beta(fn, "rho", rho)
    _validate.check_nonnegative(fn, "eps", eps)
    _validate.check_dtype(fn, "state_dtype", state_dtype)

    def init(params):
        def zeros(p):
            return jnp.zeros_like(p, dtype=real_dtype(state_dtype_for(p, state_dtype)))

        return AdadeltaState(jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        grads = expect_updates(fn, updates, "AdaDelta works on raw gradients; put it first.")
        grads = jax.tree.map(lambda g: jnp.asarray(g).astype(compute_dtype(g)), grads)

        def rd(g):
            return real_dtype(g.dtype)

        eg = jax.tree.map(
            lambda g, e: rho * e.astype(rd(g)) + (1 - rho) * abs_sq(g), grads, state.sq_grad
        )

        def direction(g, e, ed):  # d_t from g_t, E[g^2]_t and E[dx^2]_{t-1}
            return jnp.sqrt(ed.astype(rd(g)) + eps) / jnp.sqrt(e + eps) * g

        d = jax.tree.map(direction, grads, eg, state.sq_delta)
        # E[dx^2]_t needs d_t as well. Taken from the same operands behind an optimisation
        # barrier, d_t is recomputed inside that output's loop rather than written out once and
        # read back by both (XLA:CPU fuses neither root nor division into two consumers): the
        # same operations on the same values, so the same bits, in fewer passes over memory.
        again = jax.lax.optimization_barrier((grads, eg))
        ed = jax.tree.map(
            lambda g, e, old: rho * old.astype(rd(g)) + (1 - rho) * abs_sq(direction(g, e, old)),
            *again,
            state.sq_delta,
        )
        cast = jax.tree.map(lambda x, old: x.astype(old.dtype), eg, state.sq_grad)
        cast_d = jax.tree.map(lambda x, old: x.astype(old.dtype), ed, state.sq_delta)
        return d, AdadeltaState(cast, cast_d)

    return GradientTransformation(init, update)
