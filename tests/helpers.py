"""Shared helpers for the core tests: run an optimizer over a gradient sequence, compare trees."""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamjax


def random_tree(rng: np.random.Generator, dtype=np.float32):
    """A small pytree of arrays of varied shapes (a scalar included)."""
    return {
        "dense": {
            "w": rng.normal(size=(5, 3)).astype(dtype),
            "b": rng.normal(size=(3,)).astype(dtype),
        },
        "scalar": np.asarray(rng.normal(), dtype),
        "conv": [rng.normal(size=(2, 2, 1, 4)).astype(dtype)],
    }


def gradient_sequence(rng: np.random.Generator, tree, steps: int, dtype=np.float32):
    """Gradients with a leading time axis: noisy, of changing scale, with some exact zeros."""

    def leaf(x):
        shape = (steps,) + np.shape(x)
        g = rng.normal(size=shape) * np.exp(rng.normal(size=(steps,) + (1,) * np.ndim(x)))
        g = g + 0.3 * rng.normal(size=(1,) + np.shape(x))  # a persistent mean
        g[rng.random(shape) < 0.05] = 0.0
        return g.astype(dtype)

    return jax.tree.map(leaf, tree)


def run(opt, params, grads_seq, *, jit: bool = True, apply=adamjax.apply_updates):
    """Apply ``opt`` for every step of ``grads_seq`` (a leading time axis), ``update`` then
    ``apply`` (e.g. ``optax.apply_updates``) in a ``lax.scan``; return params after each step."""

    def body(carry, g):
        p, s = carry
        u, s = opt.update(g, s, p)
        p = apply(p, u)
        return (p, s), p

    def loop(params, grads_seq):
        state = opt.init(params)
        _, ps = jax.lax.scan(body, (params, state), grads_seq)
        return ps

    if jit:
        return jax.jit(loop)(params, grads_seq)
    state = opt.init(params)
    p, out = params, []
    steps = jax.tree.leaves(grads_seq)[0].shape[0]
    for t in range(steps):
        g = jax.tree.map(lambda x, t=t: x[t], grads_seq)
        (p, state), _ = body((p, state), g)
        out.append(p)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *out)


def jit_step(opt, apply=adamjax.apply_updates):
    """``update`` then ``apply`` in one jit: ``step(params, state, grads) -> (params, state)``."""

    @jax.jit
    def step(p, s, g):
        u, s = opt.update(g, s, p)
        return apply(p, u), s

    return step


def run_loop(opt, params, grads, *, jit: bool = False, apply=adamjax.apply_updates):
    """``update`` then ``apply`` for each gradient tree of the list ``grads``, in a Python loop
    (``update`` jitted if ``jit``); return the final params and optimizer state."""
    update = jax.jit(opt.update) if jit else opt.update
    state = opt.init(params)
    for g in grads:
        u, state = update(g, state, params)
        params = apply(params, u)
    return params, state


def assert_trees_equal(actual, expected, what=""):
    """The same tree structure and, leaf by leaf, the same dtype, shape and values (exactly,
    as ``np.testing.assert_array_equal``: NaN equals NaN). Floats narrower than float32
    (bfloat16, float16) are compared as float32, which holds them exactly; ``float0`` leaves
    (tangents of integers) have no values to compare."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
    for (path, x), y in zip(flat_a, jax.tree.leaves(expected), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        where = f"{what} {jax.tree_util.keystr(path)}".strip()
        assert x.dtype == y.dtype and x.shape == y.shape, (
            where,
            x.dtype,
            y.dtype,
            x.shape,
            y.shape,
        )
        if x.dtype == jax.dtypes.float0:
            continue
        if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize < 4:
            x, y = x.astype(np.float32), y.astype(np.float32)
        np.testing.assert_array_equal(x, y, err_msg=where)


def assert_tree_close(actual, expected, rtol, atol):
    """Leafwise ``np.testing.assert_allclose`` with the leaf's path in the message."""
    flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
    flat_e = jax.tree.leaves(expected)
    assert len(flat_a) == len(flat_e)
    for (path, a), e in zip(flat_a, flat_e, strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float64),
            np.asarray(e, np.float64),
            rtol=rtol,
            atol=atol,
            err_msg=jax.tree_util.keystr(path),
        )


def assert_matches_reference_float64(name, make, reference, steps):
    """``make()`` run over ``steps`` float64 gradients (a tree and gradients seeded by ``name``)
    stays float64 and equals ``reference`` leaf by leaf (rtol 1e-10, atol 1e-12)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    with jax.enable_x64(True):
        params = random_tree(rng, np.float64)
        grads = gradient_sequence(rng, params, steps, np.float64)
        got = run(make(), params, grads)
        assert jax.tree.leaves(got)[0].dtype == np.float64
        assert_tree_close(got, reference_tree(reference, params, grads), rtol=1e-10, atol=1e-12)


def reference_tree(reference, params, grads_seq):
    """Apply a NumPy reference ``reference(theta0, grads) -> thetas`` leaf by leaf."""
    return jax.tree.map(lambda p, g: reference(np.asarray(p), np.asarray(g)), params, grads_seq)


def grads_at(params, t):
    """A deterministic gradient tree for step ``t``: ``sin(x (t + 1)) (0.1 + t)`` per leaf."""
    return jax.tree.map(lambda x: jnp.sin(x * (t + 1)) * (0.1 + t), params)


def zeroing_wrapper(opt):
    """A user's wrapper that zeroes the gradients, keeping update's metadata (``wraps``)."""

    @functools.wraps(opt.update)
    def update(updates, state, params=None):
        return opt.update(jax.tree.map(jnp.zeros_like, updates), state, params)

    return optax.GradientTransformation(opt.init, update)


def run_updates(opt, params, nan_leaf, steps=4):
    """Jitted ``update`` for ``steps`` steps of :func:`grads_at`, with a NaN in the first
    element of leaf ``nan_leaf`` at step 2: ``([(updates, state)] per step, update, state)``."""
    update = jax.jit(opt.update)
    st = opt.init(params)
    outs = []
    for t in range(steps):
        g = grads_at(params, t)
        if t == 2:
            g = {**g, nan_leaf: g[nan_leaf].at[0].set(jnp.nan)}
        u, st = update(g, st, params)
        outs.append((u, st))
    return outs, update, st
