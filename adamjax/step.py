"""One optimizer step on the parameters: ``update`` + ``apply_updates``, fused when owned.

:func:`apply_gradients` is the generic step every train loop needs::

    params, opt_state = apply_gradients(opt, grads, opt_state, params)

It equals ``updates, opt_state = opt.update(grads, opt_state, params)`` followed by
``params = adamjax.apply_updates(params, updates)``.

Fused steps are typed and owned
-------------------------------
A transformation may own a *fused apply*: a function ``fused(grads, state, params) ->
(new_params, new_state)`` with the results of the two-call form, or ``None`` to decline at
trace time (a backend, dtype or configuration it does not handle), in which case the
two-call form runs. It is a field of one exact object, a :class:`FusedTransformation`,
and is not carried over to copies with another ``update``. Nothing is hung on the
``update`` function, so ``functools.wraps``, ``optax.chain``, ``optax.masked``,
``optax.inject_hyperparams``, ``optax.MultiSteps``, :func:`adamjax.skip_nonfinite`,
:func:`adamjax.temporal_averaging`, :func:`adamjax.sharding.zero1` or
``opt._replace(update=...)`` all yield transformations without one: their own ``update``
runs, whatever it does. A fast path never skips a user's code.

Which transformations own one: a chain that :func:`adamjax.chain` lowers to the native CPU
kernel (``adamjax.adam``, ``adamjax.adamax``, ``adamjax.adamw`` or the same primitives
chained by hand; see :mod:`adamjax.lowering` and docs/fast-paths.md), and
:func:`adamjax.flat_layout` of any transformation. On the CPU the fused apply of Adam reads
``p, g, m, v`` and writes ``p, m, v`` in place (28 bytes per float32 parameter), where the
two-call form also writes and re-reads the update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adamjax import _validate
from adamjax.base import GradientTransformation, GradientTransformationExtraArgs, apply_updates

__all__ = ["FusedApply", "FusedTransformation", "apply_gradients"]

FusedApply = Callable[[Any, Any, Any], "tuple[Any, Any] | None"]


class FusedTransformation(GradientTransformationExtraArgs):
    """An ``optax.GradientTransformationExtraArgs`` that owns a fused apply.

    ``FusedTransformation(init, update, fused_apply)``: ``init`` and ``update`` as for any
    transformation; ``fused_apply(grads, state, params)`` must return what ``update``
    followed by :func:`adamjax.apply_updates` returns (bit for bit, or as its author states
    and tests), or ``None`` to decline. It drops into ``optax.chain``, Flax's
    ``TrainState`` and ``nnx.Optimizer`` like any transformation (which then call its
    ``update``).
    """

    def __new__(
        cls, init: Any, update: Any, fused_apply: FusedApply | None = None
    ) -> FusedTransformation:
        self = super().__new__(cls, init, update)
        # Held by this object only: ``_replace(update=...)`` and pytree unflattening build
        # a new tuple without it.
        self.__dict__["_fused"] = fused_apply
        return self

    @property
    def fused_apply(self) -> FusedApply | None:
        """The fused apply, or ``None`` (e.g. for a copy made by ``_replace(update=...)``)."""
        return self.__dict__.get("_fused")


def apply_gradients(
    opt: GradientTransformation, grads: Any, opt_state: Any, params: Any
) -> tuple[Any, Any]:
    r"""One step: ``(new_params, new_opt_state)`` from the gradients.

    .. math:: (u_t, s_t) = \mathrm{update}(g_t, s_{t-1}, \theta_{t-1}), \quad
        \theta_t = \theta_{t-1} + u_t

    First checks, at trace time, that ``grads`` match ``params`` in structure, shapes and
    dtype kind, raising with the path of the first mismatched leaf. Then uses
    ``opt.fused_apply`` when ``opt`` is a :class:`FusedTransformation` that has one
    (see the module docstring), else ``opt.update`` and :func:`adamjax.apply_updates`.
    Call it inside ``jax.jit`` with the parameters and state donated (``donate_argnums``)
    so that the step runs in place.

    Examples:
      One Adam step, jitted with parameters and state donated; the first step moves each
      parameter by :math:`\alpha` against its gradient's sign:

      >>> import jax
      >>> import jax.numpy as jnp
      >>> import adamjax
      >>> opt = adamjax.adam(0.1)
      >>> step = jax.jit(
      ...     lambda p, s, g: adamjax.apply_gradients(opt, g, s, p), donate_argnums=(0, 1)
      ... )
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> params, state = step(params, opt.init(params), {"w": jnp.array([3.0, -4.0])})
      >>> bool(jnp.allclose(params["w"], jnp.array([0.9, 2.1]), rtol=1e-5))
      True
    """
    _validate.check_gradients("apply_gradients", grads, params)
    fused = opt.fused_apply if isinstance(opt, FusedTransformation) else None
    if fused is not None:
        out = fused(grads, opt_state, params)
        if out is not None:
            return out
    updates, new_state = opt.update(grads, opt_state, params)
    return apply_updates(params, updates), new_state
