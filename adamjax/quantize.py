"""8-bit block-wise quantized storage for optimizer moments.

Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization",
ICLR 2022. A moment tensor is cut into blocks of :data:`BLOCK_SIZE` consecutive elements;
each block stores one float32 scale, its absolute maximum :math:`s_b = \\max_{i \\in b}
|x_i|`, and one byte per element: the index of the entry of a fixed 256-entry *code*
:math:`Q` nearest to :math:`x_i / s_b`,

.. math::
    q_i = \\arg\\min_j |Q_j - x_i / s_b|, \\qquad \\tilde x_i = s_b\\, Q_{q_i}.

The code is the *dynamic tree* code (Dettmers, 2016): after an optional sign bit, a run of
``e`` zero bits sets the decade :math:`10^{-e}`, a one bit ends it, and the remaining bits
index a linear grid of fractions in :math:`(0.1, 1]`. Small magnitudes thus keep their
relative precision, which an EMA of squared gradients (spanning many decades) needs. The
first moment uses the signed code (:func:`signed_code`), the second the unsigned one
(:func:`unsigned_code`: one more bit of precision, since ``v >= 0``).

Two choices of this implementation:

* A non-zero ``v`` never rounds to zero: it is stored as at least the smallest positive
  code entry. Rounding a small but non-zero ``v`` to zero would turn ``m / sqrt(v)`` into
  ``m / eps``, an enormous step; the floor keeps the step bounded.
* A block holding NaN or Inf stores a NaN scale: the whole block reads back as NaN, so a
  non-finite moment is never silently replaced by a finite one.

Storage: :class:`QuantizedArray`, a pytree of ``codes`` (uint8, ``[n_blocks, BLOCK_SIZE]``)
and ``scales`` (float32, ``[n_blocks]``) with the original shape as static data. Blocks are
the leading axis, so splitting the state over devices (ZeRO-1) splits whole blocks.
That is ``1 + 4 / BLOCK_SIZE`` bytes per element instead of 4.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BLOCK_SIZE",
    "MIN_QUANTIZED_SIZE",
    "QuantizedArray",
    "decode_table",
    "dequantize",
    "quantize",
    "signed_code",
    "unsigned_code",
]

BLOCK_SIZE = 2048
"""Elements per block (the paper's block size)."""

MIN_QUANTIZED_SIZE = 4096
"""Leaves with fewer elements stay in float32, as the paper does for small tensors."""

_HALF = 127  # index of 0 in the signed code


def _magnitudes(i: jax.Array, bits: int) -> jax.Array:
    """The code magnitude at index ``i`` (int32, ``0 <= i < 2**bits``), float32.

    Index 0 is 0; index ``i >= 1`` lies in the decade ``e = bits - 1 - floor(log2 i)``,
    at point ``k = i - 2**floor(log2 i)`` of ``n = 2**floor(log2 i)``:
    ``10**-e * (0.1 + 0.9 (k+1)/n)``. Elementwise arithmetic and selects only: reading a
    256-entry table with a gather costs more than the whole Adam step on XLA:CPU.
    """
    i = jnp.asarray(i, jnp.int32)
    t = jnp.zeros(i.shape, jnp.int32)  # floor(log2 i) for i >= 1
    for j in range(1, bits):
        t = t + (i >= (1 << j)).astype(jnp.int32)
    n = jnp.left_shift(jnp.int32(1), t)
    k = i - n
    frac = jnp.float32(0.1) + (jnp.float32(0.9) * (k + 1).astype(jnp.float32)) / n.astype(
        jnp.float32
    )
    decade = jnp.zeros(i.shape, jnp.float32)
    for e in range(bits):
        decade = jnp.where(t == bits - 1 - e, jnp.float32(10.0**-e), decade)
    return jnp.where(i == 0, jnp.float32(0.0), decade * frac)


def _code_values(idx: jax.Array, signed: bool) -> jax.Array:
    """The code value at each index (signed: index 127 is 0, below it the negatives)."""
    if not signed:
        return _magnitudes(idx, 8)
    idx = jnp.asarray(idx, jnp.int32)
    mag = _magnitudes(jnp.abs(idx - _HALF), 7)
    return jnp.where(idx < _HALF, -mag, mag)


@lru_cache(maxsize=2)
def _code(signed: bool) -> np.ndarray:
    """The code as a table: exactly the values :func:`dequantize` computes."""
    with jax.ensure_compile_time_eval():
        size = 2 * _HALF + 1 if signed else 256
        return np.asarray(jax.jit(_code_values, static_argnums=1)(jnp.arange(size), signed))


@lru_cache(maxsize=2)
def _decode_table(signed: bool) -> np.ndarray:
    with jax.ensure_compile_time_eval():
        return np.asarray(jax.jit(_code_values, static_argnums=1)(jnp.arange(256), signed))


def decode_table(signed: bool) -> np.ndarray:
    """What :func:`dequantize` reads for each of the 256 byte values, before the scale
    (float32 ``[256]``; the signed code's byte 255, never written, included): the table the
    native kernel decodes with, ``x = table[code] * scale``."""
    return _decode_table(signed).copy()


def signed_code() -> np.ndarray:
    """The 255 values of the signed dynamic code (sorted, 0 and +-1 included)."""
    return _code(True).copy()


def unsigned_code() -> np.ndarray:
    """The 256 values of the unsigned dynamic code (sorted, 0 and 1 included)."""
    return _code(False).copy()


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True)
class QuantizedArray:
    """A block-wise 8-bit quantized array (see the module docstring).

    Attributes:
      codes: uint8 ``[..., n_blocks, BLOCK_SIZE]``: indices into the code.
      scales: float32 ``[..., n_blocks]``: each block's absolute maximum.
      shape: the shape of the array it stands for (static).
      signed: which code the indices refer to (static).

    Leading axes beyond the stored ones come from ``jax.vmap`` (one state per config).
    """

    codes: Any
    scales: Any
    shape: tuple[int, ...]
    signed: bool

    def __post_init__(self) -> None:
        if not _registered_with_flax:
            register_flax_serialization()

    def tree_flatten(self):
        return (self.codes, self.scales), (self.shape, self.signed)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes held: one per stored element plus four per block."""
        return int(np.prod(jnp.shape(self.codes))) + 4 * int(np.prod(jnp.shape(self.scales)))


_registered_with_flax = False


def _state_dict(q: QuantizedArray) -> dict[str, Any]:
    from flax import serialization

    return {
        "codes": serialization.to_state_dict(q.codes),
        "scales": serialization.to_state_dict(q.scales),
    }


def _from_state_dict(target: QuantizedArray, state: dict[str, Any]) -> QuantizedArray:
    from flax import serialization

    missing = {"codes", "scales"} - set(state)
    if missing:
        raise ValueError(
            f"QuantizedArray state dict lacks {sorted(missing)} (has {sorted(state)}): it was "
            "not written from an 8-bit (state_dtype='int8') optimizer state."
        )
    codes = serialization.from_state_dict(target.codes, state["codes"], name="codes")
    scales = serialization.from_state_dict(target.scales, state["scales"], name="scales")
    return QuantizedArray(codes, scales, target.shape, target.signed)


def register_flax_serialization() -> None:
    """Teach ``flax.serialization`` the state dict of :class:`QuantizedArray`
    (``{"codes": ..., "scales": ...}``; ``shape`` and ``signed`` come from the target).

    Runs by itself once Flax is imported: at ``import adamjax`` or ``import adamjax.flax``
    and whenever a ``QuantizedArray`` is built; it never imports Flax itself.
    """
    global _registered_with_flax
    if _registered_with_flax or "flax.serialization" not in sys.modules:
        return
    from flax import serialization

    serialization.register_serialization_state(
        QuantizedArray, _state_dict, _from_state_dict, override=True
    )
    _registered_with_flax = True


register_flax_serialization()


def n_blocks(size: int) -> int:
    """Blocks needed for ``size`` elements (at least one, so empty arrays stay regular)."""
    return max(1, -(-size // BLOCK_SIZE))


def _nearest_magnitude(a: jax.Array, bits: int) -> jax.Array:
    """Index of the code magnitude nearest to ``a`` in [0, 1] (int32).

    The magnitudes are 0 and, for each decade ``e < bits``, ``n = 2**(bits-1-e)`` points
    ``10**-e * (0.1 + 0.9 (k+1)/n)``, ``k < n``, stored at indices ``n + k``. For ``a`` in
    the decade ``(10**-(e+1), 10**-e]`` the candidates are that decade's points and its
    lower end ``10**-(e+1)`` (``k = -1``, the last point of the decade below): an even
    grid, so rounding finds the nearest. Only elementwise arithmetic and selects (no
    gathers or searches), so it vectorises on every backend.
    """
    e = jnp.zeros(a.shape, jnp.int32)
    scaled = a
    for j in range(1, bits):
        below = a <= jnp.float32(10.0**-j)
        e = e + below.astype(jnp.int32)
        scaled = jnp.where(below, a * jnp.float32(10.0**j), scaled)
    n = jnp.left_shift(jnp.int32(1), (bits - 1) - e)
    k = jnp.round((scaled - 0.1) / 0.9 * n.astype(jnp.float32) - 1).astype(jnp.int32)
    k = jnp.clip(k, -1, n - 1)
    # In the lowest decade the point below is 0, not 10**-bits: round against its midpoint.
    lowest = e == bits - 1
    k = jnp.where(lowest, jnp.where(scaled < 0.5, -1, 0), k)
    return n + k


def quantize(x: jax.Array, *, signed: bool) -> QuantizedArray:
    """Quantize a real array block-wise to 8 bits (:class:`QuantizedArray`).

    Args:
      x: a real array (any float dtype; the math runs in float32).
      signed: ``True`` for values of either sign (the first moment), ``False`` for
        non-negative values (the second moment); negative values are then an error of use
        and read back as 0.

    Returns:
      The quantized array; :func:`dequantize` reads it back with a relative error per
      element bounded by half the gap of the code around ``x / scale``.
    """
    x = jnp.asarray(x)
    if jnp.iscomplexobj(x):
        raise TypeError("quantize: complex arrays cannot be stored in 8 bits; use float32 state.")
    shape = tuple(int(d) for d in x.shape)
    size = math.prod(shape)
    nb = n_blocks(size)
    flat = jnp.reshape(x.astype(jnp.float32), (-1,))
    flat = jnp.pad(flat, (0, nb * BLOCK_SIZE - size))
    blocks = jnp.reshape(flat, (nb, BLOCK_SIZE))
    finite = jnp.all(jnp.isfinite(blocks), axis=1)  # (a reduced max may drop NaNs)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    safe = jnp.where(finite & (absmax > 0), absmax, 1.0)
    normed = jnp.clip(blocks / safe[:, None], -1.0, 1.0)
    mag_idx = _nearest_magnitude(jnp.abs(normed), 7 if signed else 8)
    if signed:
        idx = jnp.where(normed < 0, _HALF - mag_idx, _HALF + mag_idx)
    else:
        # A non-zero v is stored as at least the smallest positive entry (index 1).
        idx = jnp.where(normed > 0, jnp.maximum(mag_idx, 1), 0)
    scales = jnp.where(finite, absmax, jnp.nan).astype(jnp.float32)
    return QuantizedArray(idx.astype(jnp.uint8), scales, shape, signed)


def dequantize(q: QuantizedArray, dtype: Any = jnp.float32) -> jax.Array:
    """Read a :class:`QuantizedArray` back: ``scale_b * Q[code_i]`` in ``dtype``."""
    values = _code_values(q.codes.astype(jnp.int32), q.signed) * q.scales[:, None]
    return jnp.reshape(jnp.reshape(values, (-1,))[: q.size], q.shape).astype(dtype)


def zeros(shape: tuple[int, ...], *, signed: bool) -> QuantizedArray:
    """The quantized form of ``zeros(shape)`` (all codes at the entry 0, scales 0)."""
    nb = n_blocks(math.prod(shape))
    zero = int(np.searchsorted(_code(signed), 0.0))
    return QuantizedArray(
        jnp.full((nb, BLOCK_SIZE), zero, jnp.uint8),
        jnp.zeros((nb,), jnp.float32),
        tuple(shape),
        signed,
    )


# ----------------------------------------------------------------------------------------
# Moment storage: how the moment estimators read and write a stored moment.

INT8 = "int8"
"""The ``state_dtype`` that selects block-wise 8-bit storage."""


def is_int8(state_dtype: Any) -> bool:
    """Whether ``state_dtype`` asks for 8-bit block-wise storage (the string ``"int8"``)."""
    return isinstance(state_dtype, str) and state_dtype == INT8


def stored_zeros(p: Any, dtype: Any, *, signed: bool) -> Any:
    """Zeros to store a moment of leaf ``p`` with: quantized when ``p`` is large enough.

    Leaves of fewer than :data:`MIN_QUANTIZED_SIZE` elements get float ``dtype`` zeros.
    """
    if math.prod(jnp.shape(p)) < MIN_QUANTIZED_SIZE:
        return jnp.zeros_like(p, dtype=dtype)
    return zeros(tuple(int(d) for d in jnp.shape(p)), signed=signed)


def _is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedArray)


def inside_boxes(tree: Any) -> Any:
    """``tree`` with each single-array box around a :class:`QuantizedArray` moved inside it.

    A moment is built by mapping over the parameters' leaves; a parameter held in a box,
    a pytree node around one array such as ``flax.nnx.Param``, then yields
    ``Box(QuantizedArray(codes, scales))``. Frameworks that keep optimizer state as boxes
    (``nnx.Optimizer`` wraps every leaf in a ``Variable``) assume a box holds one array:
    they rebuild the state's tree of arrays and write each array back into the box at its
    path, and a box holding a ``QuantizedArray`` would receive the bare tree of its two
    children. ``QuantizedArray(Box(codes), Box(scales))`` keeps one array per box, so
    ``codes`` and ``scales`` are each written back where they came from.
    """

    def box_of(x: Any) -> tuple[QuantizedArray, Any] | None:
        """``(q, box)`` when ``x`` is a non-container node around one QuantizedArray."""
        if _is_quantized(x) or isinstance(x, (dict, list, tuple)) or hasattr(x, "keys"):
            return None
        leaves, box = jax.tree_util.tree_flatten(x, is_leaf=_is_quantized)
        n_nodes: int = box.num_nodes  # type: ignore[attr-defined]  # not in jaxlib's stubs
        if len(leaves) == 1 and _is_quantized(leaves[0]) and n_nodes == 2:
            return leaves[0], box
        return None

    def lift(x: Any) -> Any:
        found = box_of(x)
        if found is None:
            return x
        q, box = found
        return QuantizedArray(
            box.unflatten([q.codes]), box.unflatten([q.scales]), q.shape, q.signed
        )

    def is_box(x: Any) -> bool:
        return _is_quantized(x) or box_of(x) is not None

    return jax.tree_util.tree_map(lift, tree, is_leaf=is_box)


def read(stored: Any, dtype: Any) -> jax.Array:
    """A stored moment in ``dtype`` for the math: dequantized, or cast."""
    if isinstance(stored, QuantizedArray):
        return dequantize(stored, dtype)
    return stored.astype(dtype)


def write(value: jax.Array, like: Any) -> Any:
    """``value`` in the storage format of ``like`` (the moment it replaces)."""
    if isinstance(like, QuantizedArray):
        return quantize(value, signed=like.signed)
    return value.astype(like.dtype)
