"""Centred second moment (Graves, "Generating Sequences With Recurrent Neural Networks",
2013, Eq. 38-40): RMSProp divided by an estimate of the gradient's standard deviation.
"""

from __future__ import annotations

import jax

from adamjax.base import CompositionError, GradientTransformation, Moments, abs_sq, on_moments


def center() -> GradientTransformation:
    r"""Turn the moments into the gradient and its variance estimate.

    .. math::
        (m_t, v_t) \mapsto (g_t,\; v_t - |m_t|^2)

    Followed by ``precondition(eps=0, eps_root=eps)`` this is centred RMSProp,
    :math:`g_t / \sqrt{v_t - |m_t|^2 + \epsilon}` (Optax's ``rmsprop(centered=True)``,
    PyTorch's ``RMSprop(centered=True)`` with the epsilon outside the root). Both moments
    must use the same decay: ``scale_by_moments(b1=decay, b2=decay)``.
    """
    fn = "center"

    def centre(m: Moments) -> Moments:
        if m.kind != "ema_sq" or m.grad is None:
            raise CompositionError(f"{fn} needs Adam-style moments; got kind={m.kind!r}.")
        nu = jax.tree.map(lambda v, mu: v - abs_sq(mu), m.nu, m.mu)
        return m.replace(mu=m.grad, nu=nu)

    return on_moments(fn, "Put scale_by_moments(decay, decay) before center.", centre)
