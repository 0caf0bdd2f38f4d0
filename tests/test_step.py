"""apply_gradients and the typed fused apply; the native path equals the pure-JAX path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamjax
from adamjax import native
from adamjax.step import FusedTransformation, apply_gradients
from tests.helpers import assert_trees_equal

needs_native = pytest.mark.skipif(
    not native.native_available(), reason="the native kernel is not built/loaded here"
)


def tree(seed=0, sizes=((37, 5), (1001,), (0,), (3, 3, 3))):
    rng = np.random.default_rng(seed)
    return {f"p{i}": jnp.asarray(rng.normal(size=s), jnp.float32) for i, s in enumerate(sizes)}


def grads_at(params, t):
    return jax.tree.map(lambda x: jnp.sin(x * (t + 1)) * (1.0 + t), params)


def train(opt, params, steps=5, donate=True, unfused=False):
    """``steps`` jitted steps of apply_gradients; ``unfused``: update and apply_updates in
    two jits instead (the updates are rounded before they are added: no FMA contraction)."""
    step = jax.jit(
        lambda p, st, g: apply_gradients(opt, g, st, p), donate_argnums=(0, 1) if donate else ()
    )
    if unfused:
        up, add = jax.jit(opt.update), jax.jit(adamjax.apply_updates)

        def step(p, st, g):
            u, st = up(g, st, p)
            return add(p, u), st

    p = jax.tree.map(jnp.copy, params)
    st = opt.init(p)
    for t in range(steps):
        p, st = step(p, st, grads_at(params, t))
    return p, st


def test_generic_path_is_update_plus_apply_updates():
    params = tree()
    opt = optax.adam(1e-2)
    st = opt.init(params)
    g = grads_at(params, 0)
    u, want_st = opt.update(g, st, params)
    got_p, got_st = apply_gradients(opt, g, st, params)
    assert_trees_equal(got_p, adamjax.apply_updates(params, u))
    assert_trees_equal(got_st, want_st)


def test_fused_apply_is_used_and_may_decline():
    base = adamjax.chain(adamjax.scale_by_lr(0.1))  # a plain chain: no fused apply
    calls = []

    def fused(grads, state, params):
        calls.append(1)
        return "fused-params", state

    opt = FusedTransformation(base.init, base.update, fused)
    assert opt.fused_apply is fused
    p = {"w": jnp.ones(3)}
    assert apply_gradients(opt, p, opt.init(p), p)[0] == "fused-params"
    assert calls == [1]
    # ``update`` is the one it was built with.
    assert_trees_equal(opt.update(p, opt.init(p), p)[0], base.update(p, base.init(p), p)[0])

    declining = FusedTransformation(base.init, base.update, lambda g, s, p: None)
    new_p, _ = apply_gradients(declining, p, declining.init(p), p)
    assert_trees_equal(new_p, {"w": jnp.full(3, 0.9)})


def runs_native(opt, params=None):
    """Whether apply_gradients(opt, ...) traces a call of the native kernel (an FFI call)."""
    params = {"w": jnp.ones(3)} if params is None else params
    jaxpr = jax.make_jaxpr(lambda g, s, p: apply_gradients(opt, g, s, p))(
        params, opt.init(params), params
    )
    return "ffi" in str(jaxpr)


def test_fused_apply_belongs_to_one_object():
    opt = adamjax.adam(1e-3)
    assert isinstance(opt, FusedTransformation) and opt.fused_apply is not None
    assert not isinstance(optax.chain(opt), FusedTransformation)
    # "jax": no native call (the fused apply left is the float32 update-and-add of
    # adamjax.gradient_dtype, which rounds low-precision parameters once).
    assert not runs_native(adamjax.adam(1e-3, implementation="jax"))
    assert runs_native(opt) == (native.native_available() and jax.default_backend() == "cpu")
    # A copy with another update keeps no fused apply (it would skip that update).
    replaced = opt._replace(update=lambda g, s, p=None: opt.update(g, s, p))
    assert isinstance(replaced, FusedTransformation) and replaced.fused_apply is None
    # No function attribute carries it (functools.wraps would copy one).
    assert not [k for k in vars(opt.update) if "fused" in k]


@needs_native
@pytest.mark.parametrize("layout", ["tree", "flat"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"bias_correction": False},
        {"state_dtype": jnp.bfloat16},
        {"b1": 0.5, "b2": 0.9, "eps": 1e-3},
    ],
    ids=["default", "nobias", "bf16-state", "other-betas"],
)
def test_native_equals_jax_bitwise(layout, kwargs):
    """Tree layout: the kernel's apply form rounds like the jitted chain + apply_updates.
    Flat layout over several leaves: the kernel's update form, then the updates are split
    and added leaf by leaf; the reference rounds its updates before adding them too (in
    one jit XLA would contract p + (-lr * d) into an FMA: up to 1 ulp of the update)."""
    params = tree()
    want_p, want_st = train(
        adamjax.adam(1e-2, layout=layout, implementation="jax", **kwargs),
        params,
        unfused=layout == "flat",
    )
    got_p, got_st = train(
        adamjax.adam(1e-2, layout=layout, implementation="native", **kwargs), params
    )
    assert_trees_equal(got_p, want_p)
    assert_trees_equal(got_st, want_st)


@needs_native
def test_native_with_schedule_equals_jax():
    params = tree()
    lr = adamjax.inverse_sqrt_schedule(1e-2)
    want = train(adamjax.adam(lr, implementation="jax"), params)
    got = train(adamjax.adam(lr, implementation="native"), params)
    assert_trees_equal(got, want)


@needs_native
def test_native_under_vmap_over_learning_rates():
    """Each configuration of the vmapped kernel gets what the chain gives it alone: the
    updates and the state bit for bit. The parameters of apply_gradients within one
    rounding of the update (|diff| <= ulp(u) + ulp(p)): XLA contracts p + (-lr * d) into an
    FMA in its vector loop but not always in the rest (seen: 16 of 4096 elements), while
    the kernel contracts everywhere. (XLA's own vmapped chain is no reference: batching the
    learning rate changes how it rounds some updates, by up to 2 ulp.)"""
    params = tree(sizes=((4096,), (50, 70)))
    lrs = jnp.asarray([1e-3, 1e-2, 1e-1], jnp.float32)

    def step(lr, p, st, g, implementation):
        opt = adamjax.adam(lr, implementation=implementation)
        u, new_st = opt.update(g, st, p)
        new_p, also_st = apply_gradients(opt, g, st, p)
        return u, new_st, new_p, also_st

    batched = jax.jit(
        jax.vmap(lambda lr, p, st, g: step(lr, p, st, g, "native"), in_axes=(0, None, None, None))
    )
    one = jax.jit(lambda lr, p, st, g: step(lr, p, st, g, "jax"))
    st = adamjax.adam(1e-3).init(params)
    for t in range(3):
        g = grads_at(params, t)
        got = batched(lrs, params, st, g)
        for i in range(len(lrs)):
            u, new_st, new_p, also_st = jax.tree.map(lambda x, i=i: x[i], got)
            want_u, want_st, want_p, _ = one(lrs[i], params, st, g)
            assert_trees_equal((u, new_st, also_st), (want_u, want_st, want_st))
            for x, y, d in zip(*(jax.tree.leaves(a) for a in (new_p, want_p, u)), strict=True):
                tol = np.spacing(np.abs(np.asarray(d))) + np.spacing(np.abs(np.asarray(y)))
                assert np.all(np.abs(np.asarray(x) - np.asarray(y)) <= tol)
        st = jax.tree.map(lambda x: x[0], got[1])


def test_auto_falls_back_to_jax_for_unsupported_dtypes():
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree())
    want = train(adamjax.adam(1e-2, implementation="jax"), params)
    got = train(adamjax.adam(1e-2), params)
    assert_trees_equal(got, want)


def test_auto_takes_jax_path_for_configs_the_kernel_lacks():
    for opt in (adamjax.adam(1e-3, eps_root=1e-8), adamjax.adam(1e-3, state_dtype=jnp.float16)):
        assert not runs_native(opt)


def test_native_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="eps_root"):
        adamjax.adam(1e-3, eps_root=1e-8, implementation="native")
    with pytest.raises(ValueError, match="implementation"):
        adamjax.adam(1e-3, implementation="fast")
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree())
    opt = adamjax.adam(1e-3, implementation="native")
    with pytest.raises(TypeError, match="float32"):
        apply_gradients(opt, params, opt.init(params), params)
