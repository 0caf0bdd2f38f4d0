"""Stochastic rounding of low-precision parameters, so that small updates do not stall.

Adding an update smaller than half a unit in the last place (ulp) to a bfloat16 parameter
and rounding to nearest gives the parameter back unchanged: with 8 significant bits, a
weight near 1 ignores any step below :math:`2^{-8} \\approx 0.004`, and training stalls.
Stochastic rounding (Forsythe, 1959; Gupta et al., "Deep Learning with Limited Numerical
Precision", ICML 2015) rounds :math:`x` up to the next representable value :math:`hi`
with probability :math:`(x - lo) / (hi - lo)` and down to :math:`lo` otherwise, so that

.. math::
    \\mathbb{E}[\\mathrm{SR}(x)] = x,

and many small updates add up to their float32 sum on average.

:func:`stochastic_rounding` wraps any transformation: it runs the wrapped ``update`` in
float32 and returns, per low-precision leaf, the update that moves the parameter to the
stochastically rounded float32 result. It works through every apply path (plain
:func:`optax.apply_updates`, Flax's ``TrainState``, :func:`adamjax.apply_gradients`),
because the returned update lands exactly on the rounded value whenever the old and new
parameter are within a factor of two of each other (Sterbenz's lemma: their difference is
then representable; every step of a small learning rate is). A step comparable to the
parameter itself may land on a representable value next to it. The PRNG key lives in
the state and advances every step, so runs are reproducible and resumable.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamjax import _validate
from adamjax._tree import LOW_PRECISION, float32_low_precision, require_params
from adamjax.base import GradientTransformation

__all__ = ["StochasticRoundingState", "stochastic_round", "stochastic_rounding"]


def stochastic_round(x: jax.Array, key: jax.Array, dtype: Any = jnp.bfloat16) -> jax.Array:
    """Round float32 ``x`` to ``dtype`` (bfloat16 or float16) stochastically, unbiased.

    Each element goes to one of its two neighbours in ``dtype``, :math:`lo \\le x \\le hi`,
    up with probability :math:`(x - lo)/(hi - lo)`. Representable values, NaN and
    :math:`\\pm\\infty` are returned as they are (rounded to nearest).

    Args:
      x: float32 array.
      key: a JAX PRNG key (one draw per element).
      dtype: the target dtype, bfloat16 or float16.
    """
    x = jnp.asarray(x, jnp.float32)
    near = x.astype(dtype)
    near32 = near.astype(jnp.float32)
    # The other neighbour: one step from ``near`` towards ``x``.
    other = jnp.nextafter(near, jnp.where(x > near32, jnp.inf, -jnp.inf).astype(dtype))
    other32 = other.astype(jnp.float32)
    lo32, hi32 = jnp.minimum(near32, other32), jnp.maximum(near32, other32)
    lo, hi = jnp.where(near32 <= other32, near, other), jnp.where(near32 <= other32, other, near)
    gap = hi32 - lo32
    p_up = jnp.where(gap > 0, (x - lo32) / jnp.where(gap > 0, gap, 1.0), 0.0)
    up = jax.random.uniform(key, x.shape, jnp.float32) < p_up
    out = jnp.where(up, hi, lo)
    exact = (near32 == x) | ~jnp.isfinite(x) | ~jnp.isfinite(other32)
    return jnp.where(exact, near, out)


class StochasticRoundingState(NamedTuple):
    """State of :func:`stochastic_rounding`: the wrapped state and the PRNG key."""

    inner: Any
    key: jax.Array


def stochastic_rounding(inner: GradientTransformation, key: Any) -> GradientTransformation:
    """Apply ``inner``'s updates to bfloat16/float16 parameters with stochastic rounding.

    ``update(grads, state, params)`` runs ``inner.update`` on float32 gradients, forms
    :math:`\\theta + u` in float32 for each low-precision leaf, rounds it stochastically to
    the parameter's dtype (:func:`stochastic_round`) and returns the difference as the
    update, in the parameter's dtype: adding it to the parameter lands exactly on the
    rounded value :math:`\\theta'` when :math:`\\theta'/2 \\le \\theta \\le 2\\theta'`
    (Sterbenz's lemma: the difference is then representable in the dtype); a larger step
    (e.g. a parameter of 1 moved to 0.01) may land on a representable value next to
    :math:`\\theta'` instead. Float32 (and wider) leaves get ``inner``'s update unchanged.
    Needs ``params``.

    Args:
      inner: the optimizer, e.g. ``adamjax.adam(1e-3)``.
      key: a PRNG key (``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)``) or an int
        seed. It is stored as raw ``uint32`` key data, so the state checkpoints as arrays.

    Returns:
      A transformation with state :class:`StochasticRoundingState`.
    """
    if isinstance(key, int) and not isinstance(key, bool):
        key = jax.random.PRNGKey(key)
    elif jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        key = jax.random.key_data(key)  # raw uint32 words: checkpointable like any array

    def init(params):
        return StochasticRoundingState(inner=inner.init(params), key=key)

    def update(updates, state, params=None, **extra):
        _validate.check_gradients("stochastic_rounding", updates, params)
        require_params("stochastic_rounding", params, "round their new values")
        u, inner_state = inner.update(float32_low_precision(updates), state.inner, params, **extra)
        key, sub = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(sub, max(1, len(leaves)))
        keys = jax.tree.unflatten(treedef, list(keys[: len(leaves)]))

        def one(p, du, k):
            dt = jnp.result_type(p)
            if dt not in LOW_PRECISION:
                return du
            new = stochastic_round(p.astype(jnp.float32) + du.astype(jnp.float32), k, dt)
            return (new.astype(jnp.float32) - p.astype(jnp.float32)).astype(dt)

        out = jax.tree.map(one, params, u, keys)
        return out, StochasticRoundingState(inner=inner_state, key=key)

    return GradientTransformation(init, update)
