"""Wrappers that change when an optimizer steps."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamjax.base import GradientTransformation


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`.

    ``inner``: the wrapped state; ``skipped``: steps skipped so far (int32);
    ``last_finite``: whether the last step's gradients were all finite.
    """

    inner: Any
    skipped: jax.Array
    last_finite: jax.Array


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack(leaves))


def skip_nonfinite(inner: GradientTransformation) -> GradientTransformation:
    """Skip any step whose gradients contain NaN or Inf.

    On such a step the updates are zero (so the parameters stay as they were), the inner
    state is left untouched and ``skipped`` is incremented; otherwise ``inner`` steps as
    usual. Built from ``jnp.where``, so it works under ``jit`` and ``vmap``.
    """

    def init(params):
        return SkipNonfiniteState(
            inner=inner.init(params),
            skipped=jnp.zeros([], jnp.int32),
            last_finite=jnp.asarray(True),
        )

    def update(updates, state, params=None):
        finite = _all_finite(updates)
        new_updates, new_inner = inner.update(updates, state.inner, params)
        out = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates)
        kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_inner, state.inner)
        skipped = state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32)
        return out, SkipNonfiniteState(inner=kept, skipped=skipped, last_finite=finite)

    return GradientTransformation(init, update)
