"""The FFI calls: many leaves of one step in one native call, updated in place."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from adamjax.native._library import TARGET_PREFIX

# Leaves per native call: XLA's compile time grows faster than linearly with the aliased
# results of one call (1000 leaves: 95 s in one call, 1.2 s in calls of 32), while the
# step time hardly depends on it.
LEAVES_PER_CALL = 32


def step(
    algo: str, mode: str, row: jax.Array, leaves: Sequence[tuple], *, fma: bool
) -> list[tuple]:
    """Run target ``{algo}_{mode}`` on ``leaves``: ``(p, g, m, v)`` each (``mode="apply"``,
    and AdamW's ``"update"``, which only reads ``p``) or ``(g, m, v)`` (``"update"``);
    returns ``(p, m, v)`` or ``(u, m, v)`` per leaf.

    ``row`` is the float32 hyperparameter row (shape ``[8]``, or ``[k, 8]`` under vmap;
    AdamW's rows hold 9),
    ``fma`` the contraction attribute. ``p``, ``m`` and ``v`` are aliased to their results
    (in place under donation); ``u`` is a fresh buffer (no copy of undonated gradients).
    """
    outs: list[tuple] = []
    for i in range(0, len(leaves), LEAVES_PER_CALL):
        outs += _one_call(algo, mode, row, leaves[i : i + LEAVES_PER_CALL], fma)
    return outs


def _one_call(algo, mode, row, leaves, fma):
    width = len(leaves[0])
    out_like, aliases = [], {}
    for k, leaf in enumerate(leaves):
        first, m, v = (leaf[0], leaf[-2], leaf[-1])
        out_like += [first, m, v]
        base = 1 + width * k  # operand 0 is the row
        if mode == "apply":
            aliases[base] = 3 * k
        aliases[base + width - 2] = 3 * k + 1
        aliases[base + width - 1] = 3 * k + 2
    return _ffi(f"{algo}_{mode}", out_like, aliases, [row], leaves, fma)


def quantized_step(
    algo: str, mode: str, row: jax.Array, tables: tuple, leaves: Sequence[tuple], *, fma: bool
) -> list[tuple]:
    """Run target ``{algo}_{mode}_q8`` (8-bit block-wise moments) on ``leaves``:
    ``(p, g, m_codes, m_scales, v_codes, v_scales)`` each (``mode="apply"``) or the same
    without ``p`` (``"update"``); returns ``(p or u, m_codes, m_scales, v_codes, v_scales)``
    per leaf, each aliased to its operand, ``u`` to ``g``: in place under donation, and
    the update written over a gradient that is dead after the call (one computed in the
    same jitted step); XLA copies a gradient that is still live (passed in, not donated)
    first. This spares XLA:CPU allocating and page-faulting a fresh update buffer every
    step (figures: docs/fast-paths.md, "Measurements behind the code's choices").

    ``tables``: the float32 ``[256]`` decode tables of m and of v.
    """
    outs: list[tuple] = []
    for i in range(0, len(leaves), LEAVES_PER_CALL):
        outs += _one_quantized_call(algo, mode, row, tables, leaves[i : i + LEAVES_PER_CALL], fma)
    return outs


def _one_quantized_call(algo, mode, row, tables, leaves, fma):
    width = 6 if mode == "apply" else 5
    out_like, aliases = [], {}
    for k, leaf in enumerate(leaves):
        out_like += [leaf[0], *leaf[-4:]]
        base = 3 + width * k  # operands 0-2: the row and the two tables
        aliases[base] = 5 * k  # p, or g (the update overwrites the gradient)
        for j in range(1, 5):  # codes and scales of m and v
            aliases[base + j + (width - 5)] = 5 * k + j
    return _ffi(f"{algo}_{mode}_q8", out_like, aliases, [row, *tables], leaves, fma)


def _ffi(target, out_like, aliases, head, leaves, fma) -> list[tuple]:
    """One call of ``target`` on ``head`` then the leaves' operands; its results (shaped
    like ``out_like``, the same number per leaf) regrouped per leaf."""
    call = jax.ffi.ffi_call(
        TARGET_PREFIX + target,
        tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in out_like),
        input_output_aliases=aliases,
        vmap_method="broadcast_all",
    )
    res = call(*head, *(x for leaf in leaves for x in leaf), fma=np.int32(1 if fma else 0))
    n = len(out_like) // len(leaves)
    return [tuple(res[n * k : n * k + n]) for k in range(len(leaves))]


def roofline(p, g, m, v):
    """``p + g, m + g, v + g`` natively, in place: the memory floor of a float32 step
    (28 bytes per element, trivial math). For benchmarks/ only."""
    call = jax.ffi.ffi_call(
        TARGET_PREFIX + "roofline",
        tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (p, m, v)),
        input_output_aliases={0: 0, 2: 1, 3: 2},
        vmap_method="broadcast_all",
    )
    return tuple(call(p, g, m, v))
