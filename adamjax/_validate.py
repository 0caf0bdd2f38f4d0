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


def is_python_number(value: Any) -> bool:
    """A Python or NumPy real scalar (not a bool): a value known when the optimizer is built."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


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


def check_dtype(fn: str, name: str, value: Any, *, allow_int8: bool = False) -> None:
    """A storage dtype: ``None`` or something ``jnp.dtype`` accepts that is inexact.

    ``allow_int8``: the moment estimators also take ``"int8"``, 8-bit block-wise storage
    (:mod:`adamjax.quantize`).
    """
    if value is None:
        return
    if isinstance(value, str) and value == "int8":
        if allow_int8:
            return
        raise TypeError(
            f"{fn}: {name}='int8' (8-bit block-wise moments) is a storage format of the "
            "moment estimators (scale_by_moments, scale_by_inf_moment: adam, adamw, adamax, "
            "rmsprop); this state is stored in floating point: pass None, jnp.float32 or "
            "jnp.bfloat16."
        )
    try:
        dtype = jnp.dtype(value)
    except TypeError as err:
        raise TypeError(
            f"{fn}: {name} must be None or a floating dtype such as jnp.bfloat16, got {value!r}."
        ) from err
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"{fn}: {name} must be a floating (or complex) dtype, got {dtype}: moments of "
            f"an integer dtype would be truncated to zero. Pass e.g. {name}=jnp.bfloat16."
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
