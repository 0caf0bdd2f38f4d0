"""Fused CPU kernels for the Adam family, bound to JAX through the XLA FFI.

This package knows kernels, not optimizers: it imports nothing from the rest of adamjax.
The library (:mod:`adamjax.lowering`) decides when a chain can run as a kernel, computes
its hyperparameters (:class:`Hyper`) with the chain's own expressions and passes its pure
chain as ``fallback``. One pass over each leaf does, per element, in float32::

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g * g)                 # AdaMax: u = max(b2 * u, |g|)
    d = (m * inv_c1) / (sqrt(v * inv_c2) + eps)     # AdaMax: (m * inv_c1) / (u + eps)
    d = d + weight_decay * p                        # AdamW only
    p = p + neg_lr * d        (apply)     or     u = neg_lr * d        (update)

(Kingma & Ba, ICLR 2015, Algorithms 1 and 2; AdamW: Loshchilov & Hutter, ICLR 2019,
Algorithm 2, with the decay scaled by the learning rate as in Optax's ``adamw``.)
``inv_c = 1 / (1 - b**t)``: XLA's CPU compiler turns the chain's division by a broadcast
scalar into this multiplication. The operations run in the order XLA runs the chain, with
its FMA contractions (measured once, see :func:`native_info`), so the results equal the
XLA-compiled chain bit for bit.

Gradients (and params) are float32; ``m`` and ``v`` float32 or bfloat16; any shapes. The
apply form reads p, g, m, v and writes p, m, v in place (28 bytes per float32 parameter
under donation); the update form reads g, m, v and writes u, m, v (24 bytes; AdamW's
also reads p, 28 bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from adamjax.native import _calls, _library, _selftest
from adamjax.native._library import LIB
from adamjax.native._selftest import Hyper

__all__ = [
    "Hyper",
    "adam_apply",
    "adam_update",
    "adamax_apply",
    "adamax_update",
    "adamw_apply",
    "adamw_update",
    "native_available",
    "native_info",
    "ready",
    "supported",
]

_F32 = jnp.dtype(jnp.float32)
_STATE_DTYPES = (_F32, jnp.dtype(jnp.bfloat16))

Leaves = Sequence[Any]
Fallback = Callable[..., list]


def native_available() -> bool:
    """Whether the native kernels can run in this process.

    The first call runs one tiny native step against the kernel's formula compiled by XLA,
    so a library built against an incompatible jaxlib is caught here, not in a training step.
    """
    if LIB.lib is None:
        return False
    if LIB.verified is None:
        with LIB.lock:
            if LIB.verified is None:
                LIB.verified = _selftest.self_test()
    return bool(LIB.verified)


def ready() -> bool:
    """:func:`native_available`, for a CPU step about to use the kernel: when it is False
    (and not switched off on purpose) one RuntimeWarning says why."""
    ok = native_available()
    if not ok:
        _library.warn_unavailable()
    return ok


def native_info() -> dict[str, Any]:
    """What the native path is: availability, the reason if off, library, instruction set,
    whether XLA here contracts FMAs and whether the kernel models its rounding exactly."""
    available = native_available()
    return {
        "available": available,
        "reason": None if available else LIB.reason,
        "library": str(LIB.path) if LIB.path else None,
        "isa": _library.isa(),
        "fma_contraction": LIB.contract,
        "bitwise_equal_to_xla": LIB.bitwise,
    }


def supported(grads: Any, m: Any, v: Any, params: Any = None) -> bool:
    """Whether the kernel takes these arrays: float32 grads (and params), float32 or
    bfloat16 moments, all of one shape."""
    shape = jnp.shape(grads)
    if jnp.result_type(grads) != _F32:
        return False
    if params is not None and (jnp.result_type(params) != _F32 or jnp.shape(params) != shape):
        return False
    return all(jnp.result_type(s) in _STATE_DTYPES and jnp.shape(s) == shape for s in (m, v))


def _run(algo: str, mode: str, leaves: list[tuple], hyper: Hyper, fallback: Fallback) -> list:
    if not leaves:
        return []
    width = len(leaves[0])

    def on_cpu(row, *flat):
        leaves = [tuple(flat[i : i + width]) for i in range(0, len(flat), width)]
        if mode == "apply":
            # The call reads every gradient through one optimization barrier, so it runs
            # after the whole backward pass and XLA updates each parameter in place without
            # copying those that the backward pass still reads.
            grads = jax.lax.optimization_barrier([leaf[1] for leaf in leaves])
            leaves = [(p, g, m, v) for (p, _, m, v), g in zip(leaves, grads, strict=True)]
        return _calls.step(algo, mode, row, leaves, fma=LIB.contract)

    def elsewhere(row, *flat):
        del row
        return fallback([tuple(flat[i : i + width]) for i in range(0, len(flat), width)])

    flat = [jnp.asarray(x) for leaf in leaves for x in leaf]
    # Registered for the CPU only; on another platform the caller's pure chain is lowered.
    outs = jax.lax.platform_dependent(hyper.row(), *flat, cpu=on_cpu, default=elsewhere)
    return [tuple(o) for o in outs]


def adam_update(grads: Leaves, m: Leaves, v: Leaves, hyper: Hyper, *, fallback: Fallback):
    """One Adam step per leaf in update form: ``[(u, m, v), ...]`` with ``u = neg_lr * d``.

    ``grads``, ``m``, ``v``: sequences of arrays, leaf ``k`` of one shape (see
    :func:`supported`); ``hyper``: the step's scalars. ``fallback(leaves)`` takes the list of
    ``(g, m, v)`` and returns the same as this function: it runs on platforms other than the
    CPU. Call only when :func:`native_available`.
    """
    return _run("adam", "update", list(zip(grads, m, v, strict=True)), hyper, fallback)


def adam_apply(
    params: Leaves, grads: Leaves, m: Leaves, v: Leaves, hyper: Hyper, *, fallback: Fallback
):
    """One Adam step per leaf applied to the parameters: ``[(p, m, v), ...]``, in place
    under donation; ``fallback`` takes the list of ``(p, g, m, v)``. See :func:`adam_update`."""
    return _run("adam", "apply", list(zip(params, grads, m, v, strict=True)), hyper, fallback)


def adamax_update(grads: Leaves, m: Leaves, u: Leaves, hyper: Hyper, *, fallback: Fallback):
    """AdaMax (Sec. 7.1) in update form: ``u = max(b2 u, |g|)``, ``d = m inv_c1 / (u + eps)``."""
    return _run("adamax", "update", list(zip(grads, m, u, strict=True)), hyper, fallback)


def adamax_apply(
    params: Leaves, grads: Leaves, m: Leaves, u: Leaves, hyper: Hyper, *, fallback: Fallback
):
    """AdaMax applied to the parameters; see :func:`adamax_update` and :func:`adam_apply`."""
    return _run("adamax", "apply", list(zip(params, grads, m, u, strict=True)), hyper, fallback)


def adamw_update(
    params: Leaves, grads: Leaves, m: Leaves, v: Leaves, hyper: Hyper, *, fallback: Fallback
):
    """AdamW in update form: ``[(u, m, v), ...]`` with ``u = neg_lr * (d + wd * p)``, ``d``
    Adam's direction and ``wd = hyper.weight_decay`` (which must be set). The parameters are
    only read; ``fallback`` takes the list of ``(p, g, m, v)``. See :func:`adam_update`."""
    leaves = list(zip(params, grads, m, v, strict=True))
    return _run("adamw", "update", leaves, _with_decay(hyper), fallback)


def adamw_apply(
    params: Leaves, grads: Leaves, m: Leaves, v: Leaves, hyper: Hyper, *, fallback: Fallback
):
    """AdamW applied to the parameters: ``p = p + neg_lr * (d + wd * p)``, in place under
    donation; see :func:`adamw_update` and :func:`adam_apply`."""
    leaves = list(zip(params, grads, m, v, strict=True))
    return _run("adamw", "apply", leaves, _with_decay(hyper), fallback)


def _with_decay(hyper: Hyper) -> Hyper:
    if hyper.weight_decay is None:
        raise ValueError("adamw kernels need hyper.weight_decay (got None).")
    return hyper
