"""How XLA rounds here, and a one-time check that the loaded kernel agrees with it.

The kernel copies the rounding of XLA's CPU code: whether LLVM contracts ``a * b + c``
into one FMA inside a fusion. :func:`xla_rounding` measures it once; :func:`self_test`
then runs one tiny native step against :func:`reference`, the kernel's formula in JAX.
:func:`quantized_self_test` checks the 8-bit kernel the same way, against the steps its
caller passes (the chain as XLA compiles it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamjax.native import _calls
from adamjax.native._library import LIB


class Hyper(NamedTuple):
    """The float32 scalars of one step (each ``[]``, or ``[k]`` for ``k`` vmapped configs).

    ``neg_lr = -alpha_t``; ``b1, one_minus_b1, b2, one_minus_b2`` the moment EMA weights;
    ``eps``; ``inv_c1 = 1 / (1 - b1**t)`` and ``inv_c2 = 1 / (1 - b2**t)`` (1 without bias
    correction); ``weight_decay`` AdamW's weight decay (None for the other kernels, whose
    rows hold 8 values). The caller computes them with the same expressions as its pure
    chain, so the kernel sees the same bits.
    """

    neg_lr: Any
    b1: Any
    one_minus_b1: Any
    b2: Any
    one_minus_b2: Any
    eps: Any
    inv_c1: Any
    inv_c2: Any
    weight_decay: Any = None

    def row(self) -> jax.Array:
        """The kernel's operand: ``[..., 8]`` float32 (``[..., 9]`` with ``weight_decay``;
        the order of HyperIndex in adam_ffi.cc)."""
        values = [x for x in self if x is not None]
        return jnp.stack([jnp.asarray(x, jnp.float32) for x in values], axis=-1)


def reference(algo: str, mode: str, h: Hyper, leaf: tuple) -> tuple:
    """The kernel's formula in plain JAX, for one leaf (used by the self-test)::

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2   (AdaMax: u = max(b2 u, |g|))
    d = (m * inv_c1) / (sqrt(v * inv_c2) + eps)       (AdaMax: (m * inv_c1) / (u + eps))
    d = d + weight_decay * p                          (AdamW only)
    out = p + neg_lr * d  (apply)  or  neg_lr * d  (update)
    """
    p, g, m0, v0 = leaf if len(leaf) == 4 else (None, *leaf)
    m = h.b1 * m0.astype(jnp.float32) + h.one_minus_b1 * g
    if algo == "adamax":
        v = jnp.maximum(h.b2 * v0.astype(jnp.float32), jnp.abs(g))
        d = (m * h.inv_c1) / (v + h.eps)
    else:
        v = h.b2 * v0.astype(jnp.float32) + h.one_minus_b2 * (g * g)
        d = (m * h.inv_c1) / (jnp.sqrt(v * h.inv_c2) + h.eps)
    if algo == "adamw":
        d = d + h.weight_decay * p
    out = h.neg_lr * d if mode == "update" else p + h.neg_lr * d
    return out, m.astype(m0.dtype), v.astype(v0.dtype)


def xla_rounding(cpu) -> tuple[bool, bool]:
    """How XLA's CPU compiler rounds the step's multiply-adds: ``(contracts, modelled)``.

    On CPUs with FMA, LLVM fuses ``a * b + c`` inside an XLA fusion into one FMA (rounded
    once). For the moment EMAs ``d * s + w * x`` it fuses ``d * s`` when the state ``s``
    is float32 and ``w * x`` when ``s`` was widened from bfloat16. The kernel copies that
    (attribute ``fma=1``) or rounds every product (0). ``modelled`` is False when XLA does
    something else, in which case results can differ in the last bit.
    """
    rng = np.random.default_rng(0)
    n = 4096
    x = rng.standard_normal(n).astype(np.float32)
    s32 = rng.standard_normal(n).astype(np.float32)
    sbf = np.asarray(jnp.asarray(s32).astype(jnp.bfloat16))
    d, w = np.float32(0.9), np.float32(1 - 0.9)

    def fma(a, b, c):  # float32 fma through float64 (exact product, one rounding of the sum
        # that is right except for double-rounding cases of probability ~2**-29)
        return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)

    ema = jax.jit(lambda s, x: 0.9 * s.astype(jnp.float32) + (1 - 0.9) * x)
    axpy = jax.jit(lambda p, x: p + (-0.001) * x)
    # AdamW's decay term: a quotient plus weight_decay * p (add_decayed_weights).
    decay = jax.jit(lambda s, x, p: s / (jnp.abs(x) + 1.0) + 0.01 * p)
    got32 = np.asarray(ema(jax.device_put(s32, cpu), jax.device_put(x, cpu)))
    gotbf = np.asarray(ema(jax.device_put(sbf, cpu), jax.device_put(x, cpu)))
    gotp = np.asarray(axpy(jax.device_put(s32, cpu), jax.device_put(x, cpu)))
    gotw = np.asarray(decay(*(jax.device_put(a, cpu) for a in (s32, x, sbf.astype(np.float32)))))
    sb = sbf.astype(np.float32)
    nlr = np.float32(-0.001)
    quot, wd = s32 / (np.abs(x) + np.float32(1)), np.float32(0.01)
    fused = (
        np.array_equal(got32, fma(d, s32, w * x))
        and np.array_equal(gotbf, fma(w, x, d * sb))
        and np.array_equal(gotp, fma(nlr, x, s32))
        and np.array_equal(gotw, fma(wd, sb, quot))
    )
    plain = (
        np.array_equal(got32, d * s32 + w * x)
        and np.array_equal(gotbf, d * sb + w * x)
        and np.array_equal(gotp, s32 + nlr * x)
        and np.array_equal(gotw, quot + wd * sb)
    )
    if fused or plain:
        return fused, True
    # Something else: contract where it agrees more often.
    agree = np.mean(got32 == fma(d, s32, w * x)) >= np.mean(got32 == d * s32 + w * x)
    return bool(agree), False


def self_test() -> bool:
    """Tiny native steps (Adam's apply, AdamW's apply and update) against
    :func:`reference`; False (reason recorded) on failure."""
    try:
        with jax.ensure_compile_time_eval():
            cpu = jax.devices("cpu")[0]
            LIB.contract, LIB.bitwise = xla_rounding(cpu)
            rng = np.random.default_rng(0)
            p, g, m = (rng.standard_normal(5).astype(np.float32) for _ in range(3))
            v = np.abs(rng.standard_normal(5)).astype(np.float32)
            leaf = tuple(jax.device_put(x, cpu) for x in (p, g, m, v))
            adam = Hyper(*(np.float32(x) for x in (-1e-3, 0.9, 0.1, 0.999, 1e-3, 1e-8, 10, 300)))
            ok = True
            for algo, mode, wd in (
                ("adam", "apply", None),
                ("adamw", "apply", 0.5),
                ("adamw", "update", 0.5),
            ):
                h = adam._replace(weight_decay=None if wd is None else np.float32(wd))
                # Jitted, so that XLA fuses (and contracts) the reference as in real use.
                got = jax.jit(
                    lambda *a, algo=algo, mode=mode, h=h: _calls.step(
                        algo, mode, h.row(), [a], fma=LIB.contract
                    )[0]
                )(*leaf)
                want = jax.jit(lambda *a, algo=algo, mode=mode, h=h: reference(algo, mode, h, a))(
                    *leaf
                )
                pairs = zip(got, want, strict=True)
                ok = ok and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
        if not ok:
            LIB.reason = "its self-test gave results that differ from XLA's"
    except Exception as e:  # noqa: BLE001
        ok = False
        LIB.reason = f"its self-test failed: {type(e).__name__}: {e}"
    return ok


def quantized_self_test(
    native_step: Callable[[Any, Any, Any], Any],
    reference_step: Callable[[Any, Any, Any], Any],
    init: Callable[[Any], Any],
    size: int,
) -> str | None:
    """Why the 8-bit kernel must not run here, or None: a few steps of ``native_step``
    against ``reference_step``, bit for bit, before the first 8-bit step.

    The 8-bit kernel copies what XLA's CPU compiler makes of the block-wise quantization
    (the reciprocal it multiplies by for ``/ 0.9`` and ``/ scale``, its FMA contractions,
    NaN -> 0 in float -> int conversions), which no formula of this package states: the
    caller passes its own steps, ``step(grads, state, params) -> (params, state)``, the
    kernel's (``native_step``) and the XLA-compiled chain's (``reference_step``), with the
    state's ``init(params)``. Both are jitted here and run three steps on ``size`` float32
    parameters (the caller picks two full blocks and a tail) with gradients over nine
    decades, the second holding a NaN (a non-finite block: NaN scale, codes of NaN).
    """
    with jax.ensure_compile_time_eval():
        cpu = jax.devices("cpu")[0]
        rng = np.random.default_rng(0)
        p = jax.device_put(rng.standard_normal(size).astype(np.float32), cpu)
        steps = [jax.jit(step) for step in (native_step, reference_step)]
        states = [init(p), init(p)]
        ps = [p, p]
        for t in range(3):
            scale = 10.0 ** rng.integers(-7, 2, size=size)
            g = (rng.standard_normal(size) * scale).astype(np.float32)
            if t == 1:
                g[7] = np.nan
            g = jax.device_put(g, cpu)
            outs = [step(g, st, q) for step, st, q in zip(steps, states, ps, strict=True)]
            a, b = (jax.tree.leaves(o) for o in outs)
            for x, y in zip(a, b, strict=True):
                if not np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True):
                    return f"differs from the XLA-compiled chain at step {t + 1}"
            ps = [o[0] for o in outs]
            states = [o[1] for o in outs]
    return None
