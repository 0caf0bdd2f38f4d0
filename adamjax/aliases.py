"""The optimizers of the paper and its related work, each a composition of primitives.

Put :func:`adam` beside Algorithm 1 of Kingma & Ba (ICLR 2015): one primitive per line.
Every numeric hyperparameter may be a Python number (validated here) or a JAX array,
traced or not (not validated), so ``jax.vmap`` over a grid of them needs no special API.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from adamjax import _validate
from adamjax.adadelta import scale_by_adadelta
from adamjax.base import GradientTransformation, chain
from adamjax.bias import bias_correct
from adamjax.flat import flat_layout
from adamjax.lr import scale_by_lr
from adamjax.moments import scale_by_inf_moment, scale_by_moments, scale_by_sum_of_squares
from adamjax.momentum import trace
from adamjax.precondition import precondition
from adamjax.step import adam_fused_apply, with_fused_apply


def _check_flag(fn: str, name: str, value: Any) -> None:
    if isinstance(value, bool):
        return
    if hasattr(value, "dtype") and jnp.result_type(value) == jnp.bool_:
        return
    raise TypeError(
        f"{fn}: {name} must be a bool or a boolean JAX array, got {value!r} "
        f"({type(value).__name__})."
    )


def adam(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    *,
    eps_root: Any = 0.0,
    bias_correction: Any = True,
    b1_decay: Any = 1.0,
    state_dtype: Any | None = None,
    layout: str = "tree",
    implementation: str = "auto",
) -> GradientTransformation:
    r"""Adam (Kingma & Ba, ICLR 2015, Algorithm 1).

    .. math::
        m_t = \beta_{1,t} m_{t-1} + (1-\beta_{1,t}) g_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
        \hat m_t = \frac{m_t}{1-\beta_1^t},\quad \hat v_t = \frac{v_t}{1-\beta_2^t},\quad
        \theta_t = \theta_{t-1} - \alpha_t \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}

    with :math:`\beta_{1,t} = \beta_1 \lambda^{t-1}` (Sec. 4; ``b1_decay`` = :math:`\lambda`).

    Args:
      learning_rate: :math:`\alpha` (>= 0), an array, or a schedule such as
        :func:`adamjax.inverse_sqrt_schedule` (the paper's :math:`\alpha/\sqrt t`).
      b1, b2: moment decay rates in [0, 1); defaults 0.9 and 0.999 as in the paper.
      eps: :math:`\epsilon` >= 0 outside the root (paper: 1e-8).
      eps_root: an optional epsilon inside the root (0 in the paper).
      bias_correction: ``False`` drops lines 9-10: the paper's "RMSProp with momentum" of
        Figure 4. May be a traced boolean, so a grid can mix both in one program.
      b1_decay: :math:`\lambda \in (0, 1]`; 1 is plain Adam.
      state_dtype: storage dtype of ``m`` and ``v`` (e.g. ``jnp.bfloat16``); math in float32.
      layout: ``"tree"`` keeps one moment per parameter leaf; ``"flat"`` holds them in one
        buffer per dtype (:func:`adamjax.flat.flat_layout`; same numbers, different state
        structure). For many small leaves keep the parameters flat too
        (:func:`adamjax.flat.ravel`).
      implementation: how :func:`adamjax.step.apply_gradients` runs the step. ``"auto"``
        uses the fused native CPU kernel (:mod:`adamjax.native`) on CPU where it gives the
        same results bit for bit, pure JAX elsewhere; ``"jax"`` or ``"native"`` force one.
        ``update`` itself is always the composed pure-JAX chain.

    Examples:
      Adam's first step is :math:`-\alpha\,\mathrm{sign}(g)` whatever the gradient's scale
      (:math:`\hat m_1 = g_1`, :math:`\sqrt{\hat v_1} = |g_1|`), up to :math:`\epsilon`:

      >>> import jax.numpy as jnp
      >>> import adamjax
      >>> opt = adamjax.adam(0.1)
      >>> params = {"w": jnp.array([1.0, 2.0, 3.0])}
      >>> state = opt.init(params)
      >>> grads = {"w": jnp.array([0.5, -20.0, 0.01])}
      >>> updates, state = opt.update(grads, state, params)
      >>> bool(jnp.allclose(updates["w"], -0.1 * jnp.sign(grads["w"]), rtol=1e-5))
      True
      >>> int(state[0].count)
      1
    """
    _validate.check_learning_rate("adam", learning_rate)
    if layout not in ("tree", "flat"):
        raise ValueError(f"adam: layout must be 'tree' or 'flat', got {layout!r}.")
    fused = adam_fused_apply(
        learning_rate,
        b1,
        b2,
        eps,
        bias_correction=bias_correction,
        eps_root=eps_root,
        b1_decay=b1_decay,
        state_dtype=state_dtype,
        implementation=implementation,
    )
    _check_flag("adam", "bias_correction", bias_correction)
    parts = [scale_by_moments(b1, b2, b1_decay=b1_decay, state_dtype=state_dtype)]  # m_t, v_t
    if bias_correction is not False:
        parts.append(bias_correct(b1, b2, enabled=bias_correction))  # m_hat_t, v_hat_t
    parts.append(precondition(eps, eps_root))  # m_hat_t / (sqrt(v_hat_t) + eps)
    parts.append(scale_by_lr(learning_rate))  # theta_t = theta_{t-1} - alpha * ...
    opt = chain(*parts)
    if fused is not None:
        opt = with_fused_apply(opt, fused)
    return flat_layout(opt) if layout == "flat" else opt


def adamax(
    learning_rate: Any = 0.002,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    *,
    state_dtype: Any | None = None,
) -> GradientTransformation:
    r"""AdaMax (Sec. 7.1, Algorithm 2): Adam with the infinity norm.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad u_t = \max(\beta_2 u_{t-1}, |g_t|),\quad
        \theta_t = \theta_{t-1} - \frac{\alpha}{1-\beta_1^t}\frac{m_t}{u_t + \epsilon}

    The paper has no :math:`\epsilon`; the default 1e-8 only guards :math:`u_t = 0`.
    """
    _validate.check_learning_rate("adamax", learning_rate)
    return chain(
        scale_by_inf_moment(b1, b2, state_dtype=state_dtype),  # m_t, u_t
        bias_correct(b1, b2),  # m_t / (1 - b1^t)
        precondition(eps),  # ... / (u_t + eps)
        scale_by_lr(learning_rate),  # theta_t = theta_{t-1} - alpha * ...
    )


def adagrad(learning_rate: Any, eps: Any = 1e-8, *, initial_accumulator_value: Any = 0.0):
    r"""AdaGrad (Duchi et al., 2011) as the paper's related work states it.

    .. math::
        \theta_t = \theta_{t-1} - \alpha \frac{g_t}{\sqrt{\sum_{i \le t} g_i^2 + \epsilon}}

    The epsilon sits *inside* the square root. This matches ``optax.adagrad`` with
    ``initial_accumulator_value=0`` and the same ``eps``; Optax's defaults differ (0.1, 1e-7).
    """
    _validate.check_learning_rate("adagrad", learning_rate)
    return chain(
        scale_by_sum_of_squares(initial_accumulator_value),  # s_t = s_{t-1} + g_t^2
        precondition(eps=0.0, eps_root=eps),  # g_t / sqrt(s_t + eps)
        scale_by_lr(learning_rate),
    )


def rmsprop(learning_rate: Any, decay: Any = 0.9, eps: Any = 1e-8, *, state_dtype=None):
    r"""RMSProp (Tieleman & Hinton, 2012) as the paper's related work states it.

    .. math::
        v_t = \rho v_{t-1} + (1-\rho) g_t^2, \qquad
        \theta_t = \theta_{t-1} - \alpha \frac{g_t}{\sqrt{v_t + \epsilon}}

    The epsilon sits *inside* the square root (``optax.rmsprop``'s default
    ``eps_in_sqrt=True`` agrees; PyTorch puts it outside). No momentum, no bias correction:
    it is :func:`adam`'s moments with ``b1 = 0``.
    """
    _validate.check_learning_rate("rmsprop", learning_rate)
    return chain(
        scale_by_moments(0.0, decay, state_dtype=state_dtype),  # v_t (m_t = g_t)
        precondition(eps=0.0, eps_root=eps),  # g_t / sqrt(v_t + eps)
        scale_by_lr(learning_rate),
    )


def sgd(learning_rate: Any, momentum: Any = 0.0, nesterov: bool = False, *, state_dtype=None):
    r"""Stochastic gradient descent, optionally with (Nesterov) momentum.

    .. math::
        b_t = \mu b_{t-1} + g_t,\quad
        \theta_t = \theta_{t-1} - \alpha \,(g_t + \mu b_t \text{ if Nesterov else } b_t)

    With ``momentum=0`` (the Python number) no state is kept.
    """
    _validate.check_learning_rate("sgd", learning_rate)
    if not isinstance(nesterov, bool):
        raise TypeError(f"sgd: nesterov must be a Python bool, got {nesterov!r}.")
    if nesterov and isinstance(momentum, (int, float)) and momentum == 0:
        raise ValueError("sgd: nesterov=True needs a momentum > 0, got momentum=0.")
    parts = []
    if not (isinstance(momentum, (int, float)) and momentum == 0):
        parts.append(trace(momentum, nesterov, state_dtype=state_dtype))
    parts.append(scale_by_lr(learning_rate))
    return chain(*parts)


def adadelta(learning_rate: Any = 1.0, rho: Any = 0.95, eps: Any = 1e-6, *, state_dtype=None):
    r"""AdaDelta (Zeiler, 2012), compared in the paper's Figure 2.

    .. math::
        \theta_t = \theta_{t-1} - \alpha
        \frac{\sqrt{E[\Delta\theta^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}} g_t

    Zeiler's method has no learning rate (``learning_rate=1``); defaults follow his paper.
    """
    _validate.check_learning_rate("adadelta", learning_rate)
    return chain(
        scale_by_adadelta(rho, eps, state_dtype=state_dtype),
        scale_by_lr(learning_rate),
    )
