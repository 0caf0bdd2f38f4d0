"""Fused CPU kernels for the Adam family, bound to JAX through the XLA FFI.

One pass over contiguous buffers does what the composed pure-JAX chain does in several:
``scale_by_moments -> bias_correct -> precondition -> scale_by_lr -> apply_updates``
(Kingma & Ba, ICLR 2015, Algorithm 1), per element, in float32::

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g * g)                 # AdaMax: u = max(b2 * u, |g|)
    d = (m * r1) / (sqrt(v * r2) + eps)             # AdaMax: (m * r1) / (u + eps)
    p = p + (-lr) * d

with ``r1 = 1 / (1 - b1**t)`` and ``r2 = 1 / (1 - b2**t)`` (both 1 without bias
correction), ``t`` the step number (1 at the first step): the pure path divides by
``1 - b**t``, and XLA's CPU compiler turns that division by a broadcast scalar into this
multiplication. The operations run in the same order as XLA runs the pure path and without
FMA contraction, so the native step equals it bit for bit (the tests check this); moments
may be stored as bfloat16 (rounded to nearest even, as XLA's convert does).

Params and grads are float32; m and v are float32 or bfloat16, each independently, all
four of the same shape (any shape; a flat 1-D buffer is the intended use). Every
hyperparameter -- the step count included -- is a run-time operand, so traced values and
``jax.vmap`` over a leading config axis work (each config has its own hyperparameters).

The kernel works in place: under ``jax.jit(..., donate_argnums=...)`` params and moments
are updated in the donated buffers (28 bytes moved per float32 parameter).

If the shared library was not built (no compiler at install time) or cannot be loaded,
importing still works: :func:`native_available` is False, one warning says why, and every
function here runs the pure-JAX formula instead. ``ADAMJAX_DISABLE_NATIVE=1`` forces that
fallback; ``ADAMJAX_NATIVE_THREADS=k`` caps the threads a step uses (default: XLA's CPU
thread pool); ``ADAMJAX_NATIVE_ISA=baseline|avx2`` forces a narrower instruction set.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import threading
import warnings
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DISABLE_ENV",
    "LIBRARY_ENV",
    "adam_apply",
    "adam_apply_leaves",
    "adam_update",
    "adamax_apply",
    "adamax_apply_leaves",
    "adamax_update",
    "native_available",
    "native_info",
    "roofline_step",
    "supported",
]

DISABLE_ENV = "ADAMJAX_DISABLE_NATIVE"
LIBRARY_ENV = "ADAMJAX_NATIVE_LIBRARY"  # load this file instead of the installed library
_LIB_STEM = "_adam_ffi"
_HYPER_WIDTH = 9  # must match kNumHyper in adam_ffi.cc
_TARGETS = {
    "adam_apply": "AdamjaxAdamApply",
    "adam_update": "AdamjaxAdamUpdate",
    "adamax_apply": "AdamjaxAdamaxApply",
    "adamax_update": "AdamjaxAdamaxUpdate",
    "roofline": "AdamjaxRoofline",
    "adam_apply_multi": "AdamjaxAdamApplyMulti",
    "adamax_apply_multi": "AdamjaxAdamaxApplyMulti",
}
_TARGET_PREFIX = "adamjax_native_"

_F32 = jnp.dtype(jnp.float32)
_BF16 = jnp.dtype(jnp.bfloat16)
_STATE_DTYPES = (_F32, _BF16)


# ----------------------------------------------------------------------------------------
# Loading.


class _Native:
    """Load state of the shared library (one per process)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.lib: ctypes.CDLL | None = None
        self.path: Path | None = None
        self.reason: str | None = None  # why native is off, once known
        self.disabled = False  # switched off by the environment variable
        self.verified: bool | None = None  # result of the one-time self-test
        self.contract = False  # whether XLA's CPU code fuses a*b + c into an FMA
        self.bitwise = True  # whether the kernel rounds exactly as XLA does here


_NATIVE = _Native()


def _library_path() -> Path | None:
    override = os.environ.get(LIBRARY_ENV, "").strip()
    if override:
        return Path(override) if Path(override).is_file() else None
    here = Path(__file__).resolve().parent
    suffixes = list(importlib.machinery.EXTENSION_SUFFIXES) + [".so", ".dylib", ".pyd"]
    for suffix in suffixes:
        candidate = here / f"{_LIB_STEM}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _load() -> None:
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        _NATIVE.disabled = True
        _NATIVE.reason = f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
        return
    path = _library_path()
    if path is None:
        if os.environ.get(LIBRARY_ENV, "").strip():
            _NATIVE.reason = f"{LIBRARY_ENV}={os.environ[LIBRARY_ENV]} is not a file"
            return
        _NATIVE.reason = (
            f"the compiled library adamjax/native/{_LIB_STEM}*.so is missing (it is built by "
            "`pip install` with a C++17 compiler; reinstall adamjax with g++ or clang++ on PATH)"
        )
        return
    try:
        lib = ctypes.CDLL(str(path))
        for name, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(
                _TARGET_PREFIX + name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu"
            )
        lib.AdamjaxNativeIsa.restype = ctypes.c_char_p
    except Exception as e:  # noqa: BLE001 - any failure means: use the pure path
        _NATIVE.reason = f"loading {path.name} failed: {type(e).__name__}: {e}"
        return
    _NATIVE.lib = lib
    _NATIVE.path = path


def _warn_fallback() -> None:
    warnings.warn(
        "adamjax: the native CPU Adam kernel is not available ("
        f"{_NATIVE.reason}); using the pure-JAX path, which gives the same results more "
        "slowly.",
        RuntimeWarning,
        stacklevel=3,
    )


_load()
if _NATIVE.lib is None and not _NATIVE.disabled:
    _warn_fallback()


def _xla_rounding(cpu) -> tuple[bool, bool]:
    """How XLA's CPU compiler rounds the step's multiply-adds: ``(contracts, modelled)``.

    On CPUs with FMA, LLVM fuses ``a * b + c`` inside an XLA fusion into one FMA (rounded
    once). For the moment EMAs ``d * s + w * x`` it fuses ``d * s`` when the state ``s``
    is float32 and ``w * x`` when ``s`` was widened from bfloat16. The kernel copies that
    (hyper[8] = 1) or rounds every product (0). ``modelled`` is False when XLA does
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
    got32 = np.asarray(ema(jax.device_put(s32, cpu), jax.device_put(x, cpu)))
    gotbf = np.asarray(ema(jax.device_put(sbf, cpu), jax.device_put(x, cpu)))
    gotp = np.asarray(axpy(jax.device_put(s32, cpu), jax.device_put(x, cpu)))
    sb = sbf.astype(np.float32)
    nlr = np.float32(-0.001)
    fused = (
        np.array_equal(got32, fma(d, s32, w * x))
        and np.array_equal(gotbf, fma(w, x, d * sb))
        and np.array_equal(gotp, fma(nlr, x, s32))
    )
    plain = (
        np.array_equal(got32, d * s32 + w * x)
        and np.array_equal(gotbf, d * sb + w * x)
        and np.array_equal(gotp, s32 + nlr * x)
    )
    if fused:
        return True, True
    if plain:
        return False, True
    # Something else: contract where it agrees more often.
    agree = np.mean(got32 == fma(d, s32, w * x)) >= np.mean(got32 == d * s32 + w * x)
    return bool(agree), False


def _self_test() -> bool:
    """Run one tiny native step against the pure formula; False (and a warning) on failure."""
    try:
        with jax.ensure_compile_time_eval():
            cpu = jax.devices("cpu")[0]
            _NATIVE.contract, _NATIVE.bitwise = _xla_rounding(cpu)
            n = 5
            rng = np.random.default_rng(0)
            p, g, m = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
            v = np.abs(rng.standard_normal(n)).astype(np.float32)
            args = [jax.device_put(x, cpu) for x in (p, g, m, v)]
            count = jax.device_put(np.int32(3), cpu)
            hyper = _hyper(count, 1e-3, 0.9, 0.999, 1e-8, True, adamax=False)
            # Jitted, so that XLA fuses (and contracts) the pure step as in real use.
            got = jax.jit(lambda *a: _ffi("adam_apply", *a[:-1], hyper=a[-1]))(*args, hyper)
            want = jax.jit(lambda *a: _pure_step("adam_apply", *a[:-1], hyper=a[-1]))(*args, hyper)
            ok = all(
                np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want, strict=True)
            )
        if not ok:
            _NATIVE.reason = "its self-test gave results that differ from the pure-JAX path"
    except Exception as e:  # noqa: BLE001
        ok = False
        _NATIVE.reason = f"its self-test failed: {type(e).__name__}: {e}"
    if not ok:
        _warn_fallback()
    return ok


def native_available() -> bool:
    """Whether the fused native CPU kernels are in use (else the pure-JAX path is).

    The first call runs one tiny native step and compares it with the pure formula, so a
    library built against an incompatible jaxlib is caught here, not in a training step.
    """
    if _NATIVE.lib is None:
        return False
    if _NATIVE.verified is None:
        with _NATIVE.lock:
            if _NATIVE.verified is None:
                _NATIVE.verified = _self_test()
    return bool(_NATIVE.verified)


def native_info() -> dict[str, Any]:
    """What the native path is: availability, the reason if off, library, instruction set."""
    available = native_available()
    isa = None
    if _NATIVE.lib is not None:
        isa = _NATIVE.lib.AdamjaxNativeIsa().decode()
    return {
        "available": available,
        "reason": None if available else _NATIVE.reason,
        "library": str(_NATIVE.path) if _NATIVE.path else None,
        "isa": isa,
        "fma_contraction": _NATIVE.contract,
        "bitwise_equal_to_xla": _NATIVE.bitwise,
        "threads_cap": os.environ.get("ADAMJAX_NATIVE_THREADS"),
    }


# ----------------------------------------------------------------------------------------
# Hyperparameters: computed with the same JAX expressions as the composed pure path, so
# that the scalars the kernel sees are bit-identical to the ones the pure path uses.


def _correction(beta: Any, count: jax.Array, enabled: Any) -> jax.Array:
    """``1 - beta**t`` in float32 (adamjax.bias_correct's expression), or 1 when disabled."""
    t = count.astype(jnp.float32)
    c = 1 - beta**t
    if enabled is True:
        return jnp.asarray(c, jnp.float32)
    return jnp.where(enabled, c, jnp.ones_like(c)).astype(jnp.float32)


def _f32(x: Any) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _hyper(count, learning_rate, b1, b2, eps, bias_correction, *, adamax: bool) -> _Hyper:
    """The kernel's row of 9 float32 hyperparameters (see HyperIndex in adam_ffi.cc).

    Call after :func:`native_available` (whose first call settles ``_NATIVE.contract``).
    """
    count = jnp.asarray(count, jnp.int32)
    one = jnp.ones([], jnp.float32)
    # XLA's simplifier rewrites the pure path's ``m / broadcast(c)`` into
    # ``m * broadcast(1 / c)``; the kernel multiplies by the same reciprocals.
    if bias_correction is False:
        c1 = c2 = one
    else:
        c1 = _correction(b1, count, bias_correction)
        c2 = one if adamax else _correction(b2, count, bias_correction)
    inv_c1, inv_c2 = 1 / c1, 1 / c2
    # ``1 - b`` is evaluated as the pure path evaluates it: in Python for Python numbers,
    # in float32 for arrays.
    row = jnp.stack(
        [
            -_f32(learning_rate),
            _f32(b1),
            _f32(1 - b1),
            _f32(b2),
            _f32(1 - b2),
            _f32(eps),
            inv_c1,
            inv_c2,
            jnp.full_like(one, 1.0 if _NATIVE.contract else 0.0),
        ]
    )
    return _Hyper(row, c1, c2)


class _Hyper(NamedTuple):
    """The kernel's row, and the corrections themselves for the pure path (which divides
    by them like the chain does, so XLA rewrites both alike)."""

    row: jax.Array
    c1: jax.Array
    c2: jax.Array


# ----------------------------------------------------------------------------------------
# The native call and its pure-JAX twin.


def _ffi(kind: str, first, *rest, hyper, after=()):
    """Call the native target ``kind``: ``first`` is params (apply) or grads (update).

    ``after`` (apply only): arrays the call takes as unread operands, so that XLA runs it
    after they are computed (see ADAMJAX_APPLY_BINDING in adam_ffi.cc)."""
    arrays = (first, *rest)
    if kind.endswith("apply"):
        _, _, m, v = arrays
        out_like = (first, m, v)
        aliases = {0: 0, 2: 1, 3: 2}
    else:
        _, m, v = arrays
        out_like = (first, m, v)
        aliases = {0: 0, 1: 1, 2: 2}
    call = jax.ffi.ffi_call(
        _TARGET_PREFIX + kind,
        tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in out_like),
        input_output_aliases=aliases,
        vmap_method="broadcast_all",
    )
    return tuple(call(*arrays, hyper.row, *after))


# Leaves per native call in adam_apply_leaves: XLA's compile time grows faster than
# linearly with the aliased results of one call (1000 leaves: 95 s in one call, 1.2 s in
# calls of 32), while the step time hardly depends on it.
_LEAVES_PER_CALL = 32


def _ffi_multi(kind: str, leaves, *, hyper):
    """One native call for many leaves: ``leaves`` is a sequence of ``(p, g, m, v)``;
    returns a list of ``(p, m, v)``, each updated in place (aliased to its operand)."""
    flat = [x for leaf in leaves for x in leaf]
    out_like = [x for p, _, m, v in leaves for x in (p, m, v)]
    aliases: dict[int, int] = {}
    for k in range(len(leaves)):
        aliases |= {1 + 4 * k: 3 * k, 3 + 4 * k: 3 * k + 1, 4 + 4 * k: 3 * k + 2}
    call = jax.ffi.ffi_call(
        _TARGET_PREFIX + kind + "_multi",
        tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in out_like),
        input_output_aliases=aliases,
        vmap_method="broadcast_all",
    )
    outs = call(hyper.row, *flat)
    return [tuple(outs[3 * k : 3 * k + 3]) for k in range(len(leaves))]


def _pure_step(kind: str, first, *rest, hyper):
    """The same step in plain JAX (the fallback), with the same float32 scalars."""
    h = [hyper.row[..., i] for i in range(_HYPER_WIDTH)]
    neg_lr, b1, omb1, b2, omb2, eps, _, _, _ = h
    c1, c2 = hyper.c1, hyper.c2
    if kind.endswith("apply"):
        p, g, m_old, v_old = first, *rest
    else:
        p = None
        g, m_old, v_old = first, *rest
    g = g.astype(jnp.float32)
    m = b1 * m_old.astype(jnp.float32) + omb1 * g
    if kind.startswith("adamax"):
        v = jnp.maximum(b2 * v_old.astype(jnp.float32), jnp.abs(g))
        d = (m / c1) / (v + eps)
    else:
        v = b2 * v_old.astype(jnp.float32) + omb2 * (g * g)
        d = (m / c1) / (jnp.sqrt(v / c2) + eps)
    u = neg_lr * d
    first_out = u.astype(first.dtype) if p is None else (p.astype(jnp.float32) + u).astype(p.dtype)
    return first_out, m.astype(m_old.dtype), v.astype(v_old.dtype)


# Traced once per leaf signature (not once per leaf): platform_dependent traces every branch.
_pure_step_jit = jax.jit(_pure_step, static_argnames="kind")


def supported(params, grads, m, v) -> bool:
    """Whether the native kernel handles these arrays (dtypes and shapes), else pure JAX.

    ``params`` may be None (the update form). Params and grads must be float32, ``m`` and
    ``v`` float32 or bfloat16, all of one shape.
    """
    shape = jnp.shape(grads)
    if jnp.result_type(grads) != _F32:
        return False
    if params is not None and (jnp.result_type(params) != _F32 or jnp.shape(params) != shape):
        return False
    for s in (m, v):
        if jnp.result_type(s) not in _STATE_DTYPES or jnp.shape(s) != shape:
            return False
    return True


def _is_static(x: Any) -> bool:
    return isinstance(x, (bool, int, float)) and not isinstance(x, jax.Array)


def _chain_fallback(kind: str, arrays, hp: dict[str, Any]):
    """The pure path: adamjax's own composed chain on these buffers, jitted (so that XLA
    fuses and rounds it as in a training step); Python hyperparameters stay constants."""
    static = tuple(sorted((k, v) for k, v in hp.items() if _is_static(v)))
    dynamic = {k: v for k, v in hp.items() if not _is_static(v)}
    return _chain_step(kind, tuple(arrays), dynamic, static)


@partial(jax.jit, static_argnames=("kind", "static"))
def _chain_step(kind: str, arrays, dynamic, static):
    from adamjax.aliases import adam, adamax
    from adamjax.base import apply_updates

    hp = dict(static)
    hp.update(dynamic)
    count = jnp.asarray(hp.pop("count"), jnp.int32)
    if kind.startswith("adamax"):
        opt = adamax(hp["learning_rate"], hp["b1"], hp["b2"], hp["eps"])
    else:
        opt = adam(
            hp["learning_rate"],
            hp["b1"],
            hp["b2"],
            hp["eps"],
            bias_correction=hp["bias_correction"],
        )
    if kind.endswith("apply"):
        p, g, m, v = arrays
    else:
        p = None
        g, m, v = arrays
    st = opt.init(g)
    # The chain increments the count (saturating at INT32_MAX) before use.
    prev = jnp.where(count == jnp.iinfo(jnp.int32).max, count, count - 1)
    st = (st[0]._replace(count=prev, mu=m, nu=v), *st[1:])
    u, st = opt.update(g, st, p)
    first = u if p is None else apply_updates(p, u)
    return first, st[0].mu, st[0].nu


def _use_native(where: str, native: bool | None, ok: bool, arrays) -> bool:
    """Whether to run the kernel: ``ok`` (the dtypes and shapes are supported), ``native``
    not False and the library available; ``native=True`` raises when it cannot be honoured,
    naming ``arrays`` (the offending buffers)."""
    if native is True and not ok:
        raise TypeError(
            f"adamjax.native.{where}: native=True needs float32 params/grads and float32 or "
            "bfloat16 moments, all of one shape; got "
            + ", ".join(f"{jnp.result_type(a)}{list(jnp.shape(a))}" for a in arrays)
        )
    if native is True and not native_available():
        raise RuntimeError(
            f"adamjax.native.{where}: native=True but the native kernel is unavailable: "
            f"{_NATIVE.reason}"
        )
    return ok and native is not False and native_available()


def _run(kind: str, native: bool | None, first, *rest, hyper, hp, after=()):
    arrays = (first, *rest)
    params = first if kind.endswith("apply") else None
    grads, m, v = arrays[-3:]
    ok = supported(params, grads, m, v)
    use_native = _use_native(kind, native, ok, arrays)
    if int(np.prod(jnp.shape(first))) == 0:
        return tuple(jnp.asarray(a) for a in (first, m, v))
    if not use_native:
        return _chain_fallback(kind, arrays, hp)

    k = len(arrays)

    def on_cpu(*xs):
        return _ffi(kind, *xs[:k], hyper=xs[k], after=xs[k + 1 :])

    def elsewhere(*xs):
        return _pure_step(kind, *xs[:k], hyper=xs[k])

    # The library is registered for the CPU only; on GPU/TPU the pure path is lowered.
    return jax.lax.platform_dependent(*arrays, hyper, *after, cpu=on_cpu, default=elsewhere)


def _run_leaves(kind: str, native: bool | None, leaves, *, hyper, hp):
    """:func:`_run` for many leaves at once: one native call for all of them."""
    leaves = [tuple(jnp.asarray(x) for x in leaf) for leaf in leaves]
    bad = next((leaf for leaf in leaves if not supported(*leaf)), ())
    use_native = _use_native(f"{kind}_leaves", native, not bad, bad)
    if not leaves:
        return []
    if not use_native:
        return [_run(kind, False, *leaf, hyper=hyper, hp=hp) for leaf in leaves]

    def on_cpu(hyper, *flat):
        leaves = [flat[i : i + 4] for i in range(0, len(flat), 4)]
        # The calls take the gradients through one optimization barrier, so each runs after
        # all of them (the whole backward pass) and XLA updates the parameters in place
        # without copying those that the backward pass still reads.
        grads = jax.lax.optimization_barrier([g for _, g, _, _ in leaves])
        leaves = [(p, g, m, v) for (p, _, m, v), g in zip(leaves, grads, strict=True)]
        outs = []
        for i in range(0, len(leaves), _LEAVES_PER_CALL):
            group = leaves[i : i + _LEAVES_PER_CALL]
            outs += _ffi_multi(kind, group, hyper=hyper)
        return outs

    def elsewhere(hyper, *flat):
        return [_pure_step_jit(kind, *flat[i : i + 4], hyper=hyper) for i in range(0, len(flat), 4)]

    flat = [x for leaf in leaves for x in leaf]
    # The library is registered for the CPU only; on GPU/TPU the pure path is lowered.
    return jax.lax.platform_dependent(hyper, *flat, cpu=on_cpu, default=elsewhere)


def _adam_hyper(count, learning_rate, b1, b2, eps, bias_correction):
    """The kernel's hyperparameter row and the pure fallback's keyword arguments for Adam."""
    native_available()  # settles how the kernel must round (see _xla_rounding)
    hyper = _hyper(count, learning_rate, b1, b2, eps, bias_correction, adamax=False)
    hp = dict(
        count=count,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        bias_correction=bias_correction,
    )
    return hyper, hp


def _adamax_hyper(count, learning_rate, b1, b2, eps):
    """The kernel's hyperparameter row and the pure fallback's keyword arguments for AdaMax."""
    native_available()
    hyper = _hyper(count, learning_rate, b1, b2, eps, True, adamax=True)
    hp = dict(count=count, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
    return hyper, hp


# ----------------------------------------------------------------------------------------
# Public API.


def adam_apply(
    params,
    grads,
    m,
    v,
    count,
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    bias_correction=True,
    *,
    native: bool | None = None,
    after: tuple = (),
):
    """One fused Adam step applied to the parameters: returns ``(params, m, v)``.

    Equal to ``adamjax.adam(learning_rate, b1, b2, eps, bias_correction=...)`` followed by
    ``adamjax.apply_updates`` on these buffers, bit for bit.

    Args:
      params: float32 array (any shape; typically one flat buffer).
      grads: float32 array of the same shape.
      m, v: the moments before this step, float32 or bfloat16, same shape.
      count: the step number ``t`` of this step, int32 scalar, 1 at the first step (the
        already-incremented ``MomentsState.count``).
      learning_rate, b1, b2, eps: Python numbers or (possibly traced) scalar arrays.
      bias_correction: ``True``, ``False`` or a (possibly traced) boolean array.
      native: ``None`` uses the native kernel when available and the dtypes are supported
        (on CPU; other platforms get the pure path), ``True`` requires it, ``False`` forces
        the pure-JAX path.
      after: arrays that the native call takes as unread operands, so that XLA orders it
        after the ops computing them (a train step passes all its gradients: the params
        are then updated in place after the backward pass has read them, without copies).

    Returns:
      ``(params, m, v)`` after the step, with the input dtypes. Donate ``params``, ``m``
      and ``v`` to ``jax.jit`` to update them in place.
    """
    hyper, hp = _adam_hyper(count, learning_rate, b1, b2, eps, bias_correction)
    return _run("adam_apply", native, params, grads, m, v, hyper=hyper, hp=hp, after=after)


def adam_apply_leaves(
    params,
    grads,
    m,
    v,
    count,
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    bias_correction=True,
    *,
    native: bool | None = None,
):
    """:func:`adam_apply` on many leaves in ONE native call: lists in, list of triples out.

    ``params``, ``grads``, ``m``, ``v`` are sequences of arrays (a parameter tree's
    leaves, in one order); leaf ``k`` must satisfy what :func:`adam_apply` asks of its
    buffers (shapes and dtypes may differ between leaves). Returns ``[(p, m, v), ...]``,
    each equal bit for bit to ``adam_apply`` on that leaf alone.

    The leaves are laid end to end in one index space that XLA's CPU threads share, so a
    tree of thousands of small leaves costs one call (no per-leaf launch, one parallel
    loop), and XLA schedules the call after every gradient it reads: under donation each
    parameter is then updated in place after the whole backward pass, without copies.
    Other arguments as in :func:`adam_apply`; the hyperparameters are shared by all leaves.
    """
    hyper, hp = _adam_hyper(count, learning_rate, b1, b2, eps, bias_correction)
    leaves = list(zip(params, grads, m, v, strict=True))
    return _run_leaves("adam_apply", native, leaves, hyper=hyper, hp=hp)


def adam_update(
    grads,
    m,
    v,
    count,
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    bias_correction=True,
    *,
    native: bool | None = None,
):
    """One fused Adam step that returns ``(updates, m, v)`` (``updates = -lr * d``).

    The Optax form: ``updates`` equals what ``adamjax.adam(...).update`` returns, bit for
    bit; add them with ``adamjax.apply_updates``. The updates overwrite the grads' buffer
    when XLA can reuse it (an intermediate in a jitted step, or donated grads).
    Arguments as in :func:`adam_apply`.
    """
    hyper, hp = _adam_hyper(count, learning_rate, b1, b2, eps, bias_correction)
    return _run("adam_update", native, grads, m, v, hyper=hyper, hp=hp)


def adamax_apply(
    params, grads, m, u, count, learning_rate, b1=0.9, b2=0.999, eps=1e-8, *, native=None
):
    """One fused AdaMax step (Sec. 7.1) applied to the parameters: ``(params, m, u)``.

    ``u = max(b2 * u, |g|)``, ``p = p - lr * (m / (1 - b1**t)) / (u + eps)``; equal to
    ``adamjax.adamax`` plus ``apply_updates``. Arguments as in :func:`adam_apply`.
    """
    hyper, hp = _adamax_hyper(count, learning_rate, b1, b2, eps)
    return _run("adamax_apply", native, params, grads, m, u, hyper=hyper, hp=hp)


def adamax_apply_leaves(
    params, grads, m, u, count, learning_rate, b1=0.9, b2=0.999, eps=1e-8, *, native=None
):
    """:func:`adamax_apply` on many leaves in one native call; see :func:`adam_apply_leaves`."""
    hyper, hp = _adamax_hyper(count, learning_rate, b1, b2, eps)
    leaves = list(zip(params, grads, m, u, strict=True))
    return _run_leaves("adamax_apply", native, leaves, hyper=hyper, hp=hp)


def adamax_update(grads, m, u, count, learning_rate, b1=0.9, b2=0.999, eps=1e-8, *, native=None):
    """One fused AdaMax step that returns ``(updates, m, u)``; see :func:`adamax_apply`."""
    hyper, hp = _adamax_hyper(count, learning_rate, b1, b2, eps)
    return _run("adamax_update", native, grads, m, u, hyper=hyper, hp=hp)


def roofline_step(params, grads, m, v):
    """The memory roofline of a float32 Adam step: ``p += g; m += g; v += g`` natively.

    Moves the same 28 bytes per parameter as :func:`adam_apply` (reads p, g, m, v; writes
    p, m, v in place) with trivial math, on the same threads, so its time is the floor an
    Adam step can reach on this machine. All four arrays float32 of one shape; donate
    params, m and v. Raises RuntimeError when the native library is unavailable.
    """
    if not native_available():
        raise RuntimeError(
            f"adamjax.native.roofline_step: native kernel unavailable: {_NATIVE.reason}"
        )
    arrays = [jnp.asarray(a) for a in (params, grads, m, v)]
    if any(a.dtype != _F32 or a.shape != arrays[0].shape for a in arrays):
        raise TypeError("adamjax.native.roofline_step: four float32 arrays of one shape")
    call = jax.ffi.ffi_call(
        _TARGET_PREFIX + "roofline",
        tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (arrays[0], arrays[2], arrays[3])),
        input_output_aliases={0: 0, 2: 1, 3: 2},
        vmap_method="broadcast_all",
    )
    return tuple(call(*arrays))
