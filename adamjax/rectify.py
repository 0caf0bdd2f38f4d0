"""RAdam's variance rectification (L. Liu et al., "On the Variance of the Adaptive Learning
Rate and Beyond", ICLR 2020, Algorithm 2).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adamjax import _validate
from adamjax.base import CompositionError, GradientTransformation, Moments, on_moments


def precondition_rectified(
    eps: Any = 1e-8, eps_root: Any = 0.0, threshold: Any = 5.0
) -> GradientTransformation:
    r"""RAdam's direction: the rectified adaptive step, or plain momentum early on.

    .. math::
        \rho_\infty = \frac{2}{1-\beta_2} - 1,\quad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t},\quad
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

    .. math::
        d_t = \begin{cases}
          r_t\, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon) & \rho_t \ge
          \text{threshold} \\
          \hat m_t & \text{otherwise}
        \end{cases}

    The paper's threshold is 4 (where :math:`r_t` becomes real); Optax and PyTorch use 5
    (Optax ``>=``, PyTorch ``>``: the same for every integer ``t`` in practice). PyTorch
    adds :math:`\epsilon` to :math:`\sqrt{v_t}` before the bias correction (an effective
    :math:`\epsilon/\sqrt{1-\beta_2^t}`); here, as in Optax, to :math:`\sqrt{\hat v_t}`.

    :math:`\beta_2` and :math:`t` are read from the bias-corrected
    :class:`adamjax.Moments` (follow :func:`adamjax.bias_correct`).
    """
    fn = "precondition_rectified"
    _validate.check_nonnegative(fn, "eps", eps)
    _validate.check_nonnegative(fn, "eps_root", eps_root)
    _validate.check_range(fn, "threshold", threshold, low=4.0)

    def rectified(m: Moments) -> Any:
        if m.kind != "ema_sq" or not m.corrected or m.b2 is None:
            raise CompositionError(
                f"{fn} needs bias-corrected Adam moments (scale_by_moments, then "
                f"bias_correct); got kind={m.kind!r}, corrected={m.corrected}."
            )

        def direction(mu, v):
            rd = v.dtype
            b2 = jnp.asarray(m.b2).astype(rd)
            t = m.count.astype(rd)
            rho_inf = 2 / (1 - b2) - 1
            b2t = b2**t
            rho = rho_inf - 2 * t * b2t / (1 - b2t)
            r = jnp.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            adaptive = r * mu / (jnp.sqrt(v + eps_root) + eps)
            return jnp.where(rho >= threshold, adaptive, mu)

        return jax.tree.map(direction, m.mu, m.nu)

    return on_moments(fn, "Put scale_by_moments, bias_correct first.", rectified)
