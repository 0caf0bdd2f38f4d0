"""AMSGrad's running maximum of the second moment (Reddi, Kale & Kumar, "On the Convergence
of Adam and Beyond", ICLR 2018, Algorithm 2).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamjax import _validate
from adamjax.base import (
    CompositionError,
    GradientTransformation,
    expect_moments,
    real_dtype,
    state_dtype_for,
)


class MaxNuState(NamedTuple):
    """State of :func:`keep_max_nu`: the running maximum :math:`\\hat v_t` of the second moment."""

    nu_max: Any


def keep_max_nu(*, nu_dtype: Any | None = None) -> GradientTransformation:
    r"""Replace the second moment by its running maximum (AMSGrad).

    .. math::
        \hat v_t = \max(\hat v_{t-1}, v_t), \qquad \hat v_0 = 0

    Where it sits decides which :math:`v` is maximised:

    * after :func:`adamjax.bias_correct`: the maximum of the bias-corrected
      :math:`v_t/(1-\beta_2^t)`, as Optax's ``amsgrad`` (and :func:`adamjax.amsgrad`);
    * before it: the maximum of the raw :math:`v_t`, afterwards divided by
      :math:`1-\beta_2^t`, as PyTorch's ``Adam(amsgrad=True)``;
    * with no bias correction at all: the paper's Algorithm 2.

    Args:
      nu_dtype: storage dtype of the maximum (default: the compute dtype, >= float32).

    Returns:
      A transformation from :class:`adamjax.Moments` (``kind="ema_sq"``) to Moments whose
      ``nu`` is the running maximum.
    """
    fn = "keep_max_nu"
    _validate.check_dtype(fn, "nu_dtype", nu_dtype)

    def init(params):
        def zeros(p):
            return jnp.zeros_like(p, dtype=real_dtype(state_dtype_for(p, nu_dtype)))

        return MaxNuState(nu_max=jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        m = expect_moments(fn, updates, "Put scale_by_moments before keep_max_nu.")
        if m.kind != "ema_sq":
            raise CompositionError(
                f"keep_max_nu works on Adam's squared-gradient average; it received "
                f"kind={m.kind!r} moments (AdaMax's u_t is already a maximum)."
            )
        nu = jax.tree.map(lambda v, old: jnp.maximum(old.astype(v.dtype), v), m.nu, state.nu_max)
        stored = jax.tree.map(lambda v, old: v.astype(old.dtype), nu, state.nu_max)
        return m.replace(nu=nu), MaxNuState(nu_max=stored)

    return GradientTransformation(init, update)
