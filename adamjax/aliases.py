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
from adamjax.base import GradientTransformation
from adamjax.bias import bias_correct
from adamjax.centered import center
from adamjax.flat import flat_layout
from adamjax.gradient_dtype import keep_gradient_dtype
from adamjax.lowering import chain
from adamjax.lr import scale_by_lr
from adamjax.moments import scale_by_inf_moment, scale_by_moments, scale_by_sum_of_squares
from adamjax.momentum import trace
from adamjax.nesterov import bias_correct_nesterov
from adamjax.precondition import precondition
from adamjax.weight_decay import add_decayed_weights


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
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    nesterov: bool = False,
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
      mu_dtype, nu_dtype: storage dtype of ``m`` or ``v`` alone (override ``state_dtype``;
        ``mu_dtype`` is Optax's argument, but ``None`` means float32 storage for
        low-precision parameters, where Optax stores ``m`` in the parameters' dtype).
      nesterov: NAdam's look-ahead (see :func:`adamjax.nadam`), as Optax's ``nesterov``.
      layout: ``"tree"`` keeps one moment per parameter leaf; ``"flat"`` holds them in one
        buffer per dtype (:func:`adamjax.flat.flat_layout`; same numbers, different state
        structure). For many small leaves keep the parameters flat too
        (:func:`adamjax.flat.ravel`).
      implementation: ``"auto"``: :func:`adamjax.apply_gradients` runs the fused native
        CPU kernel (params updated in place) where it gives the same results bit for bit,
        and ``update`` the composed chain (which XLA fuses with ``optax.apply_updates``);
        ``"native"``: ``update`` runs the kernel too (or raises); ``"jax"``: always the
        chain. Which configurations the kernel runs is decided by
        :func:`adamjax.lowering.kernel_gate` for this chain exactly as for the same
        primitives chained by hand. See :func:`adamjax.chain` and docs/fast-paths.md.

    The updates are returned in the gradients' dtype (Optax's contract; the math runs in
    float32, see :func:`adamjax.gradient_dtype.keep_gradient_dtype`).

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
    _validate.check_bool("adam", "nesterov", nesterov)
    if layout not in ("tree", "flat"):
        raise ValueError(f"adam: layout must be 'tree' or 'flat', got {layout!r}.")
    _check_flag("adam", "bias_correction", bias_correction)
    dtypes = dict(state_dtype=state_dtype, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    parts = [scale_by_moments(b1, b2, b1_decay=b1_decay, **dtypes)]  # m_t, v_t
    if nesterov:
        parts.append(bias_correct_nesterov(enabled=bias_correction))  # NAdam's m_hat_t, v_hat_t
    elif bias_correction is not False:
        parts.append(bias_correct(enabled=bias_correction))  # m_hat_t, v_hat_t
    parts.append(precondition(eps, eps_root))  # m_hat_t / (sqrt(v_hat_t) + eps)
    parts.append(scale_by_lr(learning_rate))  # theta_t = theta_{t-1} - alpha * ...
    opt = chain(*parts, implementation=implementation)
    opt = flat_layout(opt) if layout == "flat" else opt
    return keep_gradient_dtype(opt, "adam")  # updates in the gradients' dtype


def adamax(
    learning_rate: Any = 0.002,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    *,
    state_dtype: Any | None = None,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    implementation: str = "auto",
) -> GradientTransformation:
    r"""AdaMax (Sec. 7.1, Algorithm 2): Adam with the infinity norm.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad u_t = \max(\beta_2 u_{t-1}, |g_t|),\quad
        \theta_t = \theta_{t-1} - \frac{\alpha}{1-\beta_1^t}\frac{m_t}{u_t + \epsilon}

    The paper has no :math:`\epsilon`; the default 1e-8 only guards :math:`u_t = 0`.
    ``state_dtype`` (or ``mu_dtype``/``nu_dtype``) sets the storage of ``m``/``u``.
    ``implementation`` as in :func:`adam` (the native kernel has AdaMax's form too).
    """
    _validate.check_learning_rate("adamax", learning_rate)
    dtypes = dict(state_dtype=state_dtype, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    opt = chain(
        scale_by_inf_moment(b1, b2, **dtypes),  # m_t, u_t
        bias_correct(),  # m_t / (1 - b1^t)
        precondition(eps),  # ... / (u_t + eps)
        scale_by_lr(learning_rate),  # theta_t = theta_{t-1} - alpha * ...
        implementation=implementation,
    )
    return keep_gradient_dtype(opt, "adamax")


def adagrad(
    learning_rate: Any,
    eps: Any = 1e-8,
    *,
    initial_accumulator_value: Any = 0.0,
    state_dtype: Any | None = None,
):
    r"""AdaGrad (Duchi et al., 2011) as the paper's related work states it.

    .. math::
        \theta_t = \theta_{t-1} - \alpha \frac{g_t}{\sqrt{\sum_{i \le t} g_i^2 + \epsilon}}

    The epsilon sits *inside* the square root. This matches ``optax.adagrad`` with
    ``initial_accumulator_value=0`` and the same ``eps``; Optax's defaults differ (0.1, 1e-7),
    and Optax's second positional argument is ``initial_accumulator_value`` (pass keywords).
    """
    _validate.check_learning_rate("adagrad", learning_rate)
    opt = chain(
        scale_by_sum_of_squares(initial_accumulator_value, state_dtype=state_dtype),  # s_t
        precondition(eps=0.0, eps_root=eps),  # g_t / sqrt(s_t + eps)
        scale_by_lr(learning_rate),
    )
    return keep_gradient_dtype(opt, "adagrad")


def rmsprop(
    learning_rate: Any,
    decay: Any = 0.9,
    eps: Any = 1e-8,
    initial_scale: Any = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: Any | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    state_dtype: Any | None = None,
):
    r"""RMSProp (Tieleman & Hinton, 2012) as the paper's related work states it.

    .. math::
        v_t = \rho v_{t-1} + (1-\rho) g_t^2, \qquad
        \theta_t = \theta_{t-1} - \alpha \frac{g_t}{\sqrt{v_t + \epsilon}}

    The epsilon sits *inside* the square root (``optax.rmsprop``'s default
    ``eps_in_sqrt=True`` agrees; PyTorch puts it outside). By default no momentum and no
    bias correction: it is :func:`adam`'s moments with ``b1 = 0``.

    Args:
      learning_rate, decay, eps: :math:`\alpha`, :math:`\rho`, :math:`\epsilon`.
      state_dtype: storage dtype of the averages (math in float32).

    The options below are Optax's, with Optax's meaning:

    Keyword Args:
      initial_scale: :math:`v_0` (>= 0).
      eps_in_sqrt: ``False`` divides by :math:`\sqrt{v_t} + \epsilon` (PyTorch's form).
      centered: divide by :math:`\sqrt{v_t - \bar g_t^2 + \epsilon}` with
        :math:`\bar g_t` the EMA of the gradient (Graves 2013; :func:`adamjax.centered.center`).
      momentum, nesterov: a trace of the scaled steps, :math:`b_t = \mu b_{t-1} + \alpha d_t`
        (after the learning rate, as Optax; PyTorch's ``momentum`` is the same for a constant
        learning rate).
      bias_correction: divide the averages by :math:`1 - \rho^t`.
    """
    fn = "rmsprop"
    _validate.check_learning_rate(fn, learning_rate)
    for name, flag in (("eps_in_sqrt", eps_in_sqrt), ("centered", centered)):
        _validate.check_bool(fn, name, flag)
    _validate.check_bool(fn, "nesterov", nesterov)
    _validate.check_bool(fn, "bias_correction", bias_correction)
    b1 = decay if centered else 0.0  # the centred form keeps an EMA of g with the same rate
    parts = [scale_by_moments(b1, decay, nu_init=initial_scale, state_dtype=state_dtype)]
    if bias_correction:
        parts.append(bias_correct())  # v_t / (1 - rho^t) (and the EMA of g if centred)
    if centered:
        parts.append(center())  # (g_t, v_t - gbar_t^2)
    if eps_in_sqrt:
        parts.append(precondition(eps=0.0, eps_root=eps))  # g_t / sqrt(v_t + eps)
    else:
        parts.append(precondition(eps=eps))  # g_t / (sqrt(v_t) + eps)
    parts.append(scale_by_lr(learning_rate))
    if momentum is not None:
        parts.append(trace(momentum, nesterov, state_dtype=state_dtype))
    elif nesterov:
        raise ValueError("rmsprop: nesterov=True needs a momentum, got momentum=None.")
    return keep_gradient_dtype(chain(*parts), fn)


def sgd(
    learning_rate: Any,
    momentum: Any | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    state_dtype: Any | None = None,
):
    r"""Stochastic gradient descent, optionally with (Nesterov) momentum.

    .. math::
        b_t = \mu b_{t-1} + g_t,\quad
        \theta_t = \theta_{t-1} - \alpha \,(g_t + \mu b_t \text{ if Nesterov else } b_t)

    With ``momentum=None`` or the Python number 0 no state is kept. ``accumulator_dtype``
    (Optax's name) or ``state_dtype`` sets the storage dtype of :math:`b`.
    """
    _validate.check_learning_rate("sgd", learning_rate)
    _validate.check_bool("sgd", "nesterov", nesterov)
    no_momentum = momentum is None or (_validate.is_python_number(momentum) and momentum == 0)
    if nesterov and no_momentum:
        raise ValueError(f"sgd: nesterov=True needs a momentum > 0, got momentum={momentum}.")
    parts = []
    if not no_momentum:
        dtype = accumulator_dtype if accumulator_dtype is not None else state_dtype
        parts.append(trace(momentum, nesterov, state_dtype=dtype))
    parts.append(scale_by_lr(learning_rate))
    return keep_gradient_dtype(chain(*parts), "sgd")


def adadelta(
    learning_rate: Any = 1.0,
    rho: Any = 0.9,
    eps: Any = 1e-6,
    weight_decay: Any = 0.0,
    weight_decay_mask: Any = None,
    *,
    state_dtype=None,
):
    r"""AdaDelta (Zeiler, 2012), compared in the paper's Figure 2.

    .. math::
        \theta_t = \theta_{t-1} - \alpha
        \frac{\sqrt{E[\Delta\theta^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}} g_t

    Zeiler's method has no learning rate (``learning_rate=1``). The defaults
    :math:`\rho = 0.9`, :math:`\epsilon = 10^{-6}` are Optax's and PyTorch's; Zeiler's
    experiments used :math:`\rho = 0.95` (pass it to reproduce them). The larger
    :math:`\rho` makes the step, which starts near :math:`\sqrt{\epsilon}` and grows as
    :math:`E[\Delta\theta^2]` fills, grow about half as fast: on Optax's parabola with
    ``learning_rate=0.1`` it needs about twice Optax's budget of 10,000 steps.
    ``weight_decay`` is added to the gradient before the
    AdaDelta scaling (L2, Optax's meaning), on the leaves ``weight_decay_mask`` selects.
    """
    _validate.check_learning_rate("adadelta", learning_rate)
    opt = chain(
        add_decayed_weights(weight_decay, weight_decay_mask),  # g_t + wd * theta (L2)
        scale_by_adadelta(rho, eps, state_dtype=state_dtype),
        scale_by_lr(learning_rate),
    )
    return keep_gradient_dtype(opt, "adadelta")
