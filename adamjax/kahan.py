"""Compensated (Kahan) summation for low-precision parameters, so that small updates do not stall.

Adding an update smaller than half a unit in the last place (ulp) to a bfloat16 parameter
and rounding to nearest gives the parameter back unchanged (8 significant bits: a weight
near 1 ignores any step below :math:`2^{-8}`). Compensated summation (Kahan, "Further
remarks on reducing truncation errors", CACM 8(1), 1965) keeps what each rounding lost in a
buffer :math:`c` and adds it back at the next step. Per low-precision parameter
:math:`\\theta` (bfloat16 or float16), with :math:`c` of the same dtype and the sums in
float32:

.. math::
    y = u_t + c_{t-1}, \\qquad
    \\theta_t = \\operatorname{round}(\\theta_{t-1} + y), \\qquad
    c_t = \\operatorname{round}\\big((\\theta_{t-1} + y) - \\theta_t\\big),

so that :math:`\\theta_t + c_t` follows the float32 sum :math:`\\theta_0 + \\sum u` where
:math:`\\theta_t` alone would stall. The compensation costs one more low-precision buffer
(2 bytes per bfloat16 parameter) and no randomness; stochastic rounding
(:mod:`adamjax.rounding`) needs no buffer but is exact only on average.

Error bound (tested in ``tests/test_kahan.py``): the float32 additions are exact to
:math:`2^{-24}` relative, and :math:`\\theta_{t-1} + y - \\theta_t` is exact in float32 and
at most half an ulp of :math:`\\theta`; storing it in bfloat16 (8 significant bits) loses at
most :math:`2^{-8}` of it, :math:`2^{-9}` ulp. After :math:`N` steps within one binade of
ulp :math:`U`,

.. math::
    \\Big|\\theta_N - \\big(\\theta_0 + \\textstyle\\sum_{t \\le N} u_t\\big)\\Big|
    \\le \\tfrac12 U + N\\,2^{-9}\\,U + O(N\\,2^{-24}\\,|\\theta|),

the first term being :math:`|c_N|`: within one ulp of the float32 sum for
:math:`N < 256` steps. With float16 (11 significant bits) the middle term is
:math:`N\\,2^{-12}\\,U`. Round to nearest alone loses every update below
:math:`U/2`: its error grows as :math:`\\sum |u_t|`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamjax import _validate
from adamjax._tree import float32_low_precision, is_low_precision, require_params
from adamjax.base import GradientTransformation, GradientTransformationExtraArgs

__all__ = ["KahanSummationState", "kahan_summation"]


class KahanSummationState(NamedTuple):
    """State of :func:`kahan_summation`.

    Attributes:
      inner: the wrapped optimizer's state.
      compensation: a tree with the structure of the parameters: for each bfloat16/float16
        leaf, what rounding the parameter has lost so far (same shape and dtype as the
        parameter); ``None`` for every other leaf (float32 parameters carry no buffer).
    """

    inner: Any
    compensation: Any


def kahan_summation(inner: GradientTransformation) -> GradientTransformation:
    """Apply ``inner``'s updates to bfloat16/float16 parameters with compensated summation.

    ``update(grads, state, params)`` runs ``inner.update`` on float32 gradients; then for
    each low-precision leaf, with :math:`c` the stored compensation and all sums in float32,

    .. math::
        s = \\theta + (u + c), \\quad \\theta' = \\operatorname{round}(s), \\quad
        \\Delta = \\operatorname{round}(\\theta' - \\theta), \\quad
        c' = \\operatorname{round}\\big(s - \\operatorname{round}(\\theta + \\Delta)\\big)

    (rounding to the parameter's dtype, to nearest) and returns :math:`\\Delta` as the
    update, in the parameter's dtype. The update *is* the compensated step, so every apply
    function lands on the same new parameter: :func:`optax.apply_updates` (Flax's own
    ``TrainState``, ``nnx.Optimizer``, a hand-written loop), :func:`adamjax.apply_updates`,
    :func:`adamjax.apply_gradients`, :class:`adamjax.flax.TrainState`. :math:`\\Delta` is
    exactly :math:`\\theta' - \\theta` whenever that difference is representable (always for a
    step of at most a few ulps; :math:`\\theta + \\Delta = \\theta'`); when it is not (a step
    comparable to :math:`\\theta` itself), the compensation is measured from what the apply
    actually gives, :math:`\\operatorname{round}(\\theta + \\Delta)`, so it stays the true loss.

    The contract is the one of the two-call form: the state assumes that the returned
    update is added to the parameters, once, by an apply function that adds in float32 (or
    exactly, as bfloat16 + bfloat16 does) and rounds to nearest. Scaling, masking or
    dropping the update after this wrapper breaks it: put this wrapper outermost (around
    ``optax.chain(...)``, a schedule injection or ``optax.MultiSteps``).

    float32 (and wider) leaves get ``inner``'s update unchanged and no buffer. Needs
    ``params``. See the module docstring for the error bound.

    Args:
      inner: the optimizer, e.g. ``adamjax.adam(1e-3)``.

    Returns:
      A transformation with state :class:`KahanSummationState`.

    Examples:
      A step of ``1e-3`` down from 1.0 is below half the bfloat16 spacing there
      (:math:`2^{-9}`): round to nearest never moves, the compensated parameter does:

      >>> import jax.numpy as jnp, optax, adamjax
      >>> def train(opt, steps=100):
      ...     params = {"w": jnp.ones((), jnp.bfloat16)}
      ...     state = opt.init(params)
      ...     for _ in range(steps):
      ...         u, state = opt.update({"w": jnp.ones(())}, state, params)
      ...         params = optax.apply_updates(params, u)
      ...     return float(params["w"])
      >>> train(optax.sgd(1e-3))  # round to nearest: stalled
      1.0
      >>> train(adamjax.kahan_summation(optax.sgd(1e-3)))  # 1 - 100 * 1e-3, nearest bfloat16
      0.8984375
    """
    if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
        raise TypeError(
            f"kahan_summation wraps an optimizer with init and update (an "
            f"optax.GradientTransformation); got {type(inner).__name__}. Pass the optimizer "
            "itself, e.g. kahan_summation(adamjax.adam(1e-3))."
        )
    inner = optax.with_extra_args_support(inner)

    def init(params):
        comp = jax.tree.map(lambda p: jnp.zeros_like(p) if is_low_precision(p) else None, params)
        return KahanSummationState(inner=inner.init(params), compensation=comp)

    def update(updates, state, params=None, **extra):
        _validate.check_gradients("kahan_summation", updates, params)
        require_params("kahan_summation", params, "compensate their rounding")
        u, inner_state = inner.update(float32_low_precision(updates), state.inner, params, **extra)
        leaves, treedef = jax.tree.flatten(params)
        u_leaves = treedef.flatten_up_to(u)
        c_leaves = treedef.flatten_up_to(state.compensation)
        steps, comps = [], []
        for p, du, c in zip(leaves, u_leaves, c_leaves, strict=True):
            if c is None:
                steps.append(du)
                comps.append(None)
                continue
            dt = jnp.result_type(p)
            p32 = p.astype(jnp.float32)
            s = p32 + (du.astype(jnp.float32) + c.astype(jnp.float32))
            step = (s.astype(dt).astype(jnp.float32) - p32).astype(dt)
            landed = (p32 + step.astype(jnp.float32)).astype(dt)  # what apply_updates gives
            steps.append(step)
            comps.append((s - landed.astype(jnp.float32)).astype(dt))
        new_state = KahanSummationState(
            inner=inner_state, compensation=jax.tree.unflatten(treedef, comps)
        )
        return jax.tree.unflatten(treedef, steps), new_state

    return GradientTransformationExtraArgs(init, update)
