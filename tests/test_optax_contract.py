"""The Optax contract, for every adamjax optimizer: Optax's wrappers and tools work on it,
its state is stable from step to step, it compiles once, and jit equals eager.

Each test compares against the same optimizer run plainly (or against Optax's own
documented behaviour of the wrapper), never against a hard-coded number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamjax
from tests.helpers import run_loop
from tests.multidevice import run_case

# name -> (factory, keyword arguments): every optimizer with a learning rate as keyword.
OPTIMIZERS = {
    "adam": (adamjax.adam, {"learning_rate": 0.1}),
    "adamax": (adamjax.adamax, {"learning_rate": 0.1}),
    "adagrad": (adamjax.adagrad, {"learning_rate": 0.5}),
    "rmsprop": (adamjax.rmsprop, {"learning_rate": 5e-3}),
    "rmsprop-centered-momentum": (
        adamjax.rmsprop,
        {"learning_rate": 5e-3, "momentum": 0.9, "centered": True},
    ),
    "sgd": (adamjax.sgd, {"learning_rate": 1e-2}),
    "sgd-momentum": (adamjax.sgd, {"learning_rate": 1e-2, "momentum": 0.9}),
    "adadelta": (adamjax.adadelta, {"learning_rate": 0.5}),
    "adamw": (adamjax.adamw, {"learning_rate": 0.1, "weight_decay": 0.01}),
    "amsgrad": (adamjax.amsgrad, {"learning_rate": 0.1}),
    "nadam": (adamjax.nadam, {"learning_rate": 1e-2}),
    "nadamw": (adamjax.nadamw, {"learning_rate": 1e-2, "weight_decay": 0.01}),
    "radam": (adamjax.radam, {"learning_rate": 5e-3}),
}
NAMES = list(OPTIMIZERS)

# inject_hyperparams holds the rates as float32 arrays: 1 - b2 is then computed from
# float32(0.999), off by up to 2^-24 / (1 - b2) = 6e-5 relative from the Python value.
INJECT_TOL = 2.0**-24 / (1 - 0.999)


def make(name, **override):
    factory, kwargs = OPTIMIZERS[name]
    return factory(**{**kwargs, **override})


def params_and_grads(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.normal(size=(3, 4)), dtype),
        "b": jnp.asarray(rng.normal(size=(4,)), dtype),
    }
    grads = [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), dtype), params)
        for _ in range(6)
    ]
    return params, grads


def steps(opt, params, grads, jit=True):
    return run_loop(opt, params, grads, jit=jit, apply=optax.apply_updates)


def close(a, b, rtol=1e-6, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_equals_plain(name):
    factory, kwargs = OPTIMIZERS[name]
    params, grads = params_and_grads()
    injected = optax.inject_hyperparams(factory)(**kwargs)
    p1, s1 = steps(make(name), params, grads)
    p2, s2 = steps(injected, params, grads)
    tol = INJECT_TOL
    close(p2, p1, rtol=tol, atol=tol)
    assert jax.tree.structure(s2.inner_state) == jax.tree.structure(s1)
    close(s2.inner_state, s1, rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameter_set_inside_vmap(name):
    """optax.tree_utils.tree_set on a vmapped learning rate: each member equals the plain
    optimizer built with that rate."""
    factory, kwargs = OPTIMIZERS[name]
    params, grads = params_and_grads()
    opt = optax.inject_hyperparams(factory)(**kwargs)
    state = opt.init(params)
    lr0 = kwargs["learning_rate"]
    rates = jnp.asarray([lr0, lr0 / 10, 0.0])

    def one(lr):
        s = optax.tree_utils.tree_set(state, learning_rate=lr)
        return opt.update(grads[0], s, params)[0]

    batched = jax.jit(jax.vmap(one))(rates)
    for i, lr in enumerate([lr0, lr0 / 10, 0.0]):
        plain = make(name, learning_rate=lr)
        want = plain.update(grads[0], plain.init(params), params)[0]
        close(jax.tree.map(lambda x, i=i: x[i], batched), want, rtol=INJECT_TOL, atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_multisteps_accumulates_then_steps_with_the_mean(name, dtype):
    params, grads = params_and_grads(dtype)
    k = 3
    acc = optax.MultiSteps(make(name), every_k_schedule=k)
    state = jax.jit(acc.init)(params)
    update = jax.jit(acc.update)
    for g in grads[: k - 1]:
        u, state = update(g, state, params)
        assert all(x.dtype == dtype and not np.any(np.asarray(x)) for x in jax.tree.leaves(u))
    u, state = update(grads[k - 1], state, params)
    mean = jax.tree.map(lambda *gs: sum(x.astype(jnp.float32) for x in gs) / k, *grads[:k])
    plain = make(name)
    want, _ = plain.update(
        jax.tree.map(lambda m: m.astype(dtype), mean), plain.init(params), params
    )
    tol = 1e-5 if dtype == jnp.float32 else 2e-2  # bfloat16: the mean itself is rounded
    close(u, want, rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_masked_and_multi_transform(name):
    params, grads = params_and_grads()
    mask = {"w": True, "b": False}
    masked = optax.masked(make(name), mask)
    u, _ = masked.update(grads[0], masked.init(params), params)
    # Optax's masked passes the masked-out leaves through unchanged.
    np.testing.assert_array_equal(u["b"], grads[0]["b"])
    sub = make(name)
    want, _ = sub.update({"w": grads[0]["w"]}, sub.init({"w": params["w"]}), {"w": params["w"]})
    close(u["w"], want["w"])
    multi = optax.multi_transform(
        {"opt": make(name), "frozen": optax.set_to_zero()}, {"w": "opt", "b": "frozen"}
    )
    u2, _ = jax.jit(multi.update)(grads[0], multi.init(params), params)
    close(u2["w"], want["w"])
    assert not np.any(np.asarray(u2["b"]))


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite_skips_a_nonfinite_step(name):
    params, grads = params_and_grads()
    opt = optax.apply_if_finite(make(name), max_consecutive_errors=3)
    state = opt.init(params)
    update = jax.jit(opt.update)
    bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads[0])
    u, state_bad = update(bad, state, params)
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(u))
    assert int(state_bad.notfinite_count) == 1
    close(state_bad.inner_state, state.inner_state, rtol=0, atol=0)
    u, _ = update(grads[0], state_bad, params)
    plain = make(name)
    close(u, plain.update(grads[0], plain.init(params), params)[0])


@pytest.mark.parametrize("name", NAMES)
def test_extra_arguments_to_update_are_accepted_and_ignored(name):
    params, grads = params_and_grads()
    opt = make(name)
    state = opt.init(params)
    u1, s1 = jax.jit(opt.update)(grads[0], state, params)
    u2, s2 = jax.jit(lambda g, s, p: opt.update(g, s, p, value=1.0, unexpected=2))(
        grads[0], state, params
    )
    close(u2, u1, rtol=0, atol=0)
    close(s2, s1, rtol=0, atol=0)


def _abstract(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64])
@pytest.mark.parametrize("name", NAMES)
def test_state_and_updates_are_dtype_stable_under_cond(name, dtype):
    """Optax's check: a lax.cond between the new and the old state (and between the updates
    and the parameters) needs identical structure, shapes and dtypes on both branches."""
    params, grads = params_and_grads(dtype)
    opt = make(name)
    state = opt.init(params)

    @jax.jit
    def step(params, state, g, pick):
        u, new = jax.lax.cond(pick, lambda: opt.update(g, state, params), lambda: (g, state))
        return optax.apply_updates(params, u), new

    p, s = step(params, state, grads[0], True)
    assert jax.tree.structure(s) == jax.tree.structure(state)
    assert _abstract(s) == _abstract(state)
    assert _abstract(p) == _abstract(params)
    u, _ = opt.update(grads[0], state, params)
    assert _abstract(u) == _abstract(grads[0])  # updates in the gradients' dtype


@pytest.mark.parametrize("name", NAMES)
def test_one_compilation_for_every_step(name):
    params, grads = params_and_grads()
    opt = make(name)

    @jax.jit
    def step(params, state, g):
        u, state = opt.update(g, state, params)
        return optax.apply_updates(params, u), state

    state = opt.init(params)
    for g in grads:
        params, state = step(params, state, g)
    assert step._cache_size() == 1


@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager(name):
    params, grads = params_and_grads()
    p_jit, s_jit = steps(make(name), params, grads, jit=True)
    p_eager, s_eager = steps(make(name), params, grads, jit=False)
    close(p_jit, p_eager, rtol=1e-6, atol=1e-7)
    close(s_jit, s_eager, rtol=1e-6, atol=1e-7)


def sharding_is_stable_case():
    """On 4 devices, parameters sharded over a mesh: after a jitted step every moment leaf
    has its parameter's sharding, and the next step keeps every state leaf's sharding.
    (A jitted ``init`` places its zeros on one device, as Optax's does.)"""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("x",))
    row = NamedSharding(mesh, PartitionSpec("x"))
    for name in NAMES:
        params = {"w": jax.device_put(jnp.ones((8, 3)), row), "b": jax.device_put(jnp.ones(8), row)}
        grads = jax.tree.map(lambda p: p * 0.5, params)
        opt = make(name)

        @jax.jit
        def step(params, state, g, opt=opt):
            u, state = opt.update(g, state, params)
            return optax.apply_updates(params, u), state

        p1, s1 = step(params, opt.init(params), grads)
        p2, s2 = step(p1, s1, grads)
        for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
            assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (name, a.sharding, b.sharding)
            if a.shape == (8, 3) or a.shape == (8,):  # a per-parameter moment
                assert a.sharding.is_equivalent_to(row, a.ndim), (name, a.sharding)
        for p in jax.tree.leaves(p2):
            assert p.sharding.is_equivalent_to(row, p.ndim), name


def test_state_sharding_is_stable_on_four_devices():
    run_case(__file__, globals(), "sharding_is_stable_case", 4)
