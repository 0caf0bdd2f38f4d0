"""Save and restore (sharded) optimizer states and parameters with Orbax.

A checkpoint stores every array once, in its global (logical) shape, whatever the mesh it
was written from; each process writes the shards it owns. Restoring takes a *target*:
a tree with the structure of the saved one whose leaves say the shape, dtype and sharding
wanted now. That is what makes a state written on 8 devices (ZeRO-1 moments split 8 ways)
restore onto 4 devices (split 4 ways) or onto 1: Orbax reads, on each device, only the
slice that device's new shard covers (an outline; tests/test_sharding.py runs it)::

    state = zopt.init(params)                              # on 8 devices
    checkpoint.save("/ckpt/step_100", {"params": params, "opt": state})
    like = {"params": params4, "opt": zopt4.init(params4)}  # later, on 4 devices
    restored = checkpoint.restore("/ckpt/step_100", like)   # laid out like `like`

Orbax is an optional dependency (``pip install orbax-checkpoint``, in the ``experiments``
extra); it is imported when one of these functions is called.
"""

from __future__ import annotations

import os
from typing import Any

import jax

__all__ = ["abstract_like", "restore", "save"]

PyTree = Any


def _orbax() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "adamjax.checkpoint needs Orbax: pip install orbax-checkpoint "
            "(or pip install 'adamjax[experiments]')."
        ) from e
    return ocp


def abstract_like(tree: PyTree) -> PyTree:
    """``tree`` with each ``jax.Array`` replaced by a ``jax.ShapeDtypeStruct`` of its shape,
    dtype and sharding: a restore target that holds no device memory.

    Every other leaf is kept as it is, for Orbax to restore in kind: ``ShapeDtypeStruct`` s,
    NumPy arrays and scalars, Python numbers (``TrainState.create`` sets ``step=0``, an
    ``int``) and ``None``.
    """

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(one, tree, is_leaf=lambda v: v is None)


def save(path: str | os.PathLike[str], tree: PyTree, *, overwrite: bool = False) -> None:
    """Write ``tree`` (arrays on any mesh, NamedTuple states included) to directory ``path``.

    Blocks until the checkpoint is complete on disk. ``path`` must not exist unless
    ``overwrite=True``. In a multi-host run every process calls ``save`` with the same
    ``path`` (on a file system all hosts see); each writes its own shards.
    """
    ocp = _orbax()
    path = os.path.abspath(os.fspath(path))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, tree, force=overwrite)
        ckptr.wait_until_finished()


def restore(path: str | os.PathLike[str], like: PyTree) -> PyTree:
    """Read the checkpoint at ``path`` laid out like ``like``.

    Args:
      path: a directory written by :func:`save`.
      like: a tree with the saved structure, concrete or abstract: its leaves may be
        ``jax.Array`` s or ``jax.ShapeDtypeStruct`` s carrying the wanted sharding (for
        instance the output of ``opt.init(params)`` or
        ``adamjax.sharding.zero1(...).init(params)`` on the new mesh), NumPy arrays, Python
        numbers (a fresh ``TrainState``'s ``step``) or ``None``. Only shapes, dtypes,
        shardings and kinds are used, not values. The device count may differ from the one
        the checkpoint was written with.

    Returns:
      The saved values, with ``like``'s tree structure (NamedTuples and all) and shardings;
      a leaf that is a Python number in ``like`` comes back as a Python number.
    """
    ocp = _orbax()
    path = os.path.abspath(os.fspath(path))
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, abstract_like(like))
