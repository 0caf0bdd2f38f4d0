"""8-bit moments for the kernel: packing them into its raw leaves (codes and scales) and
back, and a one-time check of the 8-bit kernel against the chain as XLA compiles it here."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

from adamjax import native, quantize
from adamjax.bias import bias_correct
from adamjax.lr import scale_by_lr
from adamjax.moments import scale_by_moments
from adamjax.precondition import precondition
from adamjax.step import apply_gradients


def _quantized(native, algo: str, mode: str, cols: list, hyper, fallback) -> list:
    """The 8-bit kernel on leaves given as columns ``[p,] g, m, v`` (QuantizedArray m, v):
    ``[(p or u, m, v), ...]``."""
    *pg, mu, nu = cols
    leaves = [
        (*first, m.codes, m.scales, v.codes, v.scales)
        for *first, m, v in zip(*pg, mu, nu, strict=True)
    ]

    def raw_fallback(raw):
        # The chain on the raw leaves (codes and scales rebuilt into QuantizedArray).
        width = len(pg)
        back = []
        for leaf, m, v in zip(raw, mu, nu, strict=True):
            mc, ms, vc, vs = leaf[width:]
            back.append(
                (
                    *leaf[:width],
                    quantize.QuantizedArray(mc, ms, m.shape, m.signed),
                    quantize.QuantizedArray(vc, vs, v.shape, v.signed),
                )
            )
        out = fallback(back)
        return [(f, m.codes, m.scales, v.codes, v.scales) for f, m, v in out]

    tables = (quantize.decode_table(True), quantize.decode_table(False))
    got = native.quantized_step(algo, mode, leaves, hyper, tables, fallback=raw_fallback)
    return [
        (
            f,
            quantize.QuantizedArray(mc, ms, m.shape, m.signed),
            quantize.QuantizedArray(vc, vs, v.shape, v.signed),
        )
        for (f, mc, ms, vc, vs), m, v in zip(got, mu, nu, strict=True)
    ]


# ----------------------------------------------------------------------------------------
# A one-time check of the 8-bit kernel against the chain as XLA compiles it here.

_CHECK: dict[str, Any] = {"done": False, "why": None}
_CHECK_LOCK = threading.RLock()  # re-entered by the check's own native steps


def _quantized_kernel_check(chain: Callable[..., Any]) -> str | None:
    """Why the 8-bit kernel must not run here, or None: once per process, a few native
    steps of ``adam(state_dtype="int8")`` against the XLA-compiled chain, bit for bit.

    ``chain`` is :func:`adamjax.lowering.chain`, passed in by the gate that asks for this
    check (the check's own steps go through the gate, so this module cannot import it).

    The kernel copies what XLA's CPU compiler makes of quantize.py (the reciprocal it
    multiplies by for ``/ 0.9`` and ``/ scale``, its FMA contractions, NaN -> 0 in
    float -> int conversions); a jaxlib that compiled the chain otherwise would be caught
    here and the chain run instead (with one RuntimeWarning).
    """
    with _CHECK_LOCK:
        if _CHECK["done"]:
            return _CHECK["why"]
        _CHECK["done"] = True  # the check's own native steps run without it
        try:
            why = _compare_quantized_steps(chain)
        except Exception as e:  # noqa: BLE001 - any failure means: run the chain
            why = f"failed its check: {type(e).__name__}: {e}"
        _CHECK["why"] = why
    if why is not None:
        warnings.warn(
            f"adamjax: the native 8-bit-state kernel {why}; 8-bit steps run the pure-JAX "
            "chain (same results, slower).",
            RuntimeWarning,
            stacklevel=3,
        )
    return why


def _compare_quantized_steps(chain: Callable[..., Any]) -> str | None:
    """Adam's chain with 8-bit moments, lowered onto the kernel and as written, through
    :func:`adamjax.native.quantized_self_test` on two full blocks and a tail."""
    if not native.quantized_available():
        return (
            "is missing from the compiled library (built before it was added: rebuild "
            "adamjax, e.g. `python setup.py build_ext --inplace`)"
        )

    def adam_int8(implementation: str) -> Any:  # adamjax.adam(1e-3, state_dtype="int8")
        return chain(
            scale_by_moments(0.9, 0.999, state_dtype="int8"),
            bias_correct(),
            precondition(1e-8),
            scale_by_lr(1e-3),
            implementation=implementation,
        )

    kernel, written = adam_int8("native"), adam_int8("jax")
    return native.quantized_self_test(
        lambda g, s, p: apply_gradients(kernel, g, s, p),
        lambda g, s, p: apply_gradients(written, g, s, p),
        kernel.init,
        2 * quantize.BLOCK_SIZE + 5,
    )
