"""The adaptive step direction (Algorithm 1, line 11, before the learning rate).

Reference: Kingma & Ba, ICLR 2015, Algorithm 1 and Sec. 2.1.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adamjax import _validate
from adamjax.base import CompositionError, GradientTransformation, Moments, on_moments
from adamjax.spec import Primitive, Spec


def precondition(eps: Any = 1e-8, eps_root: Any = 0.0) -> GradientTransformation:
    r"""Turn (corrected) moments into a step direction.

    .. math::
        d_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    For AdaMax moments (``kind="inf_norm"``): :math:`d_t = \hat m_t / (u_t + \epsilon)`.
    The paper's Adam has ``eps_root = 0``; the related-work forms of RMSProp and AdaGrad put
    the epsilon inside the root (``eps = 0, eps_root = eps``).

    Args:
      eps: added to the denominator outside the square root, >= 0.
      eps_root: added inside the square root, >= 0 (not allowed with AdaMax moments).

    Returns:
      A stateless transformation from :class:`adamjax.base.Moments` to an update tree.
    """
    fn = "precondition"
    _validate.check_nonnegative(fn, "eps", eps)
    _validate.check_nonnegative(fn, "eps_root", eps_root)

    def direction(m: Moments) -> Any:
        if m.kind == "inf_norm":
            if not _validate.is_python_number(eps_root, 0.0):
                raise CompositionError(
                    "precondition: eps_root has no meaning for AdaMax's infinity norm "
                    f"(got eps_root={eps_root!r}); use eps."
                )
            out = jax.tree.map(lambda mu, u: mu / (u + eps), m.mu, m.nu)
        elif _validate.is_python_number(eps_root, 0.0):
            out = jax.tree.map(lambda mu, v: mu / (jnp.sqrt(v) + eps), m.mu, m.nu)
        else:
            out = jax.tree.map(lambda mu, v: mu / (jnp.sqrt(v + eps_root) + eps), m.mu, m.nu)
        return out

    hint = "Put scale_by_moments (and optionally bias_correct) before precondition."
    spec = Spec(fn, {"eps": eps, "eps_root": eps_root}, {}, precondition)
    stage = on_moments(fn, hint, direction)
    return Primitive(stage.init, stage.update, spec)
