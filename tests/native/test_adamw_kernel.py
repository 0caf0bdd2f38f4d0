"""AdamW's native kernel (Adam's plus ``wd * p``) against the XLA-compiled pure chain.

Tolerance: bit for bit, as for Adam (see test_native_kernel.py): the kernel adds the decay
term in the chain's order, ``fma(wd, p, d)`` where XLA's CPU code contracts it (measured at
load time; 2 ulp allowed only if XLA rounds in a way the kernel does not model, which
``native_info()["bitwise_equal_to_xla"]`` reports). The reference is
``adamjax.adamw(..., implementation="jax")``; the kernel is reached with
``implementation="native"``, which raises rather than falls back, and the tests check that
the compiled program calls it. Leaves masked out of the decay run Adam's kernel: the chain
leaves them untouched, so an infinite parameter there must stay infinite (``0 * inf``
would be NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamjax
from adamjax import native
from tests.native.test_native_kernel import _data, _state, assert_trees, needs_kernel

KERNEL = "adamjax_native_adamw_"
ADAM_KERNEL = "adamjax_native_adam_"
STEPS = 60


def _tree(n, state_dtype, seed):
    """Two decayed leaves and one that a mask leaves out, with NaN/inf in g and p."""
    leaves = {}
    for k, (name, size) in enumerate((("w", n), ("b", 37), ("big", 2 * n + 5))):
        leaves[name] = _data(size, state_dtype, seed=seed + k, special=True)
    cols = [{name: leaf[i] for name, leaf in leaves.items()} for i in range(4)]
    return tuple(cols)  # p, g, m, v


def _steps(mask, state_dtype, n):
    """Kernel (apply and update forms) against the chain over STEPS steps; the params."""
    p, g, m, v = _tree(n, state_dtype, seed=n)
    opts = {
        impl: adamjax.adamw(
            3e-3, weight_decay=0.3, mask=mask, state_dtype=state_dtype, implementation=impl
        )
        for impl in ("native", "jax")
    }
    kern, chain = opts["native"], opts["jax"]
    k_apply = jax.jit(lambda g, st, p: adamjax.apply_gradients(kern, g, st, p))
    c_apply = jax.jit(lambda g, st, p: adamjax.apply_gradients(chain, g, st, p))
    k_update, c_update = jax.jit(kern.update), jax.jit(chain.update)
    st = _state(chain, p, m, v, 0)
    assert KERNEL in k_apply.lower(g, st, p).as_text()
    assert KERNEL in k_update.lower(g, st, p).as_text()
    rng = np.random.default_rng(n)
    for step in range(STEPS):
        g = jax.tree.map(
            lambda x: jnp.where(
                jnp.isfinite(x), x * np.float32(0.9) + rng.standard_normal(x.shape), x
            ).astype(jnp.float32),
            g,
        )
        kp, kst = k_apply(g, st, p)
        cp, cst = c_apply(g, st, p)
        ku, kust = k_update(g, st, p)
        cu, cust = c_update(g, st, p)
        assert_trees((kp, kst), (cp, cst), f"apply, step {step}")
        assert_trees((ku, kust), (cu, cust), f"update, step {step}")
        p, st = cp, cst
    return p


MASKS = {
    "all": None,
    "tree": {"w": True, "b": False, "big": True},
    "callable": lambda params: {k: k != "b" for k in params},
}


@needs_kernel
@pytest.mark.parametrize("state_dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("n", [1023, 100_003])
def test_adamw_matches_chain_over_many_steps(n, mask, state_dtype):
    p = _steps(MASKS[mask], state_dtype, n)
    # The special values sit in every leaf's first elements: p[8] = inf, p[9] = NaN.
    b = np.asarray(p["b"])
    if mask == "all":  # decayed: inf - lr * wd * inf is NaN, in the chain and the kernel
        assert np.isnan(b[8])
    else:  # masked out: Adam's step leaves an infinite parameter infinite
        assert np.isinf(b[8])


@needs_kernel
def test_zero_weight_decay_still_multiplies_like_the_chain():
    """``weight_decay=0.0`` is not skipped by the chain when the parameters are given
    (``d + 0 * p``, NaN for p = inf): the kernel computes the same."""
    p, g, m, v = _data(1030, jnp.float32, seed=5, special=True)
    outs = []
    for impl in ("native", "jax"):
        opt = adamjax.adamw(1e-3, weight_decay=0.0, implementation=impl)
        outs.append(jax.jit(opt.update)(g, _state(opt, p, m, v, 2), p))
    assert np.isnan(np.asarray(outs[1][0])[8])
    assert_trees(outs[0], outs[1], "weight_decay=0")


@needs_kernel
def test_vmap_over_learning_rate_and_weight_decay():
    """Traced hyperparameters under vmap: one row of hyperparameters per configuration;
    each configuration equals the chain run on it alone (as for Adam in
    test_native_kernel.py: vmapping the chain changes how XLA fuses it)."""
    data = _data(100_003, jnp.float32, seed=7)
    lrs = jnp.asarray([1e-3, 3e-2, 1e-1], jnp.float32)
    wds = jnp.asarray([0.0, 1e-2, 0.5], jnp.float32)

    def one(lr, wd, p, g, m, v, impl):
        opt = adamjax.adamw(lr, weight_decay=wd, implementation=impl)
        st = _state(opt, p, m, v, 3)
        return opt.update(g, st, p), adamjax.apply_gradients(opt, g, st, p)

    axes = (0, 0, None, None, None, None)
    kernel = jax.jit(jax.vmap(lambda *a: one(*a, "native"), in_axes=axes))
    assert KERNEL in kernel.lower(lrs, wds, *data).as_text()
    got = kernel(lrs, wds, *data)
    alone = jax.jit(lambda *a: one(*a, "jax"))
    for i in range(len(lrs)):
        want = alone(lrs[i], wds[i], *data)
        assert_trees(jax.tree.map(lambda x, i=i: x[i], got), want, f"config {i}")
    # Each configuration is its own: the updates differ between rows.
    u = np.asarray(got[0][0])
    assert not np.array_equal(u[0], u[1]) and not np.array_equal(u[1], u[2])


@needs_kernel
def test_schedules_for_learning_rate_and_weight_decay():
    """Both schedules are called with their own 0-based counts, as in the chain; the state
    (both counts) advances the same."""
    kw = dict(
        learning_rate=adamjax.inverse_sqrt_schedule(1e-2),
        weight_decay=lambda count: 0.5 / (1.0 + count.astype(jnp.float32)),
    )
    kern = adamjax.adamw(**kw, implementation="native")
    chain = adamjax.adamw(**kw, implementation="jax")
    p, g, m, v = _data(2053, jnp.float32, seed=9)
    st = _state(chain, p, m, v, 0)
    k_apply = jax.jit(lambda g, st, p: adamjax.apply_gradients(kern, g, st, p))
    c_apply = jax.jit(lambda g, st, p: adamjax.apply_gradients(chain, g, st, p))
    assert KERNEL in k_apply.lower(g, st, p).as_text()
    for step in range(20):
        g = g * np.float32(0.8) + np.float32(0.01)
        got, want = k_apply(g, st, p), c_apply(g, st, p)
        assert_trees(got, want, f"step {step}")
        p, st = want
    assert int(st[-2].count) == int(st[-1].count) == 20


@needs_kernel
def test_masked_leaves_run_adams_kernel_and_decayed_ones_adamws():
    p, g, m, v = _tree(64, jnp.float32, seed=0)
    opt = adamjax.adamw(1e-3, mask={"w": True, "b": False, "big": True}, implementation="native")
    text = jax.jit(opt.update).lower(g, _state(opt, p, m, v, 0), p).as_text()
    assert KERNEL in text and ADAM_KERNEL in text
    everything = adamjax.adamw(1e-3, implementation="native")
    text = jax.jit(everything.update).lower(g, _state(opt, p, m, v, 0), p).as_text()
    assert KERNEL in text and ADAM_KERNEL not in text


@needs_kernel
def test_traced_mask_runs_the_chain_or_raises():
    """A mask whose leaves are arrays is not known at trace time: ``auto`` runs the chain,
    ``native`` says why."""
    p, g, m, v = _data(100, jnp.float32)
    st = _state(adamjax.adamw(1e-3), p, m, v, 0)

    def auto(flag):
        return adamjax.apply_gradients(adamjax.adamw(1e-3, mask=flag), g, st, p)

    def native_update(flag):
        return adamjax.adamw(1e-3, mask=flag, implementation="native").update(g, st, p)

    assert ADAM_KERNEL[:-5] not in jax.jit(auto).lower(jnp.asarray(True)).as_text()
    with pytest.raises(TypeError, match="mask of Python booleans"):
        jax.jit(native_update).lower(jnp.asarray(True))


@needs_kernel
def test_kernel_refuses_a_row_without_weight_decay():
    p, g, m, v = _data(64, jnp.float32)
    hyper = native.Hyper(*(np.float32(x) for x in (-1e-3, 0.9, 0.1, 0.999, 1e-3, 1e-8, 1, 1)))
    with pytest.raises(ValueError, match="weight_decay"):
        native.float_step("adamw", "apply", [(p, g, m, v)], hyper, fallback=lambda x: x)
