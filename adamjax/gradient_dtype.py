"""Updates in the gradients' dtype (Optax's contract), the math and the apply in float32.

Optax's transformations return updates of the gradients' dtype, and users rely on it (a
``jax.lax.cond`` between a new and an old step must see one dtype on both branches). adamjax's
primitives compute in at least float32 (:func:`adamjax.base.compute_dtype`); the aliases
wrap their chain in :func:`keep_gradient_dtype`, which rounds the final update once to the
gradients' dtype.

For low-precision (bfloat16/float16) parameters the rounding of the update is then one more
rounding before the parameter add. :func:`adamjax.step.apply_gradients` avoids it: the
wrapper's fused apply recomputes the update in float32 and adds it to the parameters in
float32 (:func:`adamjax.apply_updates`), rounding the new parameters once.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from adamjax import _validate
from adamjax.step import FusedTransformation, apply_gradients


def _cast_like(updates: Any, grads: Any) -> Any:
    def cast(u, g):
        return u.astype(jax.numpy.result_type(g))

    return jax.tree.map(cast, updates, grads)


def keep_gradient_dtype(
    inner: optax.GradientTransformation, name: str = "optimizer"
) -> FusedTransformation:
    r"""``inner`` with its updates cast to the dtype of each gradient leaf.

    .. math::
        u_t = \operatorname{round}_{\mathrm{dtype}(g_t)}(\mathrm{inner}(g_t))

    ``init`` also refuses integer or bool parameter leaves (a gradient step cannot move
    them), naming the leaf. The state is ``inner``'s, unchanged. Extra keyword arguments to
    ``update`` are passed to ``inner`` (Optax's ``GradientTransformationExtraArgs``).

    With :func:`adamjax.step.apply_gradients` the step takes ``inner``'s own fused apply
    when it has one and it accepts the inputs; otherwise it computes ``inner``'s float32
    updates and adds them in float32, so low-precision parameters are rounded once per step.

    Args:
      inner: the composed chain, computing in at least float32.
      name: the optimizer's name, for error messages.
    """
    # The wrapper owns its fused apply (a typed field of the object it returns): it is
    # apply_gradients of ``inner``, which takes ``inner``'s own fused apply only if ``inner``
    # is exactly the FusedTransformation that owns one, else adds its float32 updates.
    unwrapped = inner
    inner = optax.with_extra_args_support(inner)

    def init(params):
        _validate.check_float_params(name, params)
        return inner.init(params)

    def update(updates, state, params=None, **extra_args):
        _validate.check_gradients(name, updates, params)
        out, new_state = inner.update(updates, state, params, **extra_args)
        return _cast_like(out, updates), new_state

    def fused_apply(grads, state, params):
        _validate.check_gradients(name, grads, params)
        return apply_gradients(unwrapped, grads, state, params)

    return FusedTransformation(init, update, fused_apply)
