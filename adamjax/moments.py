"""Moment estimators: line 1 of Algorithm 1 and its relatives (AdaMax, AdaGrad).

Each primitive keeps its running estimates in its state and passes them on as
:class:`adamjax.base.Moments`, to be bias-corrected and turned into a step by
:func:`adamjax.bias_correct` and :func:`adamjax.precondition`.

Reference: D. P. Kingma and J. L. Ba, "Adam: A Method for Stochastic Optimization",
ICLR 2015 (arXiv:1412.6980), Algorithm 1, Algorithm 2 (AdaMax, Sec. 7.1), Sec. 4.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adamjax import _validate, quantize
from adamjax.base import (
    GradientTransformation,
    Moments,
    abs_sq,
    compute_dtype,
    expect_updates,
    real_dtype,
    record_beta,
    safe_increment,
    state_dtype_for,
)
from adamjax.spec import Primitive, Spec

_FIRST = "Put scale_by_moments (or another moment estimator) first, on the raw gradients."


class MomentsState(NamedTuple):
    """State of :func:`scale_by_moments` and :func:`scale_by_inf_moment`.

    ``count`` is the number of steps taken (int32, saturating); ``mu`` the first moment
    (``None`` when ``b1`` is the Python number 0, where ``m_t = g_t`` needs no storage);
    ``nu`` the second moment (``v_t``, or ``u_t`` for AdaMax).
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in Optax
    mu: Any
    nu: Any


class SumOfSquaresState(NamedTuple):
    """State of :func:`scale_by_sum_of_squares`: the running sum of ``|g|^2``."""

    sum_of_squares: Any


def _state_zeros(
    params: Any, state_dtype: Any, real: bool = False, fill: Any = 0.0, *, signed: bool = True
) -> Any:
    """Moments filled with ``fill`` for ``params``; ``state_dtype="int8"``: block-wise
    8-bit storage (:mod:`adamjax.quantize`; ``signed`` picks the code: True for m, False
    for v >= 0)."""
    int8 = quantize.is_int8(state_dtype)

    def zeros(p):
        if int8:
            if jnp.iscomplexobj(p):
                raise TypeError(
                    "state_dtype='int8' stores real moments only; this parameter is "
                    f"{jnp.result_type(p)}: use state_dtype=None or jnp.bfloat16 for it."
                )
            stored = quantize.stored_zeros(p, compute_dtype(p), signed=signed)
            if isinstance(fill, (int, float)) and fill == 0:
                return stored
            return quantize.write(jnp.full_like(p, fill, dtype=compute_dtype(p)), stored)
        dt = state_dtype_for(p, state_dtype)
        return jnp.full_like(p, fill, dtype=real_dtype(dt) if real else dt)

    tree = jax.tree.map(zeros, params)
    return quantize.inside_boxes(tree) if int8 else tree


def _pick(specific: Any, shorthand: Any) -> Any:
    """``mu_dtype``/``nu_dtype`` when given, else the ``state_dtype`` shorthand."""
    return shorthand if specific is None else specific


def _moment_trees(state: Any) -> dict[str, Any]:
    """The stored moments, named for :func:`adamjax._validate.check_gradients`."""
    return {
        "the optimizer state's first moment m": state.mu,
        "the optimizer state's second moment v": state.nu,
    }


def _after_step(state: MomentsState, *, mu: Any, nu: Any, **_: Any) -> MomentsState:
    """The state after a step whose new moments are ``mu`` and ``nu`` (as the fused kernel
    computes them): the count advanced, the moments replaced."""
    return state._replace(count=safe_increment(state.count), mu=mu, nu=nu)


def _moments_out(mu, nu, count, kind, b1, b2, grads) -> Moments:
    (a1, k1), (a2, k2) = record_beta(b1), record_beta(b2)
    return Moments(mu, nu, count, kind, False, a1, a2, grads, (k1, k2))


def _step_inputs(fn: str, updates: Any, state: MomentsState) -> tuple[Any, jax.Array]:
    """The gradients, checked against the state and cast to the compute dtype, and ``t``."""
    grads = expect_updates(fn, updates, _FIRST)
    _validate.check_gradients(fn, grads, state=_moment_trees(state))
    grads = jax.tree.map(lambda g: jnp.asarray(g).astype(compute_dtype(g)), grads)
    return grads, safe_increment(state.count)


def _ema(decay: Any, old: Any, new: Any, out_dtype: Any) -> jax.Array:
    """``decay * old + (1 - decay) * new`` in the compute dtype of ``new``."""
    return decay * quantize.read(old, out_dtype) + (1 - decay) * new


def scale_by_moments(
    b1: Any = 0.9,
    b2: Any = 0.999,
    *,
    b1_decay: Any = 1.0,
    state_dtype: Any | None = None,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    nu_init: Any = 0.0,
) -> GradientTransformation:
    r"""Exponential moving averages of the gradient and its square (Algorithm 1, lines 7-8).

    .. math::
        b_{1,t} = b_1 \lambda^{t-1}, \quad
        m_t = b_{1,t}\, m_{t-1} + (1 - b_{1,t})\, g_t, \quad
        v_t = b_2\, v_{t-1} + (1 - b_2)\, |g_t|^2

    with :math:`m_0 = 0` and :math:`v_0 = 0` (or ``nu_init``). :math:`\lambda`
    (``b1_decay``) is the decay of the first moment's rate in the convergence theorem
    (Sec. 4); the default 1 is plain Adam. For
    complex gradients :math:`|g|^2 = g \bar g` and :math:`v` is real.

    Args:
      b1: first-moment decay :math:`\beta_1 \in [0, 1)`. With ``b1=0`` the first moment is
        the gradient itself (RMSProp) and is not stored.
      b2: second-moment decay :math:`\beta_2 \in [0, 1)`.
      b1_decay: :math:`\lambda \in (0, 1]`.
      state_dtype: storage dtype of both moments (e.g. ``jnp.bfloat16``); the math runs in
        at least float32 regardless. Defaults to the parameters' dtype promoted to float32.
      mu_dtype, nu_dtype: storage dtype of ``m`` or of ``v`` alone (override
        ``state_dtype``). A real dtype given for complex parameters keeps ``m`` complex.
      nu_init: :math:`v_0` (RMSProp's ``initial_scale`` in Optax), >= 0.

    Returns:
      A transformation whose output is :class:`adamjax.base.Moments` (``kind="ema_sq"``,
      carrying ``b1``, ``b2`` and ``g_t`` for the consumers),
      to be followed by :func:`adamjax.bias_correct` and/or :func:`adamjax.precondition`.
    """
    fn = "scale_by_moments"
    _validate.check_beta(fn, "b1", b1)
    _validate.check_beta(fn, "b2", b2)
    _validate.check_range(
        fn, "b1_decay", b1_decay, low=0.0, high=1.0, low_open=True, high_open=False
    )
    _validate.check_nonnegative(fn, "nu_init", nu_init)
    _validate.check_dtype(fn, "state_dtype", state_dtype, allow_int8=True)
    mu_dtype, nu_dtype = _pick(mu_dtype, state_dtype), _pick(nu_dtype, state_dtype)
    _validate.check_dtype(fn, "mu_dtype", mu_dtype, allow_int8=True)
    _validate.check_dtype(fn, "nu_dtype", nu_dtype, allow_int8=True)
    store_mu = not (
        _validate.is_python_number(b1, 0.0) and _validate.is_python_number(b1_decay, 1.0)
    )

    def init(params):
        mu = _state_zeros(params, mu_dtype) if store_mu else None
        nu = _state_zeros(params, nu_dtype, real=True, fill=nu_init, signed=False)
        return MomentsState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

    def update(updates, state, params=None):
        del params
        grads, count = _step_inputs(fn, updates, state)
        if _validate.is_python_number(b1_decay, 1.0):
            b1_t = b1
        else:
            b1_t = b1 * b1_decay ** (count - 1).astype(jnp.result_type(float))
        if store_mu:
            mu = jax.tree.map(lambda g, m: _ema(b1_t, m, g, g.dtype), grads, state.mu)
            new_mu = jax.tree.map(quantize.write, mu, state.mu)
        else:
            mu, new_mu = grads, None
        nu = jax.tree.map(lambda g, v: _ema(b2, v, abs_sq(g), real_dtype(g.dtype)), grads, state.nu)
        new_nu = jax.tree.map(quantize.write, nu, state.nu)
        out = _moments_out(mu, nu, count, "ema_sq", b1, b2, grads)
        return out, MomentsState(count=count, mu=new_mu, nu=new_nu)

    hyper = {"b1": b1, "b2": b2, "b1_decay": b1_decay}
    storage = {"mu_dtype": mu_dtype, "nu_dtype": nu_dtype, "nu_init": nu_init}
    spec = Spec(fn, hyper, storage, scale_by_moments, advance=_after_step)
    return Primitive(init, update, spec)


def scale_by_inf_moment(
    b1: Any = 0.9,
    b2: Any = 0.999,
    *,
    state_dtype: Any | None = None,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
) -> GradientTransformation:
    r"""AdaMax's moments (Algorithm 2, Sec. 7.1): an EMA of g and an infinity-norm EMA.

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
        u_t = \max(\beta_2 u_{t-1}, |g_t|)

    ``u_t`` needs no bias correction; :func:`adamjax.bias_correct` corrects only ``m_t``.

    Args:
      b1: first-moment decay in [0, 1).
      b2: decay of the infinity norm in [0, 1).
      state_dtype: storage dtype of ``m`` and ``u`` (math in at least float32).
      mu_dtype, nu_dtype: storage dtype of ``m`` or of ``u`` alone (override ``state_dtype``).

    Returns:
      A transformation that outputs :class:`adamjax.base.Moments` with ``kind="inf_norm"``.
    """
    fn = "scale_by_inf_moment"
    _validate.check_beta(fn, "b1", b1)
    _validate.check_beta(fn, "b2", b2)
    _validate.check_dtype(fn, "state_dtype", state_dtype, allow_int8=True)
    mu_dtype, nu_dtype = _pick(mu_dtype, state_dtype), _pick(nu_dtype, state_dtype)
    _validate.check_dtype(fn, "mu_dtype", mu_dtype, allow_int8=True)
    _validate.check_dtype(fn, "nu_dtype", nu_dtype, allow_int8=True)

    def init(params):
        return MomentsState(
            count=jnp.zeros([], jnp.int32),
            mu=_state_zeros(params, mu_dtype),
            nu=_state_zeros(params, nu_dtype, real=True, signed=False),
        )

    def update(updates, state, params=None):
        del params
        grads, count = _step_inputs(fn, updates, state)
        mu = jax.tree.map(lambda g, m: _ema(b1, m, g, g.dtype), grads, state.mu)
        nu = jax.tree.map(
            lambda g, u: jnp.maximum(b2 * quantize.read(u, real_dtype(g.dtype)), jnp.abs(g)),
            grads,
            state.nu,
        )
        new_state = MomentsState(
            count=count,
            mu=jax.tree.map(quantize.write, mu, state.mu),
            nu=jax.tree.map(quantize.write, nu, state.nu),
        )
        return _moments_out(mu, nu, count, "inf_norm", b1, b2, grads), new_state

    storage = {"mu_dtype": mu_dtype, "nu_dtype": nu_dtype}
    spec = Spec(fn, {"b1": b1, "b2": b2}, storage, scale_by_inf_moment, advance=_after_step)
    return Primitive(init, update, spec)


def scale_by_sum_of_squares(
    initial_accumulator_value: Any = 0.0, *, state_dtype: Any | None = None
) -> GradientTransformation:
    r"""AdaGrad's accumulator (Duchi et al., 2011): a running *sum* of squared gradients.

    .. math::
        s_t = s_{t-1} + |g_t|^2, \quad s_0 = \text{initial\_accumulator\_value}

    The first moment passed on is the raw gradient ``g_t``; follow with
    ``precondition(eps=0, eps_root=eps)`` for AdaGrad's ``g / sqrt(s + eps)``. There is no
    initialisation bias to correct, so :func:`adamjax.bias_correct` refuses this input.
    """
    fn = "scale_by_sum_of_squares"
    _validate.check_nonnegative(fn, "initial_accumulator_value", initial_accumulator_value)
    _validate.check_dtype(fn, "state_dtype", state_dtype)

    def init(params):
        def fill(p):
            dt = real_dtype(state_dtype_for(p, state_dtype))
            return jnp.full_like(p, initial_accumulator_value, dtype=dt)

        return SumOfSquaresState(sum_of_squares=jax.tree.map(fill, params))

    def update(updates, state, params=None):
        del params
        grads = expect_updates(fn, updates, _FIRST)
        grads = jax.tree.map(lambda g: jnp.asarray(g).astype(compute_dtype(g)), grads)
        s = jax.tree.map(
            lambda g, s: s.astype(real_dtype(g.dtype)) + abs_sq(g), grads, state.sum_of_squares
        )
        new_s = jax.tree.map(lambda x, old: x.astype(old.dtype), s, state.sum_of_squares)
        # The count is unused downstream (no bias correction) but keeps Moments uniform.
        out = Moments(mu=grads, nu=s, count=jnp.zeros([], jnp.int32), kind="sum_sq", grad=grads)
        return out, SumOfSquaresState(sum_of_squares=new_s)

    return GradientTransformation(init, update)
