"""Small tree helpers shared by several transformations (package-internal).

They import nothing else of adamjax, so any module may use them without closing a circle.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def is_low_precision(x: Any) -> bool:
    """Whether ``x`` is a bfloat16/float16 array (``None`` is not)."""
    return x is not None and jnp.result_type(x) in LOW_PRECISION


def float32_low_precision(tree: Any) -> Any:
    """``tree`` with its bfloat16/float16 leaves widened to float32 (the inner optimizer's
    gradients, so that it computes in float32)."""
    return jax.tree.map(lambda g: g.astype(jnp.float32) if is_low_precision(g) else g, tree)


def require_params(name: str, params: Any, purpose: str) -> None:
    """Raise ``ValueError`` when a wrapper's ``update`` is called without the parameters."""
    if params is None:
        raise ValueError(
            f"{name}: update needs the parameters (update(grads, state, params)) to "
            f"{purpose}; pass params."
        )


def mask_tree(mask: Any, params: Any) -> Any:
    """Weight decay's mask as a tree with the parameters' structure: ``mask`` itself, or
    ``mask(params)`` when it is a function (``ValueError`` when the structures differ)."""
    tree = mask(params) if callable(mask) else mask
    try:
        return jax.tree.map(lambda m, p: m, tree, params, is_leaf=lambda x: x is None)
    except ValueError as err:
        raise ValueError(
            "add_decayed_weights: mask must have the structure of the parameters (a tree of "
            f"booleans, or a function of the parameters that returns one): {err}"
        ) from err
