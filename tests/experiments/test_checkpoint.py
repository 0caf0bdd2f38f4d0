"""Epoch checkpoints written in the background: what a save was given is what is restored."""

import asyncio
import threading

import jax
import jax.numpy as jnp
import numpy as np
from orbax.checkpoint._src.serialization import type_handlers

from experiments.checkpoint import Checkpointer


def _tree(seed: int):
    rng = np.random.default_rng(seed)
    return {
        "state": {"w": jnp.asarray(rng.standard_normal((64, 32), np.float32)), "n": jnp.int32(3)},
        "hist": {"loss": rng.standard_normal(40).astype(np.float32)},
    }


def test_save_returns_before_the_write_and_keeps_what_it_was_given(tmp_path, monkeypatch):
    # Hold the background write of the arrays until the caller has overwritten them: a save
    # that kept references instead of copies would write the overwritten values.
    release = threading.Event()
    original = type_handlers.NumpyHandler._background_serialize

    async def held(self, *args, **kwargs):
        assert await asyncio.to_thread(release.wait, 30), "the save blocked its caller"
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(type_handlers.NumpyHandler, "_background_serialize", held)
    ckpt = Checkpointer(tmp_path / "ckpt")
    tree = _tree(0)
    expected = jax.tree.map(np.array, tree)
    ckpt.save(1, tree)  # returns with the write still held
    tree["hist"]["loss"][:] = np.nan  # the runner fills its history arrays in place
    release.set()
    assert ckpt.latest() == 1
    restored = ckpt.restore(1, expected)
    ckpt.close()
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(got, want)


def test_latest_and_restore_wait_for_the_write_in_flight(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt")
    first, second = _tree(1), _tree(2)
    ckpt.save(1, first)
    ckpt.save(2, second)  # waits for epoch 1's write, then starts epoch 2's
    assert ckpt.latest() == 2
    restored = ckpt.restore(2, second)
    ckpt.close()
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(got, np.asarray(want))
    reopened = Checkpointer(tmp_path / "ckpt")  # a later process sees both complete epochs
    assert reopened.latest() == 2 and reopened.restore(1, first)["hist"]["loss"].tolist() == (
        np.asarray(first["hist"]["loss"]).tolist()
    )
    reopened.close()
