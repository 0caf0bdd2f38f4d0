"""Adam's descendants, each a composition of primitives: AdamW, AMSGrad, NAdam, RAdam.

Like :func:`adamjax.adam`, every alias is one primitive per line of its paper. Numeric
hyperparameters may be Python numbers (validated) or JAX arrays (possibly traced, e.g. under
``jax.vmap`` or :func:`optax.inject_hyperparams`). Updates come back in the gradients' dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adamjax import _validate
from adamjax.amsgrad import keep_max_nu
from adamjax.base import GradientTransformation
from adamjax.bias import bias_correct
from adamjax.gradient_dtype import keep_gradient_dtype
from adamjax.lowering import chain
from adamjax.lr import scale_by_lr
from adamjax.moments import scale_by_moments
from adamjax.nesterov import bias_correct_nesterov
from adamjax.precondition import precondition
from adamjax.rectify import precondition_rectified
from adamjax.weight_decay import add_decayed_weights

__all__ = ["adamw", "amsgrad", "nadam", "nadamw", "radam"]


def _adam_like(
    fn: str,
    learning_rate: Any,
    b1: Any,
    b2: Any,
    storage: dict[str, Any],
    steps: Callable[[], list[GradientTransformation]],
    implementation: str = "auto",
) -> GradientTransformation:
    """Every alias here: ``chain(scale_by_moments, *steps(), scale_by_lr)``, updates kept in
    the gradients' dtype.

    ``storage`` holds the moments' storage dtypes (``scale_by_moments``' keywords), so a new
    storage option passes through here once. ``steps`` builds the alias's own middle of the
    chain; it is called after the moments are built, so the arguments are validated in the
    chain's order, as when each alias wrote its chain out.
    """
    _validate.check_learning_rate(fn, learning_rate)
    moments = scale_by_moments(b1, b2, **storage)  # m_t, v_t
    opt = chain(
        moments,
        *steps(),
        scale_by_lr(learning_rate),  # theta_t = theta_{t-1} - alpha_t * ...
        implementation=implementation,
    )
    return keep_gradient_dtype(opt, fn)


def adamw(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    state_dtype: Any | None = None,
    implementation: str = "auto",
) -> GradientTransformation:
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, ICLR 2019, Algorithm 2).

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \Big(\frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}}
        + \epsilon} + \lambda\, \theta_{t-1}\Big)

    with Adam's :math:`\hat m_t, \hat v_t`. The decay :math:`\lambda` (``weight_decay``) is
    multiplied by the learning rate, as in Optax's ``adamw`` and PyTorch's ``AdamW``
    (the paper's schedule multiplier :math:`\eta_t` is :math:`\alpha_t` here).

    Args:
      learning_rate: :math:`\alpha` or a schedule. b1, b2, eps, eps_root: as :func:`adam`.
      mu_dtype, nu_dtype, state_dtype: storage dtypes of the moments (math in float32).
      weight_decay: :math:`\lambda \ge 0`; Optax's default 1e-4 (PyTorch's is 1e-2). A
        number, a float32 scalar array (e.g. traced under ``jax.vmap``) or, as in Optax, a
        schedule ``count -> lambda_t`` of the 0-based step count.
      mask: the leaves that decay, as in Optax: a tree of booleans with the parameters'
        structure, or a function ``params -> tree``; ``None`` decays every leaf.
      nesterov: NAdam's look-ahead (NAdamW), as Optax's ``nesterov``.
      implementation: as :func:`adamjax.adam`'s: ``"auto"`` runs the native CPU kernel in
        :func:`adamjax.apply_gradients` (and the Flax train states) where it gives the chain's
        results bit for bit, ``update`` the chain; ``"native"`` runs ``update`` on the kernel
        too (or raises); ``"jax"`` always the chain. Which configurations the kernel
        runs (e.g. not ``nesterov``, nor ``eps_root`` other than 0) is decided by
        :func:`adamjax.lowering.kernel_gate`, as for the same primitives chained by hand
        (docs/fast-paths.md).

    Examples:
      The first step is :math:`-\alpha(\mathrm{sign}(g) + \lambda\theta)` up to
      :math:`\epsilon`:

      >>> import jax.numpy as jnp
      >>> import adamjax
      >>> opt = adamjax.adamw(0.1, weight_decay=0.5)
      >>> params = jnp.array([2.0, -4.0])
      >>> updates, _ = opt.update(jnp.array([3.0, 1.0]), opt.init(params), params)
      >>> bool(jnp.allclose(updates, -0.1 * (jnp.array([1.0, 1.0]) + 0.5 * params)))
      True
    """
    _validate.check_bool("adamw", "nesterov", nesterov)
    correct = bias_correct_nesterov() if nesterov else bias_correct()
    storage = dict(state_dtype=state_dtype, mu_dtype=mu_dtype, nu_dtype=nu_dtype)

    def steps() -> list[GradientTransformation]:
        return [
            correct,  # m_hat_t, v_hat_t (from the estimator's b1, b2)
            precondition(eps, eps_root),  # m_hat_t / (sqrt(v_hat_t) + eps)
            add_decayed_weights(weight_decay, mask),  # ... + lambda * theta_{t-1}
        ]

    return _adam_like("adamw", learning_rate, b1, b2, storage, steps, implementation)


def nadamw(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    nu_dtype: Any | None = None,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""NAdamW: :func:`adamw` with NAdam's look-ahead, Optax's ``nadamw``.

    .. math::
        \theta_t = \theta_{t-1} - \alpha_t \Big(\frac{\hat m_t}{\sqrt{\hat v_t +
        \epsilon_{root}} + \epsilon} + \lambda\, \theta_{t-1}\Big), \qquad
        \hat m_t = \frac{\beta_1 m_t}{1-\beta_1^{t+1}} + \frac{(1-\beta_1) g_t}{1-\beta_1^t}

    (Dozat, ICLR 2016 workshop, with constant :math:`\mu_t = \beta_1`, as :func:`nadam`;
    decoupled decay of Loshchilov & Hutter, ICLR 2019.) Arguments as :func:`adamw`; it is
    ``adamw(..., nesterov=True)``, which runs the chain (the native kernel has no
    look-ahead).
    """
    return adamw(
        learning_rate,
        b1,
        b2,
        eps,
        eps_root,
        mu_dtype,
        weight_decay,
        mask,
        nesterov=True,
        nu_dtype=nu_dtype,
        state_dtype=state_dtype,
    )


def amsgrad(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    nu_dtype: Any | None = None,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""AMSGrad (Reddi, Kale & Kumar, ICLR 2018, Algorithm 2) with Adam's bias correction.

    .. math::
        \hat v^{\max}_t = \max\Big(\hat v^{\max}_{t-1}, \frac{v_t}{1-\beta_2^t}\Big),\qquad
        \theta_t = \theta_{t-1} - \alpha \frac{m_t/(1-\beta_1^t)}{\sqrt{\hat v^{\max}_t +
        \epsilon_{root}} + \epsilon}

    The maximum is taken over the *bias-corrected* :math:`\hat v_t`, as in Optax's
    ``amsgrad``. PyTorch's ``Adam(amsgrad=True)`` takes it over the raw :math:`v_t` and
    divides afterwards: ``chain(scale_by_moments(), keep_max_nu(), bias_correct(), ...)``.
    The paper itself has no bias correction (drop ``bias_correct``). The three differ while
    :math:`1-\beta_2^t` still changes, i.e. in the first few thousand steps for
    :math:`\beta_2 = 0.999`.

    ``bias_correction_mu`` / ``bias_correction_nu`` (Optax's arguments, same meaning):
    ``False`` leaves :math:`m_t` / :math:`v_t` uncorrected; both ``False`` is the paper's
    Algorithm 2 with :math:`\beta_{1t} = \beta_1`.
    """
    _validate.check_bool("amsgrad", "bias_correction_mu", bias_correction_mu)
    _validate.check_bool("amsgrad", "bias_correction_nu", bias_correction_nu)
    correct = []
    if bias_correction_mu or bias_correction_nu:  # m_hat_t, v_hat_t
        correct = [bias_correct(mu=bias_correction_mu, nu=bias_correction_nu)]
    storage = dict(state_dtype=state_dtype, mu_dtype=mu_dtype, nu_dtype=nu_dtype)

    def steps() -> list[GradientTransformation]:
        return [
            *correct,
            keep_max_nu(nu_dtype=nu_dtype if nu_dtype is not None else state_dtype),  # max(.)
            precondition(eps, eps_root),  # m_hat_t / (sqrt(vmax_t) + eps)
        ]

    return _adam_like("amsgrad", learning_rate, b1, b2, storage, steps)


def nadam(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any | None = None,
    *,
    nu_dtype: Any | None = None,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""NAdam: Adam with Nesterov momentum (Dozat, ICLR 2016 workshop), as Optax has it.

    .. math::
        \hat m_t = \frac{\beta_1 m_t}{1-\beta_1^{t+1}} + \frac{(1-\beta_1) g_t}{1-\beta_1^t},
        \qquad \theta_t = \theta_{t-1} - \alpha \frac{\hat m_t}{\sqrt{v_t/(1-\beta_2^t) +
        \epsilon_{root}} + \epsilon}

    Dozat's Algorithm 2 with a constant :math:`\mu_t = \beta_1` and without the extra
    :math:`\beta_2` on :math:`\hat v_t`. PyTorch's ``NAdam`` follows Dozat's schedule
    :math:`\mu_t = \beta_1(1 - \frac12 0.96^{0.004 t})`, which never equals :math:`\beta_1`:
    its steps differ from these (see ``docs/optimizers.md``).
    """
    storage = dict(state_dtype=state_dtype, mu_dtype=mu_dtype, nu_dtype=nu_dtype)

    def steps() -> list[GradientTransformation]:
        return [
            bias_correct_nesterov(),  # Nesterov look-ahead m_hat_t, v_hat_t
            precondition(eps, eps_root),  # m_hat_t / (sqrt(v_hat_t) + eps)
        ]

    return _adam_like("nadam", learning_rate, b1, b2, storage, steps)


def radam(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    threshold: Any = 5.0,
    *,
    nesterov: bool = False,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""RAdam: rectified Adam (Liu et al., ICLR 2020, Algorithm 2).

    While the variance of the adaptive rate is intractable (:math:`\rho_t <` ``threshold``)
    the step is plain bias-corrected momentum :math:`\alpha \hat m_t`; afterwards it is
    Adam's step times the rectification :math:`r_t`
    (:func:`adamjax.rectify.precondition_rectified`). ``threshold=5`` as in Optax and
    PyTorch (the paper: 4).
    """
    _validate.check_bool("radam", "nesterov", nesterov)
    correct = bias_correct_nesterov() if nesterov else bias_correct()
    storage = dict(state_dtype=state_dtype, mu_dtype=mu_dtype, nu_dtype=nu_dtype)

    def steps() -> list[GradientTransformation]:
        return [
            correct,  # m_hat_t, v_hat_t
            # r_t m_hat_t / (sqrt(v_hat_t) + eps), or m_hat_t while rho_t < threshold
            precondition_rectified(eps, eps_root, threshold),
        ]

    return _adam_like("radam", learning_rate, b1, b2, storage, steps)
