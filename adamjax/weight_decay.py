"""Decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
ICLR 2019), the term that turns Adam into AdamW.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from adamjax import _validate
from adamjax._tree import mask_tree
from adamjax.base import EmptyState, GradientTransformation, expect_updates
from adamjax.lr import ScheduleState, next_schedule_state
from adamjax.spec import Primitive, Spec


def add_decayed_weights(
    weight_decay: Any = 1e-4, mask: Any | Callable[[Any], Any] | None = None
) -> GradientTransformation:
    r"""Add :math:`\lambda \theta_{t-1}` to the direction (decoupled weight decay).

    .. math::
        d_t \leftarrow d_t + \lambda\, \theta_{t-1}

    Placed after :func:`adamjax.precondition` and before :func:`adamjax.scale_by_lr`, the
    step is :math:`\theta_t = \theta_{t-1} - \alpha_t (\hat m_t/(\sqrt{\hat v_t}+\epsilon) +
    \lambda \theta_{t-1})`: the decay is scaled by the learning rate (schedule) as in
    Loshchilov & Hutter's Algorithm 2 with :math:`\eta_t = \alpha_t`, Optax's ``adamw`` and
    PyTorch's ``AdamW``, but not by the adaptive preconditioner (that would be L2
    regularisation, which the paper shows to be weaker for Adam).

    Args:
      weight_decay: :math:`\lambda \ge 0` (a number or array), or a schedule
        ``count -> lambda_t`` called with the 0-based step count (as Optax's; the state is
        then a :class:`adamjax.lr.ScheduleState`).
      mask: which leaves decay: a tree of booleans with the parameters' structure, or a
        function ``params -> that tree`` (e.g. to skip biases and norms). ``None``: all.
        Leaves masked out are left exactly as they came (no ``0 * theta`` is added, so an
        infinite parameter there gives no NaN).

    ``update`` must be given the parameters.
    """
    fn = "add_decayed_weights"
    scheduled = callable(weight_decay) and not hasattr(weight_decay, "dtype")
    if not scheduled:
        _validate.check_number(
            fn, "weight_decay", weight_decay, what="a number, an array or a schedule"
        )
        _validate.check_nonnegative(fn, "weight_decay", weight_decay)
    if mask is not None and not callable(mask) and not jax.tree.leaves(mask):
        raise ValueError(f"{fn}: mask has no leaves; pass a tree of booleans or a function.")

    def init(params):
        del params
        return ScheduleState(count=jnp.zeros([], jnp.int32)) if scheduled else EmptyState()

    def update(updates, state, params=None):
        updates = expect_updates(
            fn, updates, "Put precondition (or another direction) before add_decayed_weights."
        )
        if scheduled:
            wd = weight_decay(state.count)
            state = next_schedule_state(state)
        else:
            wd = weight_decay
        if params is None and _validate.is_python_number(wd) and wd == 0:
            return updates, state
        if params is None:
            raise ValueError(f"{fn} needs the parameters: call opt.update(grads, state, params).")

        def decay(u, p, m=True):
            if u is None:
                return None
            if m is False:
                return u
            d = u + (wd * jnp.asarray(p)).astype(u.dtype)
            return d if m is True else jnp.where(m, d, u)

        if mask is None:
            return jax.tree.map(decay, updates, params), state
        m = mask_tree(mask, params)
        return jax.tree.map(decay, updates, params, m), state

    spec = Spec(
        fn,
        {"weight_decay": weight_decay},
        {"mask": mask},
        add_decayed_weights,
        at=(lambda state: {"weight_decay": weight_decay(state.count)}) if scheduled else None,
        advance=next_schedule_state if scheduled else None,
    )
    return Primitive(init, update, spec)
