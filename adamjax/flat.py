"""A flat state layout: one contiguous buffer per dtype instead of one array per leaf.

An Adam step is elementwise, so nothing about its math depends on how the parameters are
split into leaves; but XLA compiles and runs one small kernel (or several) per leaf. With
hundreds of leaves the compile time grows with their number and each step pays a fixed
cost per leaf. :func:`flat_layout` removes both: it wraps any elementwise transformation so
that its state is held as one 1-D buffer per dtype (``{"float32": f32[n]}``), concatenates
the gradients into those buckets, runs the wrapped ``update`` once per bucket and splits the
updates back into the caller's tree. The results are those of the tree layout, element by
element, up to how XLA:CPU rounds one division: it computes ``x / y`` as ``x * (1 / y)`` in
vector loops and as a true division in scalar code, so scalars and leaves shorter than a
vector can differ by up to 2 ulp in an update (large leaves agree bit for bit).

Two ways to use it:

* keep the parameters as a tree and wrap the optimizer: ``flat_layout(adamjax.adam(1e-3))``
  (or ``adamjax.adam(1e-3, layout="flat")``). With :func:`adamjax.step.apply_gradients`
  the update and the parameter update run as one pass over the flat buffers.
* keep the parameters themselves flat (:func:`ravel`), and take views inside the loss:
  ``flat, unravel = ravel(params)``; ``loss(unravel(flat))``. The gradients come out flat
  and a plain ``adamjax.adam`` on them is a single kernel per dtype: no concatenation or
  split per step at all. This is the fastest layout for trees with many small leaves.

The wrapped transformation must act elementwise on its leaves (every adamjax primitive
does, and so do ``optax.adam``/``optax.sgd``...); a transformation that looks at leaf
shapes (e.g. a per-layer norm, or Adafactor's factored moments) needs the tree layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adamjax.base import GradientTransformation, apply_updates
from adamjax.step import FusedTransformation

__all__ = ["FlatLayout", "FlatState", "flat_layout", "layout_of", "ravel"]

Flat = dict[str, jax.Array]


@dataclass(frozen=True)
class _Slot:
    bucket: str  # dtype name of the bucket holding this leaf
    offset: int
    size: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class FlatLayout:
    """Where each leaf of a tree lives in the per-dtype buffers (static, hashable).

    ``buckets`` maps a dtype name to the total length of that buffer; ``slots`` gives
    each leaf (in ``jax.tree`` order) its bucket, offset, size and shape.
    """

    treedef: Any
    slots: tuple[_Slot, ...]
    buckets: tuple[tuple[str, int], ...]

    @property
    def num_leaves(self) -> int:
        return len(self.slots)

    def ravel(self, tree: Any) -> Flat:
        """Concatenate the leaves of ``tree`` into one 1-D buffer per dtype."""
        leaves = jax.tree.leaves(tree)
        if len(leaves) != len(self.slots):
            raise ValueError(
                f"flat layout: the tree has {len(leaves)} leaves but the layout was built for "
                f"{len(self.slots)}; pass trees with the structure of the parameters."
            )
        groups: dict[str, list[jax.Array]] = {name: [] for name, _ in self.buckets}
        for leaf, slot in zip(leaves, self.slots, strict=True):
            groups[slot.bucket].append(jnp.reshape(leaf, (-1,)))
        out = {}
        for name, n in self.buckets:
            parts = groups[name]
            if len(parts) == 1:
                out[name] = parts[0]
            elif not parts or n == 0:
                out[name] = jnp.zeros((0,), name)
            else:
                out[name] = jnp.concatenate(parts)
        return out

    def unravel(self, flat: Flat) -> Any:
        """Split per-dtype buffers back into the tree (dtypes of ``flat`` are kept)."""
        pieces: dict[str, list[jax.Array]] = {}
        for name, _ in self.buckets:
            buf = flat[name]
            sizes = [s.size for s in self.slots if s.bucket == name]
            if len(sizes) == 1:
                pieces[name] = [buf]
            else:
                cuts = np.cumsum(sizes)[:-1].tolist()
                pieces[name] = list(jnp.split(buf, cuts)) if cuts else [buf]
        taken = {name: 0 for name, _ in self.buckets}
        leaves = []
        for slot in self.slots:
            i = taken[slot.bucket]
            taken[slot.bucket] = i + 1
            leaves.append(jnp.reshape(pieces[slot.bucket][i], slot.shape))
        return jax.tree.unflatten(self.treedef, leaves)


def _bucket_name(leaf: Any) -> str:
    return jnp.result_type(leaf).name


def layout_of(tree: Any) -> FlatLayout:
    """The :class:`FlatLayout` of ``tree``: leaves grouped by dtype, in tree order.

    Only shapes and dtypes are read, so ``tree`` may hold tracers or
    ``jax.ShapeDtypeStruct`` values.
    """
    leaves, treedef = jax.tree.flatten(tree)
    offsets: dict[str, int] = {}
    slots = []
    for leaf in leaves:
        name = _bucket_name(leaf)
        shape = tuple(int(d) for d in jnp.shape(leaf))
        size = int(np.prod(shape, dtype=np.int64))
        start = offsets.get(name, 0)
        slots.append(_Slot(name, start, size, shape))
        offsets[name] = start + size
    buckets = tuple(sorted(offsets.items()))
    return FlatLayout(treedef=treedef, slots=tuple(slots), buckets=buckets)


def ravel(tree: Any) -> tuple[Flat, Callable[[Flat], Any]]:
    """``(flat, unravel)``: ``tree`` as one 1-D buffer per dtype, and the way back.

    Unlike :func:`jax.flatten_util.ravel_pytree` no dtype is promoted: a float32 leaf stays
    in the ``"float32"`` buffer and a bfloat16 leaf in the ``"bfloat16"`` one, so the round
    trip is exact. ``unravel`` only slices and reshapes; use it inside the loss to train on
    flat parameters (gradients then come out flat, in the same buckets).
    """
    layout = layout_of(tree)
    return layout.ravel(tree), layout.unravel


class FlatState(NamedTuple):
    """State of :func:`flat_layout`: the wrapped state, built over ``{dtype: buffer}``."""

    inner: Any


def flat_layout(inner: GradientTransformation) -> GradientTransformation:
    """Hold the state of the elementwise transformation ``inner`` in one buffer per dtype.

    ``init(params)`` builds ``inner``'s state over ``ravel(params)``; ``update`` concatenates
    the gradients (and parameters, when given) per dtype, calls ``inner.update`` once and
    splits the updates back into the gradients' tree. The numbers are the same as
    ``inner``'s, because ``inner`` computes elementwise (to 2 ulp on scalars and short leaves,
    where XLA:CPU rounds a division differently; see the module docstring).

    The result owns a fused apply (a :class:`adamjax.step.FusedTransformation`): with
    :func:`adamjax.step.apply_gradients`, the flat updates are split and added leaf by leaf
    (the parameters are never concatenated); when each dtype holds a single leaf, ``inner``'s
    own fused apply (e.g. the native kernel) runs on it in place instead.

    Args:
      inner: a transformation that acts elementwise, such as :func:`adamjax.adam`.

    Returns:
      A transformation with state :class:`FlatState`.
    """

    def init(params):
        return FlatState(inner=inner.init(layout_of(params).ravel(params)))

    def update(updates, state, params=None):
        layout = layout_of(updates)
        flat_g = layout.ravel(updates)
        flat_p = None if params is None else layout.ravel(params)
        flat_u, new_inner = inner.update(flat_g, state.inner, flat_p)
        return layout.unravel(flat_u), FlatState(inner=new_inner)

    inner_fused = inner.fused_apply if isinstance(inner, FusedTransformation) else None

    def fused_apply(grads, state, params):
        layout = layout_of(params)
        flat_g = layout_of(grads).ravel(grads)
        flat_p = layout.ravel(params)
        # ``inner``'s fused apply (e.g. the native kernel) updates flat parameters in place;
        # it pays only when that needs no concatenation and split of the parameters, i.e.
        # when each dtype holds one leaf (figures: docs/fast-paths.md, "Measurements behind
        # the code's choices").
        one_leaf_per_bucket = layout.num_leaves == len(layout.buckets)
        if inner_fused is not None and one_leaf_per_bucket:
            out = inner_fused(flat_g, state.inner, flat_p)
            if out is not None:
                new_p, new_inner = out
                return layout.unravel(new_p), FlatState(inner=new_inner)
        # Split the updates and add them leaf by leaf, so the parameters are never
        # concatenated (flat_p is dead code that XLA drops unless ``inner`` reads the
        # parameters). Same bits: apply_updates is elementwise either way.
        flat_u, new_inner = inner.update(flat_g, state.inner, flat_p)
        return apply_updates(params, layout.unravel(flat_u)), FlatState(inner=new_inner)

    return FusedTransformation(init, update, fused_apply)
