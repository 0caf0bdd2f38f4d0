"""Build-time validation of Python-number hyperparameters.

Traced or array hyperparameters (e.g. inside ``jax.vmap`` over a grid) are neither checked
nor rejected: their values are not known when the optimizer is built.
"""

from __future__ import annotations

import numbers
from typing import Any


def _is_python_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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
    """Raise ``ValueError`` if a Python-number ``value`` lies outside the stated interval.

    Args:
      fn: the optimizer or primitive being built (for the message).
      name: the hyperparameter's name.
      value: its value; anything but a Python/NumPy real number is not checked.
      low, high: the bounds (``None`` means unbounded).
      low_open, high_open: whether each bound is excluded.
    """
    if not _is_python_number(value):
        return
    v = float(value)
    bad = v != v  # NaN
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ValueError(
            f"{fn}: {name} must be in {lo}, {hi}, got {value!r}. "
            f"Pass a value in that range (traced JAX arrays are not checked)."
        )


def check_nonnegative(fn: str, name: str, value: Any) -> None:
    """Raise ``ValueError`` if a Python-number ``value`` is negative."""
    check_range(fn, name, value, low=0.0, high=None)


def check_learning_rate(fn: str, value: Any) -> None:
    """A learning rate is a non-negative number, an array, or a schedule (callable)."""
    if callable(value):
        return
    check_nonnegative(fn, "learning_rate", value)


def check_beta(fn: str, name: str, value: Any) -> None:
    """A decay rate ``b`` must lie in ``[0, 1)``."""
    check_range(fn, name, value, low=0.0, high=1.0)
