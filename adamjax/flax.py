"""Flax integration: a Linen ``TrainState`` and an ``nnx.Optimizer`` that take the one-pass step.

Flax's own train states step in two calls: ``updates, state = tx.update(grads, state, params)``
then ``params = optax.apply_updates(params, updates)``. For Adam on a float32 parameter that
moves about 40 bytes: ``update`` reads ``g, m, v`` and writes ``m, v`` and the update ``u``,
then ``apply_updates`` reads ``p, u`` and writes ``p``. :func:`adamjax.apply_gradients`
computes ``(new_params, new_state)`` in one pass where the transformation has a fused step
(``adamjax.adam`` on the CPU: a native kernel that reads ``p, g, m, v`` and writes ``p, m, v``,
28 bytes per parameter, bit for bit the numbers of the two-call form), and is exactly the
two-call form for every other transformation. The classes here are Flax's, with their step
method routed through it:

- :class:`TrainState`: drop-in for ``flax.training.train_state.TrainState`` (a subclass: same
  fields, ``create``, ``replace``, step counter and serialization).
- :class:`Optimizer`: drop-in for ``flax.nnx.Optimizer`` (a subclass: same ``wrt`` filter,
  ``step`` and ``opt_state`` variables).

Any ``optax.GradientTransformation`` works with both; only one that owns a fused step
(:class:`adamjax.step.FusedTransformation`, e.g. ``adamjax.adam`` itself, not wrapped or
chained further) takes the native kernel, where :func:`adamjax.lowering.kernel_gate` says it
runs; the rest run as Flax's classes would run them.

To update in place, donate the state to the jitted step (``jax.jit(train_step,
donate_argnums=0)``); without donation XLA must keep the old buffers and copies them.

This module imports Flax; ``import adamjax`` does not import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import jax
from flax import nnx
from flax.linen.fp8_ops import OVERWRITE_WITH_GRADIENT
from flax.training import train_state as _linen_train_state

from adamjax import quantize as _quantize
from adamjax.step import apply_gradients

_quantize.register_flax_serialization()

__all__ = ["Optimizer", "TrainState"]


def _has_overwrite_with_gradient(tree: Any) -> bool:
    """Whether ``tree`` holds Flax's fp8 ``_overwrite_with_gradient`` collection beside
    ``'params'`` (those variables take the gradient as their new value, with no optimizer)."""
    return isinstance(tree, Mapping) and OVERWRITE_WITH_GRADIENT in tree


class TrainState(_linen_train_state.TrainState):
    """Flax's Linen ``TrainState`` whose :meth:`apply_gradients` runs one fused optimizer step.

    Created and used exactly like ``flax.training.train_state.TrainState`` (it is a subclass,
    with the same fields ``step``, ``apply_fn``, ``params``, ``tx``, ``opt_state``): the only
    change is that the parameters and optimizer state are advanced by
    :func:`adamjax.apply_gradients`, which runs ``adamjax.adam`` on the CPU as one native pass
    over ``p, g, m, v`` (28 bytes per float32 parameter instead of about 40 for ``tx.update``
    followed by ``optax.apply_updates``), with the same numbers. Any other ``tx`` (an Optax
    optimizer, a chain, a wrapper) runs ``tx.update`` and :func:`adamjax.apply_updates`.

    Example::

        import jax, jax.numpy as jnp, optax
        import flax.linen as nn
        import adamjax
        import adamjax.flax

        model = nn.Dense(10)
        x, y = jnp.ones((128, 784)), jnp.zeros((128,), jnp.int32)
        state = adamjax.flax.TrainState.create(
            apply_fn=model.apply,
            params=model.init(jax.random.key(0), x)["params"],
            tx=adamjax.adam(1e-3),
        )

        @jax.jit  # add donate_argnums=0 to update the parameters in place
        def train_step(state, x, y):
            def loss_fn(params):
                logits = state.apply_fn({"params": params}, x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, grads = jax.value_and_grad(loss_fn)(state.params)
            return state.apply_gradients(grads=grads), loss

        state, loss = train_step(state, x, y)

    As in Flax, if ``params`` holds the fp8 ``'_overwrite_with_gradient'`` collection beside
    ``'params'``, only ``params['params']`` is optimized and the other collection takes its
    gradient as its new value.
    """

    def apply_gradients(self, *, grads: Any, **kwargs: Any) -> TrainState:
        """One optimizer step: ``step + 1`` and new ``params`` and ``opt_state``.

        Args:
          grads: the gradients, a tree with the structure of ``params``.
          **kwargs: other fields to replace in the returned state (as Flax's).

        Returns:
          The state after ``params, opt_state = adamjax.apply_gradients(tx, grads,
          opt_state, params)``, with ``step`` incremented and ``kwargs`` replaced.
        """
        overwrite = _has_overwrite_with_gradient(grads)
        params = self.params["params"] if overwrite else self.params
        opt_grads = grads["params"] if overwrite else grads
        new_params, new_opt_state = apply_gradients(self.tx, opt_grads, self.opt_state, params)
        if overwrite:
            new_params = {
                "params": new_params,
                OVERWRITE_WITH_GRADIENT: grads[OVERWRITE_WITH_GRADIENT],
            }
        return self.replace(
            step=self.step + 1, params=new_params, opt_state=new_opt_state, **kwargs
        )


class Optimizer(nnx.Optimizer):
    """``flax.nnx.Optimizer`` whose :meth:`update` runs one fused optimizer step.

    Built like ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` (a subclass: the same ``step``,
    ``tx``, ``opt_state`` and ``wrt``); :meth:`update` advances the variables selected by
    ``wrt`` and the optimizer state with :func:`adamjax.apply_gradients`, which runs
    ``adamjax.adam`` on the CPU as one native pass over ``p, g, m, v`` (28 bytes per float32
    parameter instead of about 40), with the same numbers as ``tx.update`` followed by
    ``optax.apply_updates``. Any other ``tx`` runs that two-call form.

    Example::

        import jax.numpy as jnp
        from flax import nnx
        import adamjax
        import adamjax.flax

        model = nnx.Linear(784, 10, rngs=nnx.Rngs(0))
        optimizer = adamjax.flax.Optimizer(model, adamjax.adam(1e-3), wrt=nnx.Param)
        x, y = jnp.ones((128, 784)), jnp.zeros((128, 10))

        @nnx.jit
        def train_step(model, optimizer, x, y):
            loss_fn = lambda model: jnp.mean((model(x) - y) ** 2)
            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        loss = train_step(model, optimizer, x, y)
    """

    def __init__(self, model: Any, tx: Any, **kwargs: Any):
        version = tuple(int(x) for x in flax.__version__.split(".")[:2] if x.isdigit())
        if version < (0, 11):
            raise RuntimeError(
                f"adamjax.flax.Optimizer needs flax >= 0.11 (nnx.Optimizer.update(model, "
                f"grads)); this is flax {flax.__version__}. Upgrade flax (pip install -U flax), "
                "or use adamjax.flax.TrainState."
            )
        super().__init__(model, tx, **kwargs)

    def update(self, model: Any, grads: Any, /, **kwargs: Any) -> Any:
        """Step the variables of ``model`` selected by ``wrt`` with the gradients ``grads``.

        Args:
          model: the module whose variables (filtered by ``wrt``) are updated in place.
          grads: the gradients from ``nnx.grad`` (filtered by ``wrt`` here, as in Flax).
          **kwargs: extra arguments for ``tx.update`` (``GradientTransformationExtraArgs``);
            when given, the step is ``tx.update`` with them followed by
            ``optax.apply_updates``, exactly ``nnx.Optimizer.update``.

        Returns:
          The change made to each selected variable, ``new - old`` (as Flax's, the tree of
          updates; here recomputed from the parameters, since the fused step never forms the
          update: it can differ from ``tx``'s update by the rounding of ``old + update``.
          Unused under ``jit``, it costs nothing).
        """
        if kwargs:
            return super().update(model, grads, **kwargs)
        # flax 0.12 added tree mode (``graph=False``); before, there is no such argument
        graph = getattr(self, "graph", None)
        mode = {} if graph is None else {"graph": graph}
        params = nnx.as_pure(nnx.state(model, self.wrt, **mode))
        pure_grads = nnx.as_pure(nnx.state(grads, self.wrt, **mode))
        opt_state = nnx.as_pure(self.opt_state)
        new_params, new_opt_state = apply_gradients(self.tx, pure_grads, opt_state, params)
        nnx.update(model, new_params)
        nnx.update(self.opt_state, nnx.state(new_opt_state, **mode))
        self.step[...] += 1
        return jax.tree.map(lambda new, old: new - old, new_params, params)
