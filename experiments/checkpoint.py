"""Epoch checkpoints with orbax-checkpoint: save a pytree per epoch, restore the latest.

Orbax writes each checkpoint into a temporary directory and renames it only once complete, so
a run killed while writing leaves a temporary directory that :func:`latest` ignores: the run
resumes from the last complete checkpoint.

A save returns once the tree is copied to host memory; orbax writes it in a background thread
while the next epoch trains (the write is mostly waiting on the file system, which would
otherwise stall the cores). The next save, :meth:`Checkpointer.latest`, ``restore`` and
``close`` first wait for that write to finish, and raise its error if it failed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]

logging.getLogger("absl").setLevel(logging.WARNING)


class Checkpointer:
    """Saves and restores the training pytree of one grid chunk under ``directory``."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, epoch: int, tree: Any) -> None:
        """Start writing ``tree`` as the checkpoint of ``epoch``, after the previous write has
        finished. Orbax copies host arrays before it returns (its ``NumpyHandler`` default):
        the caller may change (or donate) them as soon as this returns."""
        tree = jax.tree.map(np.asarray, tree)
        self._manager.save(epoch, args=ocp.args.StandardSave(tree), force=True)

    def wait(self) -> None:
        """Block until the last save is complete on disk (raising its error if it failed)."""
        self._manager.wait_until_finished()

    def latest(self) -> int | None:
        """The epoch of the last complete checkpoint, or ``None``."""
        self.wait()
        self._manager.reload()
        return self._manager.latest_step()

    def restore(self, epoch: int, like: Any) -> Any:
        """Restore the checkpoint of ``epoch`` into the structure and dtypes of ``like`` (arrays
        or ``jax.ShapeDtypeStruct``)."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                np.shape(x), x.dtype if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(x).dtype
            ),
            like,
        )
        self.wait()
        restored = self._manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        return jax.tree.map(np.asarray, restored)

    def close(self) -> None:
        """Finish the last write and release the manager's resources."""
        self.wait()
        self._manager.close()
