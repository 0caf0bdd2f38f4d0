"""Bias correction of the moment estimates (Algorithm 1, lines 9-10; Sec. 3).

Reference: Kingma & Ba, ICLR 2015, Sec. 3 "Initialization bias correction".
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adamjax import _validate
from adamjax.base import CompositionError, GradientTransformation, Moments, on_moments
from adamjax.spec import Primitive, Spec


def _correction(beta: Any, count: jax.Array, dtype: Any, enabled: Any) -> jax.Array:
    """``1 - beta**t`` in ``dtype`` (or 1 where correction is switched off)."""
    t = count.astype(dtype)
    c = 1 - jnp.asarray(beta).astype(dtype) ** t
    if enabled is True:
        return c
    return jnp.where(enabled, c, jnp.ones_like(c))


def _agree(name: str, given: Any, recorded: float | None) -> None:
    """Raise if a Python-number ``given`` rate differs from the estimator's Python number."""
    if given is None or recorded is None or not _validate.is_python_number(given):
        return
    if float(given) != recorded:
        raise CompositionError(
            f"bias_correct({name}={given!r}) disagrees with the moment estimator's "
            f"{name}={recorded!r}: the correction 1 - {name}^t must use the rate the moments "
            f"were averaged with. Call bias_correct() without arguments to use the "
            f"estimator's rates."
        )


def bias_correct(
    b1: Any = None, b2: Any = None, *, enabled: Any = True, mu: bool = True, nu: bool = True
) -> GradientTransformation:
    r"""Divide the moments by their initialisation bias (Algorithm 1, lines 9-10).

    .. math::
        \hat m_t = \frac{m_t}{1 - \beta_1^t}, \qquad \hat v_t = \frac{v_t}{1 - \beta_2^t}

    For AdaMax moments (``kind="inf_norm"``) only :math:`m_t` is corrected (Algorithm 2).
    With the decaying :math:`\beta_{1,t}` of Sec. 4 the correction keeps the paper's
    :math:`1 - \beta_1^t` (Algorithm 1 unchanged).

    The rates are those the moment estimator recorded in :class:`adamjax.Moments` (arrays,
    so a vmapped ``b1`` stays batched): ``bias_correct()`` needs no arguments.

    Args:
      b1, b2: optional, only as a check: a Python number that differs from the estimator's
        Python-number rate raises :class:`adamjax.CompositionError` naming both. (Where
        either side is an array its value is unknown at trace time; the estimator's rate is
        used.)
      enabled: ``True`` (default), or a boolean JAX array, possibly traced, so that one
        compiled program can hold corrected and uncorrected runs (``jnp.where``). Pass
        ``False`` only through the alias; to drop correction, leave this primitive out.
      mu, nu: which moment to correct (static booleans, at least one True). Optax's
        ``amsgrad`` has these as ``bias_correction_mu`` and ``bias_correction_nu``; its
        paper (Reddi et al.) corrects neither.

    Returns:
      A stateless transformation from :class:`Moments` to corrected :class:`Moments`.
    """
    fn = "bias_correct"
    _validate.check_bool(fn, "mu", mu)
    _validate.check_bool(fn, "nu", nu)
    if not (mu or nu):
        raise ValueError(
            f"{fn}: mu=False and nu=False correct nothing; leave bias_correct out of the chain."
        )
    if b1 is not None:
        _validate.check_beta(fn, "b1", b1)
    if b2 is not None:
        _validate.check_beta(fn, "b2", b2)

    def correct(m: Moments) -> Moments:
        if m.kind == "sum_sq":
            raise CompositionError(
                "bias_correct received AdaGrad's running sum of squares "
                "(from scale_by_sum_of_squares), which has no initialisation bias; "
                "remove bias_correct from this chain."
            )
        if m.corrected:
            raise CompositionError(
                "bias_correct received Moments that are already bias-corrected; "
                "it appears twice in the chain."
            )

        if m.b1 is None or m.b2 is None:
            raise CompositionError(
                "bias_correct received Moments without decay rates; build them with "
                "scale_by_moments or scale_by_inf_moment."
            )
        _agree("b1", b1, m.known_betas[0])
        _agree("b2", b2, m.known_betas[1])

        def corr_mu(mu):
            return mu / _correction(m.b1, m.count, jnp.finfo(mu.dtype).dtype, enabled)

        new_mu = jax.tree.map(corr_mu, m.mu) if mu else m.mu
        if m.kind == "inf_norm" or not nu:
            new_nu = m.nu
        else:
            new_nu = jax.tree.map(lambda v: v / _correction(m.b2, m.count, v.dtype, enabled), m.nu)
        return m.replace(mu=new_mu, nu=new_nu, corrected=True)

    hint = "Put scale_by_moments (or scale_by_inf_moment) before bias_correct."
    options = {} if mu and nu else {"mu": mu, "nu": nu}
    spec = Spec(fn, {"b1": b1, "b2": b2, "enabled": enabled}, options, bias_correct)
    stage = on_moments(fn, hint, correct)
    return Primitive(stage.init, stage.update, spec)
