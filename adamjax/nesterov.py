"""Nesterov's look-ahead applied to Adam's first moment: NAdam (T. Dozat, "Incorporating
Nesterov Momentum into Adam", ICLR 2016 workshop), in the constant-momentum form of Optax.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adamjax.base import CompositionError, GradientTransformation, Moments, on_moments


def bias_correct_nesterov(*, enabled: Any = True) -> GradientTransformation:
    r"""Bias correction with Nesterov's look-ahead (NAdam), in place of :func:`bias_correct`.

    .. math::
        \hat m_t = \frac{\beta_1 m_t}{1 - \beta_1^{t+1}} + \frac{(1-\beta_1) g_t}{1-\beta_1^t},
        \qquad \hat v_t = \frac{v_t}{1 - \beta_2^t}

    Dozat's Algorithm 2 with a constant momentum :math:`\mu_t = \beta_1` and without the
    extra factor :math:`\beta_2` on :math:`\hat v_t` (Optax's ``nadam``). PyTorch's
    ``NAdam`` uses the schedule :math:`\mu_t = \beta_1 (1 - \tfrac12 0.96^{t \psi})` instead
    (``momentum_decay`` :math:`\psi = 0.004`): not the same optimizer.

    The rates and :math:`g_t` are read from the :class:`adamjax.Moments` of
    :func:`adamjax.scale_by_moments`.

    Args:
      enabled: ``True``, or a boolean array: where false, the moments pass uncorrected
        (the Nesterov form is kept).
    """
    fn = "bias_correct_nesterov"

    def correct(m: Moments) -> Moments:
        if m.kind != "ema_sq" or m.corrected or m.b1 is None or m.grad is None:
            raise CompositionError(
                f"{fn} needs uncorrected Adam moments from scale_by_moments (got "
                f"kind={m.kind!r}, corrected={m.corrected}); use it instead of bias_correct."
            )
        t = m.count

        def one(beta, k, dtype):
            c = 1 - jnp.asarray(beta).astype(dtype) ** k.astype(dtype)
            return c if enabled is True else jnp.where(enabled, c, jnp.ones_like(c))

        def look_ahead(mu, g):
            rd = jnp.finfo(mu.dtype).dtype
            b1 = jnp.asarray(m.b1).astype(rd)
            return b1 * mu / one(m.b1, t + 1, rd) + (1 - b1) * g / one(m.b1, t, rd)

        mu = jax.tree.map(look_ahead, m.mu, m.grad)
        nu = jax.tree.map(lambda v: v / one(m.b2, t, v.dtype), m.nu)
        return m.replace(mu=mu, nu=nu, corrected=True)

    return on_moments(fn, "Put scale_by_moments before bias_correct_nesterov.", correct)
