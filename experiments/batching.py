"""The whole dataset on the device, padded for evaluation; minibatches are drawn inside jit.

Training indexes ``x_train`` with a per-epoch permutation inside the compiled epoch (see
:mod:`experiments.train`), so no batch ever crosses from host to device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from experiments import data

__all__ = ["DeviceData", "load_device_data", "pad_for_eval"]


@dataclass(frozen=True)
class DeviceData:
    """Device arrays: images as ``uint8 [N, 784]``, labels ``int32``; ``w_*`` eval masks."""

    x_train: jax.Array
    y_train: jax.Array
    n_train: int
    x_train_eval: jax.Array
    y_train_eval: jax.Array
    w_train_eval: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    w_test: jax.Array
    eval_batch: int


def pad_for_eval(x: np.ndarray, y: np.ndarray, batch: int):
    """Pad ``x, y`` to a multiple of ``batch``; returns ``(x, y, w)`` with ``w`` 1 on real rows."""
    n = x.shape[0]
    total = -(-n // batch) * batch
    w = np.zeros(total, np.float32)
    w[:n] = 1
    xp = np.zeros((total, *x.shape[1:]), x.dtype)
    xp[:n] = x
    yp = np.zeros(total, y.dtype)
    yp[:n] = y
    return xp, yp, w


def from_arrays(x_train, y_train, x_test, y_test, eval_batch_size: int = 1000) -> DeviceData:
    """Put numpy arrays (images ``uint8 [N, 28, 28]``, labels) on the device."""
    # uint8 pixels stay uint8 (scaled to [0, 1] inside the step); float inputs (whitened
    # images) are kept as float32
    kind = np.float32 if np.issubdtype(np.asarray(x_train).dtype, np.floating) else np.uint8
    x_train = np.asarray(x_train, kind).reshape(len(x_train), -1)
    x_test = np.asarray(x_test, kind).reshape(len(x_test), -1)
    y_train = np.asarray(y_train, np.int32)
    y_test = np.asarray(y_test, np.int32)
    eb = min(eval_batch_size, len(x_train), len(x_test))  # one size: one compiled eval
    xtr, ytr, wtr = pad_for_eval(x_train, y_train, eb)
    xte, yte, wte = pad_for_eval(x_test, y_test, eb)
    put = jnp.asarray
    return DeviceData(
        x_train=put(x_train), y_train=put(y_train), n_train=len(x_train),
        x_train_eval=put(xtr), y_train_eval=put(ytr), w_train_eval=put(wtr),
        x_test=put(xte), y_test=put(yte), w_test=put(wte), eval_batch=eb,
    )  # fmt: skip


def load_device_data(
    name: str,
    *,
    train_subset: int = 0,
    test_subset: int = 0,
    eval_batch_size: int = 1000,
    data_dir: str | os.PathLike | None = None,
    whiten: str = "none",
    zca_epsilon: float = 0.01,
) -> DeviceData:
    """Load dataset ``name`` and put it on the device; ``*_subset > 0`` keeps the first examples.

    ``whiten='zca'`` fits ZCA whitening (:mod:`experiments.whitening`) on the training
    examples kept, scaled to [0, 1], and applies it to both splits (stored as float32).
    """
    x_train, y_train = data.load(name, "train", data_dir)
    x_test, y_test = data.load(name, "test", data_dir)
    if train_subset:
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    if test_subset:
        x_test, y_test = x_test[:test_subset], y_test[:test_subset]
    if whiten == "zca":
        from experiments.whitening import fit_zca

        scale = lambda x: np.asarray(x, np.float32).reshape(len(x), -1) / 255.0  # noqa: E731
        zca = fit_zca(scale(x_train), zca_epsilon)
        x_train, x_test = zca(scale(x_train)), zca(scale(x_test))
    elif whiten != "none":
        raise ValueError(f"unknown whitening {whiten!r}; expected 'none' or 'zca'")
    return from_arrays(x_train, y_train, x_test, y_test, eval_batch_size)
