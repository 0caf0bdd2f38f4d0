"""Build-time validation of hyperparameters and of the parameters an optimizer is built for.

A hyperparameter is a Python (or NumPy) real number, checked here against its range and for
being finite, or a JAX/NumPy array (possibly traced, e.g. inside ``jax.vmap`` over a grid),
whose value is not read: reading it would force a device sync, or is impossible under a
trace. Anything else (a string, ``None``, a list, a bool where a number is meant) is a
``TypeError`` that names the value and says what to pass.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_python_number(value: Any, equal_to: float | None = None) -> bool:
    """A Python or NumPy real scalar (not a bool): a value known when the optimizer is built.

    With ``equal_to``, also that the number equals it (``is_python_number(b1, 0.0)``: ``b1``
    is the number 0, not an array that may hold 0).
    """
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        return False
    return equal_to is None or float(value) == equal_to


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, np.ndarray))


def check_number(fn: str, name: str, value: Any, *, what: str = "a real number") -> None:
    """Raise ``TypeError`` unless ``value`` is a real number or an array of a numeric dtype."""
    if is_python_number(value):
        return
    if _is_array(value):
        dtype = jnp.result_type(value)
        if jnp.issubdtype(dtype, jnp.number):
            return
        raise TypeError(
            f"{fn}: {name} must be {what} or a numeric array, got an array of dtype {dtype}. "
            f"Pass e.g. {name}=jnp.asarray(x, jnp.float32)."
        )
    raise TypeError(
        f"{fn}: {name} must be {what} (a Python float or a JAX array), got {value!r} "
        f"({type(value).__name__}). Pass e.g. {name}=0.1, not a string, None or a bool."
    )


def check_range(
    fn: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    """Raise unless ``value`` is a number in the stated interval (arrays: type only).

    Args:
      fn: the optimizer or primitive being built (for the message).
      name: the hyperparameter's name.
      value: its value: a Python/NumPy real number (checked: finite, in range) or an array
        (only its dtype is checked). Anything else raises ``TypeError``.
      low, high: the bounds (``None`` means unbounded; infinity is never accepted).
      low_open, high_open: whether each bound is excluded.
    """
    check_number(fn, name, value)
    if not is_python_number(value):
        return
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ValueError(
            f"{fn}: {name} must be a finite number in {lo}, {hi}, got {value!r}. "
            f"Pass a value in that range (traced JAX arrays are not checked)."
        )


def check_nonnegative(fn: str, name: str, value: Any) -> None:
    """Raise unless ``value`` is a finite number >= 0 (or an array)."""
    check_range(fn, name, value, low=0.0, high=None)


def check_learning_rate(fn: str, value: Any) -> None:
    """A learning rate is a finite number >= 0, an array, or a schedule (callable)."""
    if callable(value) and not _is_array(value):
        return
    check_number(fn, "learning_rate", value, what="a number, an array or a schedule")
    check_nonnegative(fn, "learning_rate", value)


def check_beta(fn: str, name: str, value: Any) -> None:
    """A decay rate ``b`` must lie in ``[0, 1)``."""
    check_range(fn, name, value, low=0.0, high=1.0)


def check_bool(fn: str, name: str, value: Any) -> None:
    """A static switch: a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{fn}: {name} must be a Python bool, got {value!r} ({type(value).__name__}). "
            f"Pass {name}=True or {name}=False."
        )


def _accepted(allow_int8: bool) -> str:
    floats = (
        "None (the parameters' dtype, at least float32), a floating dtype such as "
        "jnp.float32, jnp.bfloat16 or jnp.float16"
    )
    if allow_int8:
        return floats + ", or 'int8' (8-bit block-wise moments)"
    return floats


def check_dtype(fn: str, name: str, value: Any, *, allow_int8: bool = False) -> None:
    """A storage dtype: ``None`` or something ``jnp.dtype`` accepts that is inexact.

    ``allow_int8``: the moment estimators also take ``"int8"``, 8-bit block-wise storage
    (:mod:`adamjax.quantize`). Every message lists the accepted values.
    """
    if value is None:
        return
    if isinstance(value, str) and value == "int8":
        if allow_int8:
            return
        raise TypeError(
            f"{fn}: {name}='int8' (8-bit block-wise moments) is a storage format of the "
            "moment estimators (scale_by_moments, scale_by_inf_moment: adam, adamw, adamax, "
            "rmsprop); this state is stored in floating point. Accepted here: "
            f"{_accepted(False)}."
        )
    try:
        dtype = jnp.dtype(value)
    except TypeError as err:
        raise TypeError(
            f"{fn}: {name}={value!r} is not a dtype. Accepted: {_accepted(allow_int8)}."
        ) from err
    if not jnp.issubdtype(dtype, jnp.inexact):
        hint = ""
        if allow_int8 and dtype == jnp.int8:
            hint = " For 8-bit block-wise moments pass the string 'int8', not the dtype."
        raise TypeError(
            f"{fn}: {name}={value!r} is not a floating dtype ({dtype}): moments stored in it "
            f"would be truncated. Accepted: {_accepted(allow_int8)}.{hint}"
        )


def check_float_params(fn: str, params: Any) -> None:
    """Raise ``TypeError`` naming the first parameter leaf that is not floating or complex.

    A gradient step cannot move an integer (or bool) parameter: its float update would be
    truncated or silently dropped. Leaves that are ``None`` are frozen and allowed.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            where = jax.tree_util.keystr(path) or "(the root)"
            raise TypeError(
                f"{fn}: parameter {where} has dtype {dtype}, which a gradient step cannot "
                f"update. Cast it to a floating dtype (e.g. jnp.float32), or keep it out of "
                f"the optimized tree (set that leaf to None, or wrap the optimizer with "
                f"optax.masked / optax.multi_transform and optax.set_to_zero for it)."
            )


# ----------------------------------------------------------------------------------------
# Gradients against the parameters and state they update (trace time: shapes only).

_CAUSE_TREE = (
    "Likely cause: the gradients were taken of another tree than the one the optimizer was "
    "initialised with (a loss differentiated with respect to a sub-tree or another model, "
    "or nnx gradients not filtered with the optimizer's wrt)."
)
_CAUSE_SHAPE = (
    "Likely cause: the gradient was computed for a transposed or reshaped copy of the "
    "parameter, or the gradients belong to another model."
)
_CAUSE_STATE = (
    "Likely cause: the optimizer state was initialised (or restored) for other parameters; "
    "build it with opt.init(params) for these parameters."
)


def _short(treedef: Any, limit: int = 300) -> str:
    text = str(treedef)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _leaf_paths(tree: Any, is_leaf: Any) -> list[tuple[str, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return [(jax.tree_util.keystr(path) or "(the root)", leaf) for path, leaf in flat]


def _is_state_leaf(x: Any) -> bool:
    from adamjax.quantize import QuantizedArray

    return x is None or isinstance(x, QuantizedArray)


def _matched_leaves(fn: str, grads: Any, other: Any, what: str, cause: str) -> list:
    """``(path, gradient leaf, other leaf)`` triples, after raising if the trees differ."""
    msg = _tree_mismatch(fn, grads, other, what, cause)
    if msg is not None:
        raise ValueError(msg)
    g_leaves = _leaf_paths(grads, _is_state_leaf)
    o_leaves = _leaf_paths(other, _is_state_leaf)
    return [(path, g, o) for (path, g), (_, o) in zip(g_leaves, o_leaves, strict=True)]


def _tree_mismatch(fn: str, grads: Any, other: Any, what: str, cause: str) -> str | None:
    """A message naming the first path where ``grads`` and ``other`` differ in structure."""
    is_leaf = _is_state_leaf
    g_def: Any = jax.tree_util.tree_structure(grads, is_leaf=is_leaf)
    o_def: Any = jax.tree_util.tree_structure(other, is_leaf=is_leaf)
    if g_def == o_def:
        return None
    g_paths = [p for p, _ in _leaf_paths(grads, is_leaf)]
    o_paths = [p for p, _ in _leaf_paths(other, is_leaf)]
    missing = [p for p in o_paths if p not in set(g_paths)]
    extra = [p for p in g_paths if p not in set(o_paths)]
    if missing:
        where = f"there is a leaf at {missing[0]} in {what} but not in the gradients"
    elif extra:
        where = f"there is a leaf at {extra[0]} in the gradients but not in {what}"
    else:
        where = f"the gradients and {what} have the same paths in nodes of other types"
    return (
        f"{fn}: the gradients' tree does not match that of {what}: {where}. Gradients: "
        f"{_short(g_def)}; {what}: {_short(o_def)}. {cause}"
    )


def _kind(dtype: Any) -> str:
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return "complex"
    if jnp.issubdtype(dtype, jnp.floating):
        return "real floating"
    return "non-floating"


def check_gradients(fn: str, grads: Any, params: Any = None, *, state: Any = None) -> None:
    """Raise, naming the first mismatched leaf, unless ``grads`` match what they update.

    At trace time, from shapes and dtypes only (nothing is added to the compiled step):

    * against ``params`` (when given): the same tree structure, the same shape at every
      leaf, and a gradient of the parameter's kind (real floating or complex);
    * against each tree in ``state`` (a dict ``{description: tree}``, e.g.
      ``{"the optimizer state's first moment m": state.mu}``; a tree that is ``None`` is
      skipped): the same structure and shapes (a :class:`adamjax.quantize.QuantizedArray`
      counts as the array it stands for).

    Raises:
      ValueError: a structure or shape mismatch, with the leaf's path (``['layer']['w']``),
        both structures or shapes, and the likely cause.
      TypeError: a gradient of another kind than its parameter (an integer or ``float0``
        gradient, a complex gradient of a real parameter or the reverse).
    """
    if params is not None:
        for path, g, p in _matched_leaves(fn, grads, params, "the parameters", _CAUSE_TREE):
            if g is None or p is None:
                continue
            if tuple(jnp.shape(g)) != tuple(jnp.shape(p)):
                raise ValueError(
                    f"{fn}: the gradient at {path} has shape {tuple(jnp.shape(g))}, but the "
                    f"parameter there has shape {tuple(jnp.shape(p))}. {_CAUSE_SHAPE}"
                )
            g_kind, p_kind = _kind(jnp.result_type(g)), _kind(jnp.result_type(p))
            if g_kind != p_kind and p_kind != "non-floating":
                raise TypeError(
                    f"{fn}: the gradient at {path} has dtype {jnp.result_type(g)} "
                    f"({g_kind}), but the parameter there has dtype {jnp.result_type(p)} "
                    f"({p_kind}). Likely cause: the value passed as the gradient is not the "
                    "gradient of this parameter (an integer input's gradient is float0; a "
                    "complex parameter needs a complex gradient, and a real one a real)."
                )
    for what, tree in (state or {}).items():
        if tree is None:
            continue
        for path, g, s in _matched_leaves(fn, grads, tree, what, _CAUSE_STATE):
            if g is None or s is None:
                continue
            if _kind(jnp.result_type(g)) == "non-floating":
                raise TypeError(
                    f"{fn}: the gradient at {path} has dtype {jnp.result_type(g)}, which is "
                    "not floating. Likely cause: the value passed as the gradient is not a "
                    "gradient (an integer input's gradient is float0)."
                )
            s_shape = tuple(s.shape) if hasattr(s, "signed") else tuple(jnp.shape(s))
            if tuple(jnp.shape(g)) != s_shape:
                raise ValueError(
                    f"{fn}: the gradient at {path} has shape {tuple(jnp.shape(g))}, but "
                    f"{what} holds shape {s_shape} there. {_CAUSE_STATE}"
                )
