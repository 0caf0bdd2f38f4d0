"""Temporal averaging of the parameters (Sec. 7.2 of the paper).

Reference: Kingma & Ba, ICLR 2015, Sec. 7.2; Polyak & Juditsky 1992 for the idea.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamjax import _validate
from adamjax.base import GradientTransformation, apply_updates, compute_dtype


class TemporalAverageState(NamedTuple):
    """State of :func:`temporal_averaging`.

    ``average`` is the uncorrected EMA :math:`\\bar\\theta_t`, ``weight`` is
    :math:`1 - \\beta_2^t` accumulated as :math:`w_t = \\beta_2 w_{t-1} + (1 - \\beta_2)`
    (so reading needs no ``b2``), ``inner`` the wrapped optimizer's state.
    """

    inner: Any
    average: Any
    weight: jax.Array


def temporal_averaging(inner: GradientTransformation, decay: Any = 0.999) -> GradientTransformation:
    r"""Keep an exponential moving average of the parameters beside any optimizer.

    .. math::
        \bar\theta_t = \beta_2 \bar\theta_{t-1} + (1 - \beta_2)\, \theta_t, \qquad
        \hat{\bar\theta}_t = \bar\theta_t / (1 - \beta_2^t)

    with :math:`\bar\theta_0 = 0` and :math:`\theta_t` the parameters *after* step t. The
    updates of ``inner`` are returned unchanged; read the corrected average with
    :func:`averaged_params`. ``update`` must be given ``params``.

    Args:
      inner: the optimizer whose iterates are averaged.
      decay: :math:`\beta_2 \in [0, 1)` (the paper reuses Adam's ``b2``).
    """
    _validate.check_beta("temporal_averaging", "decay", decay)

    def init(params):
        avg = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=compute_dtype(p)), params)
        return TemporalAverageState(
            inner=inner.init(params), average=avg, weight=jnp.zeros([], jnp.float32)
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(
                "temporal_averaging needs the current parameters: call "
                "opt.update(grads, state, params)."
            )
        updates, inner_state = inner.update(updates, state.inner, params)
        new_params = apply_updates(params, updates)
        avg = jax.tree.map(
            lambda a, p: decay * a + (1 - decay) * p.astype(a.dtype), state.average, new_params
        )
        weight = decay * state.weight + (1 - decay)
        return updates, TemporalAverageState(
            inner=inner_state, average=avg, weight=jnp.asarray(weight, jnp.float32)
        )

    return GradientTransformation(init, update)


def averaged_params(opt_state: Any, like: Any | None = None) -> Any:
    r"""Read the bias-corrected parameter average :math:`\bar\theta_t / (1 - \beta_2^t)`.

    Args:
      opt_state: an optimizer state that contains exactly one
        :class:`TemporalAverageState` anywhere inside it (e.g. inside ``optax.chain``'s
        tuple or a Flax ``TrainState.opt_state``).
      like: optional parameter tree whose dtypes the result is cast to.

    Returns:
      The averaged parameters. Before the first step (``t = 0``) the average is all zeros.
    """
    found = [
        s
        for s in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda x: isinstance(x, TemporalAverageState)
        )
        if isinstance(s, TemporalAverageState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"averaged_params: expected one temporal_averaging state in opt_state, found "
            f"{len(found)}. Wrap the optimizer with adamjax.temporal_averaging(opt)."
        )
    st = found[0]
    w = st.weight

    def read(a):
        return jnp.where(w > 0, a / jnp.where(w > 0, w, 1).astype(a.dtype), a)

    out = jax.tree.map(read, st.average)
    if like is not None:
        out = jax.tree.map(lambda a, p: a.astype(jnp.result_type(p)), out, like)
    return out
