"""Optimizer state on a device mesh, with JAX's own SPMD machinery (``jax.sharding``).

An adamjax optimizer is a pure function of arrays, so on a mesh it needs no special code:
``jax.jit`` with shardings partitions it (GSPMD) and the moments ``m_t, v_t`` live where
the arrays put them. This module holds the little that is left to say:

* :func:`state_shardings` / :func:`init_sharded`: the state follows the parameters'
  sharding. A moment of parameter ``theta[i]`` gets the sharding of ``theta[i]``; scalars
  (the step ``t``) are replicated. ``init_sharded`` runs ``init`` under ``jax.jit`` with
  those ``out_shardings``, so each device allocates only its own shard of the zeros: no
  gather, no full-size temporary on one device.
* :func:`zeros_like_sharded`: the allocation primitive a transformation's ``init`` should
  use so that a plain ``opt.init(params)`` follows the parameters too (see its docstring).
* :func:`zero1`: ZeRO stage 1 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward
  Training Trillion Parameter Models", SC 2020). The parameters are replicated over a data
  axis of ``N`` devices; the optimizer state is sharded over it (each device holds ``1/N``
  of every moment) and so is the optimizer's arithmetic.
* :func:`bytes_per_device`: what each device actually holds (read from
  ``addressable_shards``), to check the two above.

Everything here works with meshes whose axes are ``Auto`` (classic GSPMD:
``jax.lax.with_sharding_constraint``) or ``Explicit`` (sharding in types:
``jax.sharding.reshard``). Nothing is home-made: the collectives are the ones XLA's SPMD
partitioner emits for the shardings asked for.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec, Sharding

__all__ = [
    "bytes_per_device",
    "constrain",
    "init_sharded",
    "state_shardings",
    "total_bytes",
    "zero1",
    "zero1_spec",
    "zeros_like_sharded",
]

PyTree = Any
_Path = tuple[Any, ...]


# --------------------------------------------------------------------------------------
# Allocation that keeps the sharding.
# --------------------------------------------------------------------------------------


def zeros_like_sharded(x: Any, dtype: Any | None = None) -> jax.Array:
    """Zeros with the shape (and sharding) of ``x``, in ``dtype`` (default: ``x``'s dtype).

    ``jnp.zeros(jnp.shape(x), dtype)`` allocates the whole array on the default device,
    whatever ``x``'s sharding: on a mesh, ``opt.init(sharded_params)`` then puts every
    moment, full size, on device 0. ``jnp.zeros_like`` instead creates the zeros with the
    sharding of ``x`` when ``x`` is a concrete ``jax.Array`` (eager ``init``) and carries it
    in the type under ``jax.jit`` on a mesh with ``Explicit`` axes. Under ``jax.jit`` on
    ``Auto`` axes no sharding is known at trace time; there :func:`init_sharded` supplies
    it through ``out_shardings``.

    Python scalars and NumPy arrays are accepted (they have no sharding to keep).
    """
    if dtype is None:
        dtype = jnp.result_type(x)
    return jnp.zeros_like(x, dtype=dtype)


# --------------------------------------------------------------------------------------
# Which state leaf belongs to which parameter.
# --------------------------------------------------------------------------------------


def _leaves_with_paths(tree: PyTree) -> list[tuple[_Path, Any]]:
    return [(tuple(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _match_params(state_like: PyTree, params_like: PyTree) -> list[int | None]:
    """For each leaf of ``state_like``: the index of the parameter leaf it shadows, or None.

    A state leaf shadows parameter ``p`` when the path of ``p`` in the parameter tree is a
    suffix of the leaf's path in the state tree (``state[0].mu['dense']['w']`` shadows
    ``params['dense']['w']``) and the shapes agree. The longest matching path wins, so the
    rule is unambiguous for any tree of NamedTuples, dicts and lists, which is what
    Optax-style states are. Scalars such as the step count match nothing.
    """
    params = _leaves_with_paths(params_like)
    out: list[int | None] = []
    for spath, sleaf in _leaves_with_paths(state_like):
        best, best_len = None, -1
        for i, (ppath, pleaf) in enumerate(params):
            n = len(ppath)
            if n > len(spath) or n <= best_len:
                continue
            if spath[len(spath) - n :] != ppath:
                continue
            if tuple(jnp.shape(sleaf)) != tuple(jnp.shape(pleaf)):
                continue
            best, best_len = i, n
        # A scalar state leaf shadowing a scalar parameter is indistinguishable from a step
        # counter unless the paths tell them apart; require a non-empty path match then.
        if best is not None and jnp.ndim(sleaf) == 0 and best_len == 0:
            best = None
        out.append(best)
    return out


def _mesh_of(params: PyTree) -> Mesh | None:
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            mesh = sharding.mesh
            return mesh if isinstance(mesh, Mesh) else None
    return None


def _replicated_like(params: PyTree) -> Sharding:
    mesh = _mesh_of(params)
    if mesh is not None:
        return NamedSharding(mesh, PartitionSpec())
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None and len(sharding.device_set) == 1:
            return sharding
    raise ValueError(
        "state_shardings needs the parameters to be jax.Arrays with a NamedSharding (put "
        "them on a mesh with jax.device_put(params, NamedSharding(mesh, spec))) or all on "
        "one device; pass `replicated=` to say where scalar state should live."
    )


def state_shardings(
    opt: optax.GradientTransformation,
    params: PyTree,
    *,
    replicated: Sharding | None = None,
) -> PyTree:
    """The sharding of every leaf of ``opt.init(params)`` when the state follows ``params``.

    A leaf that shadows a parameter (a moment ``m``, ``v``, a momentum trace, an average
    of the parameters) gets that parameter's ``.sharding``; every other leaf (step counts,
    scalars, leaves of other shapes) gets ``replicated`` (default: replicated over the
    parameters' mesh). Nothing is computed: ``init`` is only traced (``jax.eval_shape``).

    Args:
      opt: the transformation whose state is wanted.
      params: the parameters, as ``jax.Array`` s carrying their shardings.
      replicated: the sharding for leaves that do not shadow a parameter.

    Returns:
      A tree with the structure of ``opt.init(params)`` and a ``jax.sharding.Sharding`` in
      every leaf, ready for ``jax.jit(..., out_shardings=...)`` or ``jax.device_put``.
    """
    if replicated is None:
        replicated = _replicated_like(params)
    abstract = jax.eval_shape(opt.init, params)
    param_leaves = jax.tree.leaves(params)
    matches = _match_params(abstract, params)
    shardings = [replicated if i is None else param_leaves[i].sharding for i in matches]
    return jax.tree.unflatten(jax.tree.structure(abstract), shardings)


def init_sharded(
    opt: optax.GradientTransformation,
    params: PyTree,
    *,
    shardings: PyTree | None = None,
) -> PyTree:
    """``opt.init(params)`` with the state laid out like the parameters (no gather).

    ``init`` runs under ``jax.jit`` with ``out_shardings=state_shardings(opt, params)``
    (or ``shardings`` if given), so every device allocates only its own shard of each
    moment; no device ever holds a full-size copy of a sharded moment. This is correct for
    any transformation, whatever its ``init`` allocates with.
    """
    if shardings is None:
        shardings = state_shardings(opt, params)
    return jax.jit(opt.init, out_shardings=shardings)(params)


# --------------------------------------------------------------------------------------
# Constraints that work on Auto and Explicit meshes, traced or eager.
# --------------------------------------------------------------------------------------


def _is_explicit(sharding: NamedSharding) -> bool:
    mesh = sharding.mesh
    types = tuple(getattr(mesh, "axis_types", None) or ())
    return bool(types) and all(t == AxisType.Explicit for t in types)


def constrain(x: PyTree, shardings: PyTree) -> PyTree:
    """Lay ``x`` out as ``shardings`` (a tree of ``NamedSharding`` s, or one for all leaves).

    Under ``jax.jit`` this is a sharding *constraint*: XLA's SPMD partitioner inserts the
    collective that moves the data (a slice for replicated -> sharded, which communicates
    nothing; an all-gather for sharded -> replicated; a reduce-scatter where a sum is
    followed by a slice). It uses ``jax.lax.with_sharding_constraint`` on ``Auto`` mesh axes
    and ``jax.sharding.reshard`` on ``Explicit`` ones. Outside ``jit`` it is
    ``jax.device_put``. ``None`` leaves are left alone.
    """
    if isinstance(shardings, Sharding):
        shardings = jax.tree.map(lambda _: shardings, x)

    def one(leaf: Any, sharding: Sharding) -> Any:
        if leaf is None:
            return None
        if not isinstance(leaf, jax.core.Tracer):
            return jax.device_put(leaf, sharding)
        if isinstance(sharding, NamedSharding) and _is_explicit(sharding):
            return jax.sharding.reshard(leaf, sharding)
        return jax.lax.with_sharding_constraint(leaf, sharding)

    return jax.tree.map(one, x, shardings, is_leaf=lambda v: v is None)


# --------------------------------------------------------------------------------------
# ZeRO stage 1.
# --------------------------------------------------------------------------------------


def _entry_axes(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    if isinstance(entry, tuple):
        return tuple(entry)
    return (entry,)


def zero1_spec(
    shape: tuple[int, ...],
    mesh: Mesh,
    axis: str = "data",
    base: PartitionSpec | None = None,
) -> PartitionSpec:
    """Where ZeRO-1 puts a moment of shape ``shape``: its largest dim divisible by ``N``.

    ``N = mesh.shape[axis]``. Starting from ``base`` (the parameter's own spec, e.g. a
    model-parallel layout; default: replicated), ``axis`` is added to the dimension with
    the largest per-device size that ``N`` divides (the first such one on ties). If no
    dimension qualifies (a scalar, a bias of 10 entries on 8 devices) the spec is ``base``
    unchanged: that leaf stays replicated over ``axis``. ``N = 1`` also leaves ``base``.
    """
    base = PartitionSpec() if base is None else base
    entries = list(base) + [None] * (len(shape) - len(base))
    if any(axis in _entry_axes(e) for e in entries):
        return PartitionSpec(*entries)
    n = mesh.shape[axis]
    best, best_size = None, 0
    for d, size in enumerate(shape):
        split = math.prod(mesh.shape[a] for a in _entry_axes(entries[d]))
        local = size // split if size % split == 0 else 0
        if n > 1 and local % n == 0 and local > best_size:
            best, best_size = d, local
    if best is None:
        return PartitionSpec(*entries)
    old = _entry_axes(entries[best])
    entries[best] = (*old, axis) if old else axis
    return PartitionSpec(*entries)


def _quantized_block_axes(state_like: PyTree) -> list[int | None]:
    """Per leaf of ``state_like``: the block count if it belongs to a quantized moment."""
    from adamjax.quantize import QuantizedArray

    out: list[int | None] = []
    for node in jax.tree.leaves(state_like, is_leaf=lambda x: isinstance(x, QuantizedArray)):
        if isinstance(node, QuantizedArray):  # flattens to (codes, scales)
            out += [int(jnp.shape(node.scales)[0])] * 2
        else:
            out.append(None)
    return out


def zero1(
    opt: optax.GradientTransformation,
    mesh: Mesh,
    axis: str = "data",
    *,
    param_specs: PyTree | None = None,
) -> optax.GradientTransformationExtraArgs:
    """ZeRO-1: shard ``opt``'s state over the data axis ``axis`` of ``mesh``; same math.

    In data-parallel training every one of the ``N`` devices on ``axis`` holds the full
    parameters and, without this wrapper, the full optimizer state: for Adam ``m`` and
    ``v``, twice the parameters' bytes on *every* device. With it, each moment is split
    along one dimension (:func:`zero1_spec`) so each device holds ``1/N`` of it and
    computes ``1/N`` of the update. The parameters and the returned updates stay replicated
    (or laid out as ``param_specs``), so the wrapper drops into an ordinary training step.

    The update, for gradients ``g``, parameters ``theta`` and state ``s`` sharded ``S``::

        g_S     = constrain(g, S)        # g replicated: a local slice, no communication.
                                         # g a pending cross-device sum (the backward pass
                                         # of a data-parallel loss): XLA may emit a
                                         # reduce-scatter instead of an all-reduce.
        u_S, s  = opt.update(g_S, s, constrain(theta, S))   # local, 1/N of the arithmetic
        u       = constrain(u_S, replicated)                 # all-gather of the updates

    so the only communication the optimizer adds is one all-gather of the updates (the
    size of the parameters) per step. Results equal ``opt``'s to float32 rounding; any
    transformation works, including ones with global reductions (``clip_by_global_norm``:
    GSPMD inserts the cross-device sum it needs).

    Args:
      opt: any Optax-style transformation (``adamjax.adam(...)``, a chain, ...).
      mesh: the device mesh; ``mesh.shape[axis]`` devices share the state.
      axis: the mesh axis the batch is split over.
      param_specs: the parameters' ``PartitionSpec`` s if they are themselves sharded over
        other mesh axes (model parallelism); default: replicated. ``axis`` is added to them.

    Returns:
      A transformation with the same state structure as ``opt``. Its ``init`` allocates each
      device's shard only (``jax.jit`` with ``out_shardings``). Leaves with no dimension
      divisible by ``N`` stay replicated; :func:`zero1_spec` says which.
    """
    if axis not in mesh.axis_names:
        raise ValueError(f"zero1: mesh has axes {mesh.axis_names}; there is no axis {axis!r}.")
    opt = optax.with_extra_args_support(opt)
    replicated = NamedSharding(mesh, PartitionSpec())

    def param_layout(tree: PyTree) -> tuple[PyTree, PyTree]:
        """(sharded-over-axis, parameter) layouts for a tree shaped like the params."""
        bases = (
            jax.tree.map(lambda _: PartitionSpec(), tree) if param_specs is None else param_specs
        )
        leaves, treedef = jax.tree.flatten(tree)
        base_leaves = treedef.flatten_up_to(bases)  # type: ignore[attr-defined]
        sharded = [
            NamedSharding(mesh, zero1_spec(jnp.shape(x), mesh, axis, b))
            for x, b in zip(leaves, base_leaves, strict=True)
        ]
        own = [NamedSharding(mesh, b) for b in base_leaves]
        unflatten = jax.tree_util.tree_unflatten
        return unflatten(treedef, sharded), unflatten(treedef, own)

    def state_layout(params_like: PyTree, state_like: PyTree) -> PyTree:
        sharded, _ = param_layout(params_like)
        sharded_leaves = jax.tree.leaves(sharded)
        matches = _match_params(state_like, params_like)
        out = [replicated if i is None else sharded_leaves[i] for i in matches]
        # 8-bit moments (adamjax.quantize) are split along their block axis: whole blocks,
        # each with its own scale, per device.
        for k, blocks in enumerate(_quantized_block_axes(state_like)):
            if blocks is not None and blocks % mesh.shape[axis] == 0:
                out[k] = NamedSharding(mesh, PartitionSpec(axis))
        return jax.tree.unflatten(jax.tree.structure(state_like), out)

    def init(params: PyTree) -> PyTree:
        abstract = jax.eval_shape(opt.init, params)
        layout = state_layout(params, abstract)
        return jax.jit(opt.init, out_shardings=layout)(params)

    def update(
        updates: PyTree, state: PyTree, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, PyTree]:
        sharded, own = param_layout(updates)
        grads = constrain(updates, sharded)
        if params is not None:
            params = constrain(params, sharded)
        new_updates, new_state = opt.update(grads, state, params, **extra_args)
        new_state = constrain(new_state, state_layout(updates, new_state))
        return constrain(new_updates, own), new_state

    return optax.GradientTransformationExtraArgs(init, update)


# --------------------------------------------------------------------------------------
# Measuring.
# --------------------------------------------------------------------------------------


def bytes_per_device(tree: PyTree) -> dict[Any, int]:
    """Bytes each device holds for the arrays of ``tree``, read from ``addressable_shards``.

    A replicated leaf counts in full on every device; a leaf sharded ``N`` ways counts
    ``1/N`` on each. Only this process's (addressable) devices are reported.
    """
    out: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, jax.Array):
            continue
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


def total_bytes(tree: PyTree) -> int:
    """Bytes of ``tree``'s arrays counted once (the logical, unsharded size)."""
    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree) if hasattr(leaf, "nbytes"))
