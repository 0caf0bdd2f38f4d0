"""One optimizer step on the parameters: ``update`` + ``apply_updates``, fused when possible.

:func:`apply_gradients` is the generic step every train loop needs::

    params, opt_state = apply_gradients(opt, grads, opt_state, params)

It equals ``updates, opt_state = opt.update(grads, opt_state, params)`` followed by
``params = adamjax.apply_updates(params, updates)``. When the transformation offers a
*fused apply*, a function that computes the new parameters and state in one pass (for Adam
on CPU: the native kernel, which reads ``p, g, m, v`` and writes ``p, m, v``, 28 bytes per
float32 parameter, where the two-call form also writes and re-reads the update), that
function is used instead.

The hook
--------
A fused apply is a function ``fused(grads, opt_state, params) -> (new_params,
new_opt_state)`` with the same results as the two-call form, or ``None`` to decline at
trace time (e.g. on a backend or dtype it does not handle), in which case the two-call form
runs. It is attached to the
``update`` function of a transformation by :func:`with_fused_apply` and found by
:func:`fused_apply_of` (it is stored as the attribute ``adamjax_fused_apply`` of
``opt.update``). Any wrapper that rebuilds ``update`` (``optax.chain``, a user's own
wrapper) drops the hook, so a fused path is never taken for a transformation it was not
written for: the generic path is always correct.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adamjax.base import GradientTransformation, apply_updates

__all__ = ["FusedApply", "apply_gradients", "fused_apply_of", "with_fused_apply"]

FusedApply = Callable[[Any, Any, Any], tuple[Any, Any]]
_ATTR = "adamjax_fused_apply"


def with_fused_apply(opt: GradientTransformation, fused: FusedApply) -> GradientTransformation:
    """``opt`` with ``fused(grads, state, params) -> (params, state)`` attached as its fused apply.

    ``fused`` must give the results of ``opt.update`` followed by
    :func:`adamjax.apply_updates` (bit for bit, or within a tolerance its author states
    and tests). ``opt.init`` and ``opt.update`` are unchanged.
    """
    inner_update = opt.update

    def update(updates, state, params=None, **extra_args):
        return inner_update(updates, state, params, **extra_args)

    update.__doc__ = inner_update.__doc__
    setattr(update, _ATTR, fused)
    return type(opt)(opt.init, update)


def fused_apply_of(opt: GradientTransformation) -> FusedApply | None:
    """The fused apply attached to ``opt`` by :func:`with_fused_apply`, or ``None``."""
    return getattr(opt.update, _ATTR, None)


def apply_gradients(
    opt: GradientTransformation, grads: Any, opt_state: Any, params: Any
) -> tuple[Any, Any]:
    r"""One step: ``(new_params, new_opt_state)`` from the gradients.

    Uses ``opt``'s fused apply when it has one (see the module docstring), else
    ``opt.update`` and :func:`adamjax.apply_updates`. Call it inside ``jax.jit`` with the
    parameters and state donated (``donate_argnums``) so the step runs in place.

    Examples:
      One Adam step, jitted with parameters and state donated; the first step moves each
      parameter by :math:`\alpha` against its gradient's sign:

      >>> import jax
      >>> import jax.numpy as jnp
      >>> import adamjax
      >>> opt = adamjax.adam(0.1)
      >>> step = jax.jit(
      ...     lambda p, s, g: adamjax.apply_gradients(opt, g, s, p), donate_argnums=(0, 1)
      ... )
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> params, state = step(params, opt.init(params), {"w": jnp.array([3.0, -4.0])})
      >>> bool(jnp.allclose(params["w"], jnp.array([0.9, 2.1]), rtol=1e-5))
      True
    """
    fused = fused_apply_of(opt)
    if fused is not None:
        out = fused(grads, opt_state, params)
        if out is not None:
            return out
    updates, new_state = opt.update(grads, opt_state, params)
    return apply_updates(params, updates), new_state


# ----------------------------------------------------------------------------------------
# The fused apply of adamjax.adam: the native CPU kernel (adamjax.native), one call for
# all the leaves of the parameter tree (the dtype buckets under the flat layout).

_IMPLEMENTATIONS = ("auto", "jax", "native")


def _native_unsupported(b1: Any, eps_root: Any, b1_decay: Any, state_dtype: Any) -> str | None:
    """Why the native kernel cannot run this ``adam`` configuration (None if it can)."""
    import numbers

    import jax.numpy as jnp

    def is_number(x, value):
        return isinstance(x, numbers.Real) and not isinstance(x, bool) and float(x) == value

    if not is_number(eps_root, 0.0):
        return f"eps_root={eps_root!r} (the kernel has no epsilon inside the root)"
    if not is_number(b1_decay, 1.0):
        return f"b1_decay={b1_decay!r} (the kernel has a constant b1)"
    if is_number(b1, 0.0):
        return "b1=0 (no first moment is stored)"
    if state_dtype is not None and jnp.dtype(state_dtype) not in (
        jnp.dtype(jnp.float32),
        jnp.dtype(jnp.bfloat16),
    ):
        return f"state_dtype={state_dtype!r} (the kernel stores float32 or bfloat16)"
    return None


def adam_fused_apply(
    learning_rate: Any,
    b1: Any,
    b2: Any,
    eps: Any,
    *,
    bias_correction: Any,
    eps_root: Any = 0.0,
    b1_decay: Any = 1.0,
    state_dtype: Any | None = None,
    implementation: str = "auto",
) -> FusedApply | None:
    """The fused apply of ``adamjax.adam(...)``'s state, or None for the plain path.

    ``implementation="jax"`` gives None (update + apply_updates, which XLA fuses per leaf).
    ``"native"`` uses :func:`adamjax.native.adam_apply_leaves` (28 bytes/parameter, one pass over
    all the leaves, after the whole backward pass) and
    raises if this configuration or the library cannot. ``"auto"`` uses it when the
    default backend is the CPU, the library is available and the configuration and every
    leaf's dtypes are supported: then the results are bit-for-bit those of the plain path
    (``adamjax.native`` checks this at load time and its tests across dtypes and sizes);
    otherwise the plain path runs.
    """
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"adam: implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}."
        )
    if implementation == "jax":
        return None
    why = _native_unsupported(b1, eps_root, b1_decay, state_dtype)
    if why is not None:
        if implementation == "native":
            raise ValueError(f"adam: implementation='native' cannot run {why}; use 'auto'.")
        return None

    def fused(grads, opt_state, params):
        import jax

        from adamjax import native
        from adamjax.base import safe_increment

        moments, *rest = opt_state
        lr_state = rest[-1]
        leaves_p, treedef = jax.tree.flatten(params)
        leaves_g = treedef.flatten_up_to(grads)
        leaves_m = treedef.flatten_up_to(moments.mu)
        leaves_v = treedef.flatten_up_to(moments.nu)
        usable = all(
            native.supported(p, g, m, v)
            for p, g, m, v in zip(leaves_p, leaves_g, leaves_m, leaves_v, strict=True)
        )
        if implementation == "auto":
            use = usable and jax.default_backend() == "cpu" and native.native_available()
        else:
            if not usable:
                raise TypeError(
                    "adam: implementation='native' needs float32 parameters and gradients "
                    "(moments float32 or bfloat16) in every leaf."
                )
            if not native.native_available():
                raise RuntimeError(
                    "adam: implementation='native' but the native kernel is unavailable: "
                    f"{native.native_info()['reason']}"
                )
            use = True
        if not use:
            return None  # the caller takes the plain path
        count = safe_increment(moments.count)
        if callable(learning_rate):
            lr = learning_rate(lr_state.count)
            new_lr_state = type(lr_state)(count=safe_increment(lr_state.count))
        else:
            lr, new_lr_state = learning_rate, lr_state
        # One native call for all leaves: it reads every gradient, so XLA runs it after the
        # whole backward pass and each parameter is updated in place without copies.
        outs = native.adam_apply_leaves(
            leaves_p,
            leaves_g,
            leaves_m,
            leaves_v,
            count,
            lr,
            b1,
            b2,
            eps,
            bias_correction,
            native=True,
        )
        new_p = treedef.unflatten([o[0] for o in outs])
        new_m = treedef.unflatten([o[1] for o in outs])
        new_v = treedef.unflatten([o[2] for o in outs])
        new_moments = moments._replace(count=count, mu=new_m, nu=new_v)
        new_state = type(opt_state)((new_moments, *rest[:-1], new_lr_state))
        return new_p, new_state

    return fused
