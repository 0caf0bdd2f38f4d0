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
also reads p, 28 bytes). :func:`quantized_step` is Adam's or AdaMax's step with 8-bit
block-wise moments (codes and scales), decoded and encoded per block in the same pass (16
and 12 bytes per parameter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from adamjax.native import _calls, _library, _selftest
from adamjax.native._library import LIB
from adamjax.native._selftest import Hyper, quantized_self_test

__all__ = [
    "Hyper",
    "float_step",
    "native_available",
    "native_info",
    "quantized_available",
    "quantized_self_test",
    "quantized_step",
    "ready",
]

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
    whether XLA here contracts FMAs and whether the kernel models its rounding exactly.

    Whether a given chain and step run on the kernel (its parts, the leaves' dtypes, the
    backend, and this library's availability reported here) is decided in one place,
    :func:`adamjax.lowering.kernel_gate`, whose answer says why not.
    """
    available = native_available()
    return {
        "available": available,
        "reason": None if available else LIB.reason,
        "library": str(LIB.path) if LIB.path else None,
        "isa": _library.isa(),
        "fma_contraction": LIB.contract,
        "bitwise_equal_to_xla": LIB.bitwise,
    }


def _run(
    algo: str,
    mode: str,
    leaves: list[tuple],
    hyper: Hyper,
    fallback: Fallback,
    tables: tuple | None = None,
) -> list:
    """The kernel on the CPU (``tables``: the 8-bit kernel with these decode tables), the
    ``fallback`` elsewhere."""
    if not leaves:
        return []
    width = len(leaves[0])
    lead = 1 if tables is None else 3  # the row, and the tables

    def on_cpu(*flat):
        row, rest = flat[0], flat[lead:]
        leaves = [tuple(rest[i : i + width]) for i in range(0, len(rest), width)]
        if mode == "apply":
            # The call reads every gradient through one optimization barrier, so it runs
            # after the whole backward pass and XLA updates each parameter in place without
            # copying those that the backward pass still reads.
            grads = jax.lax.optimization_barrier([leaf[1] for leaf in leaves])
            leaves = [(leaf[0], gr, *leaf[2:]) for leaf, gr in zip(leaves, grads, strict=True)]
        if tables is None:
            return _calls.step(algo, mode, row, leaves, fma=LIB.contract)
        return _calls.quantized_step(algo, mode, row, flat[1:3], leaves, fma=LIB.contract)

    def elsewhere(*flat):
        rest = flat[lead:]
        return fallback([tuple(rest[i : i + width]) for i in range(0, len(rest), width)])

    flat = [jnp.asarray(x) for leaf in leaves for x in leaf]
    head = [hyper.row()] if tables is None else [hyper.row(), *map(jnp.asarray, tables)]
    # Registered for the CPU only; on another platform the caller's pure chain is lowered.
    outs = jax.lax.platform_dependent(*head, *flat, cpu=on_cpu, default=elsewhere)
    return [tuple(o) for o in outs]


_FLOAT_KERNELS = {
    ("adam", "update"): "(g, m, v)",
    ("adam", "apply"): "(p, g, m, v)",
    ("adamax", "update"): "(g, m, u)",
    ("adamax", "apply"): "(p, g, m, u)",
    ("adamw", "update"): "(p, g, m, v)",
    ("adamw", "apply"): "(p, g, m, v)",
}


def float_step(algo: str, mode: str, leaves: Leaves, hyper: Hyper, *, fallback: Fallback) -> list:
    r"""One step per leaf of Adam, AdaMax (Sec. 7.1) or AdamW with float32/bfloat16 moments.

    Per element, with the scalars of ``hyper`` (``inv_c`` the reciprocal bias corrections):

    .. math::
        m' = b_1 m + (1 - b_1) g, \quad v' = b_2 v + (1 - b_2) g^2
        \ (\text{AdaMax: } u' = \max(b_2 u, |g|)), \quad
        d = \frac{m'\, inv_{c_1}}{\sqrt{v'\, inv_{c_2}} + \epsilon}
        \ (\text{AdaMax: } \frac{m'\, inv_{c_1}}{u' + \epsilon})

    and the step ``s = neg_lr * d`` (AdamW: ``neg_lr * (d + wd * p)`` with ``wd =
    hyper.weight_decay``, which must be set). ``mode="update"`` returns ``(s, m', v')`` per
    leaf; ``mode="apply"`` returns ``(p + s, m', v')``, in place under donation.

    ``leaves``: one tuple per leaf, ``(g, m, v)`` for Adam's and AdaMax's update form and
    ``(p, g, m, v)`` otherwise (AdamW's update form reads ``p`` too): arrays of one shape,
    float32 ``p`` and ``g``, float32 or bfloat16 moments. ``fallback(leaves)`` returns the
    same as this function and runs on platforms other than the CPU (the caller's pure
    chain). Call only when :func:`native_available`.
    """
    if (algo, mode) not in _FLOAT_KERNELS:
        raise ValueError(
            f"float_step: no kernel {algo!r} in mode {mode!r}; the kernels are "
            f"{sorted(_FLOAT_KERNELS)}."
        )
    if algo == "adamw" and hyper.weight_decay is None:
        raise ValueError("adamw kernels need hyper.weight_decay (got None).")
    return _run(algo, mode, [tuple(x) for x in leaves], hyper, fallback)


def quantized_available() -> bool:
    """Whether :func:`quantized_step` can run: :func:`native_available` and a library that
    has the 8-bit targets (one built before them has the float kernels only)."""
    return native_available() and LIB.q8


def quantized_step(
    algo: str,
    mode: str,
    leaves: Leaves,
    hyper: Hyper,
    tables: tuple[Any, Any],
    *,
    fallback: Fallback,
) -> list:
    """One Adam (``algo="adam"``) or AdaMax (``"adamax"``) step per leaf with 8-bit
    block-wise moments (Dettmers et al., ICLR 2022), in one pass per block of 2048.

    Each leaf is ``(p, g, m_codes, m_scales, v_codes, v_scales)`` (``mode="apply"``) or the
    same without ``p`` (``"update"``): float32 ``p`` and ``g`` of one shape, uint8 codes
    ``[..., n_blocks, 2048]`` and float32 scales ``[..., n_blocks]`` with ``n_blocks =
    max(1, ceil(size / 2048))``. Per block the kernel decodes ``x = table[code] * scale``
    (``tables``: the float32 ``[256]`` decode tables of m and v), runs the float32 step of
    :func:`float_step` (or its update form), and encodes the new moments: scale = the block's
    absolute maximum (NaN if it holds a NaN or Inf), codes = nearest entries of
    ``x / scale`` clipped to [-1, 1] (v: at least index 1 where non-zero), padding as the
    code of 0 (index 127 for m, 0 for v). Returns ``(p or u, m_codes, m_scales, v_codes,
    v_scales)`` per leaf, in place under donation, ``u`` over ``g`` (16 bytes per parameter
    moved by the apply form, 12 by the update form). ``fallback`` takes the list of leaves
    and returns the same on other platforms. Call only when :func:`native_available`.
    """
    if algo not in ("adam", "adamax") or mode not in ("apply", "update"):
        raise ValueError(f"quantized_step: no kernel {algo!r} in mode {mode!r}.")
    return _run(algo, mode, [tuple(x) for x in leaves], hyper, fallback, tables=tuple(tables))
