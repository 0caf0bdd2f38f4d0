"""The learning-rate step (Algorithm 1, line 11: ``theta_t = theta_{t-1} - alpha * d_t``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamjax import _validate
from adamjax.base import EmptyState, GradientTransformation, expect_updates, safe_increment
from adamjax.spec import Primitive, Spec


class ScheduleState(NamedTuple):
    """State of :func:`scale_by_lr` with a schedule: the 0-based step count."""

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in Optax


def next_schedule_state(state: ScheduleState, **_: Any) -> ScheduleState:
    """A scheduled primitive's state after a step: its count advanced (the extra keywords,
    a :attr:`adamjax.spec.Spec.advance`'s outputs, are not read)."""
    return ScheduleState(count=safe_increment(state.count))


def scale_by_lr(learning_rate: Any) -> GradientTransformation:
    r"""Scale the direction by :math:`-\alpha_t`: the update is ``-alpha_t * d_t``.

    Args:
      learning_rate: :math:`\alpha`, a non-negative number, a (possibly traced) JAX array,
        or a schedule ``count -> alpha_t`` called with the 0-based step count (see
        :mod:`adamjax.schedules`).

    Returns:
      A transformation from an update tree to an update tree, to be added to the
      parameters with :func:`adamjax.apply_updates`.
    """
    fn = "scale_by_lr"
    _validate.check_learning_rate(fn, learning_rate)
    hint = "Put precondition (or another primitive that yields a direction) before scale_by_lr."

    if callable(learning_rate):

        def init_s(params):
            del params
            return ScheduleState(count=jnp.zeros([], jnp.int32))

        def update_s(updates, state, params=None):
            del params
            updates = expect_updates(fn, updates, hint)
            lr = learning_rate(state.count)
            out = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
            return out, next_schedule_state(state)

        spec = Spec(
            fn,
            {"learning_rate": learning_rate},
            {},
            scale_by_lr,
            at=lambda state: {"learning_rate": learning_rate(state.count)},
            advance=next_schedule_state,
        )
        return Primitive(init_s, update_s, spec)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None):
        del params
        updates = expect_updates(fn, updates, hint)
        out = jax.tree.map(
            lambda u: (-learning_rate * jnp.asarray(u)).astype(jnp.result_type(u)), updates
        )
        return out, state

    return Primitive(init, update, Spec(fn, {"learning_rate": learning_rate}, {}, scale_by_lr))
