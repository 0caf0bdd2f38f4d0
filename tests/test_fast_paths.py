"""Every fast path against the plain path, under the wrappers and chains users write.

The plain path is the same composition built with ``implementation="jax"`` (the chain of
primitives as written, compiled by XLA). Updates and states must be equal bit for bit; the
kernel must actually run (its custom call is in the compiled program), so that no test
passes by silently comparing the chain with itself. Parameters from ``update`` followed by
``apply_updates`` equal ``apply_updates`` of the chain's updates; inside one jit XLA may
contract the chain's ``p + (-lr * d)`` into one FMA, where the kernel's rounded update is
added: there the two differ by at most one rounding of the update (ulp(u) + ulp(p)).

The trees here have no leaf shorter than 16 elements: XLA compiles such a leaf through
scalar code whose rounding of the chain depends on what surrounds it (seen: 1 ulp on one
of 7 elements inside skip_nonfinite, against the same chain outside it), so the chain is
no fixed reference there; tests/native checks tiny leaves against the chain alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

import adamjax
import adamjax.sharding
from adamjax import native
from adamjax.step import FusedTransformation
from tests.helpers import assert_trees_equal, grads_at, run_updates, zeroing_wrapper

pytestmark = pytest.mark.skipif(
    not native.native_available() or jax.default_backend() != "cpu",
    reason="compares the native CPU kernel with the chain: needs the kernel and a CPU backend",
)

KERNEL = "adamjax_native_"


def params_tree(seed=0):
    rng = np.random.default_rng(seed)
    sizes = {"w": (300, 7), "b": (64,), "big": (70_001,), "empty": (0,)}
    return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in sizes.items()}


def uses_kernel(fn, *args) -> bool:
    return KERNEL in jax.jit(fn).lower(*args).compile().as_text()


def adam(implementation, lr=1e-2, **kw):
    return adamjax.adam(lr, implementation=implementation, **kw)


def one_device_zero1(opt):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    return adamjax.sharding.zero1(opt, mesh, "data")


def make_adam(impl, **kw):
    """adamjax.adam(1e-2, **kw): the kernel (``impl="native"``) or the chain (``"jax"``)."""
    return adamjax.adam(**{"learning_rate": 1e-2, **kw}, implementation=impl)


def make_adamw(impl, **kw):
    """adamjax.adamw(1e-2, weight_decay=0.1, **kw), kernel or chain as make_adam."""
    return adamjax.adamw(**{"learning_rate": 1e-2, "weight_decay": 0.1, **kw}, implementation=impl)


def _by_hand(impl):
    parts = [
        adamjax.scale_by_moments(0.8, 0.99),
        adamjax.bias_correct(0.8, 0.99),
        adamjax.precondition(1e-6),
        adamjax.scale_by_lr(3e-3),
    ]
    return adamjax.chain(*parts, implementation=impl)


def _flat(impl):
    return adamjax.adam(1e-2, layout="flat", implementation=impl)


# name -> wrap(opt): the wrappers put around both Adam and AdamW below
AROUND_BOTH = {
    "optax.chain-clip-first": lambda opt: optax.chain(optax.clip_by_global_norm(0.5), opt),
    "MultiSteps": lambda opt: optax.MultiSteps(opt, every_k_schedule=2),
    "masked": lambda opt: optax.masked(opt, {"w": True, "b": False, "big": True, "empty": True}),
    "functools.wraps-zeroing": zeroing_wrapper,
}

# name -> build(impl): the composition with the kernel's update ("native": raises rather
# than falls back) or its reference ("jax")
WRAPPED = {
    "adam": lambda i: make_adam(i),
    "adam-bf16-state": lambda i: make_adam(i, state_dtype=jnp.bfloat16),
    "adam-no-bias-correction": lambda i: make_adam(i, bias_correction=False),
    "adam-schedule": lambda i: make_adam(i, learning_rate=adamjax.inverse_sqrt_schedule(1e-2)),
    "adam-b1-decay": lambda i: make_adam(i, b1_decay=0.9),
    "adamax": lambda i: adamjax.adamax(1e-2, implementation=i),
    "optax.chain-adam-then-scale": lambda i: optax.chain(make_adam(i), optax.scale(0.5)),
    # eps_root static: an injected (array) eps_root cannot be known to be 0 (see below).
    "inject_hyperparams": lambda i: optax.inject_hyperparams(
        adamjax.adam, static_args=("eps_root",)
    )(learning_rate=1e-2, b1_decay=0.99, implementation=i),
    "skip_nonfinite": lambda i: adamjax.skip_nonfinite(make_adam(i)),
    "temporal_averaging": lambda i: adamjax.temporal_averaging(make_adam(i), decay=0.9),
    "zero1": lambda i: one_device_zero1(make_adam(i)),
    "flat_layout": _flat,
    "chain-by-hand": _by_hand,
    # AdamW: Adam's kernel plus the decay term; leaves masked out run Adam's kernel.
    "adamw": lambda i: make_adamw(i),
    "adamw-mask-tree": lambda i: make_adamw(
        i, mask={"w": True, "b": False, "big": True, "empty": False}
    ),
    "adamw-mask-callable": lambda i: make_adamw(
        i, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    ),
    "adamw-bf16-state": lambda i: make_adamw(i, state_dtype=jnp.bfloat16),
    "adamw-schedules": lambda i: make_adamw(
        i,
        learning_rate=adamjax.inverse_sqrt_schedule(1e-2),
        weight_decay=lambda count: 0.2 / (1.0 + count),
    ),
    "adamw-zero-decay": lambda i: make_adamw(i, weight_decay=0.0),
    "inject_hyperparams-adamw": lambda i: optax.inject_hyperparams(
        adamjax.adamw, static_args=("eps_root",)
    )(learning_rate=1e-2, weight_decay=0.05, implementation=i),
    **{name: lambda i, w=wrap: w(make_adam(i)) for name, wrap in AROUND_BOTH.items()},
    **{f"{name}-adamw": lambda i, w=wrap: w(make_adamw(i)) for name, wrap in AROUND_BOTH.items()},
}


# Wrappers whose arithmetic XLA fuses with the chain's, rounding the chain's own moments
# and updates differently from the chain alone (seen inside skip_nonfinite: 17744 of 70001
# first moments 1 ulp apart, against the same chain outside it, which the kernel equals).
# Their reference is the chain compiled alone, and the wrapper's documented arithmetic.
CONTEXT_ROUNDED = ("skip_nonfinite", "temporal_averaging")


def _reference_steps(name, params, steps=4):
    alone = jax.jit(make_adam("jax").update)
    add = jax.jit(adamjax.apply_updates)
    opt = WRAPPED[name]("jax")
    st = opt.init(params)
    outs = []
    # temporal_averaging: a bound on how far XLA's FMA contractions of the EMA of the
    # parameters may take it: each step at most one rounding of each of its terms and of
    # the result, the earlier error decaying by 0.9.
    bound = jax.tree.map(lambda p: np.zeros(p.shape, np.float32), params)
    for t in range(steps):
        g = grads_at(params, t)
        if t == 2:
            g = {**g, "b": g["b"].at[0].set(jnp.nan)}
        u, inner = alone(g, st.inner, params)
        if name == "skip_nonfinite":
            finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
            if not finite:
                u, inner = jax.tree.map(jnp.zeros_like, u), st.inner
            st = st._replace(inner=inner, skipped=st.skipped + (not finite), last_finite=finite)
        else:  # temporal_averaging, decay 0.9: its EMA of the parameters after the step
            new_p = add(params, u)
            avg = jax.tree.map(lambda a, p: 0.9 * a + (1 - 0.9) * p, st.average, new_p)

            def grow(b, a, p, new):
                terms = [0.9 * np.abs(a), 0.1 * np.abs(p), np.abs(new)]
                return 0.9 * b + sum(np.spacing(np.asarray(x, np.float32)) for x in terms)

            bound = jax.tree.map(grow, bound, st.average, new_p, avg)
            st = st._replace(inner=inner, average=avg, weight=0.9 * st.weight + (1 - 0.9))
        outs.append((u, st, bound))
    return outs


@pytest.mark.parametrize("name", list(WRAPPED))
def test_update_equals_the_chain_under_wrappers(name):
    params = params_tree()
    got, update, st = run_updates(WRAPPED[name]("native"), params, "b")
    if name in CONTEXT_ROUNDED:
        want = _reference_steps(name, params)
        for t, ((u, s), (wu, ws, bound)) in enumerate(zip(got, want, strict=True)):
            assert_trees_equal((u, s.inner), (wu, ws.inner), f"{name}, step {t}")
            if name == "skip_nonfinite":
                assert_trees_equal(s, ws, f"{name}, step {t}")
            else:  # the average: an EMA that XLA may contract into FMAs
                assert_trees_equal(s.weight, jnp.asarray(ws.weight, jnp.float32))
                leaves = (jax.tree.leaves(x) for x in (s.average, ws.average, bound))
                for a, b, tol in zip(*leaves, strict=True):
                    a, b = np.asarray(a), np.asarray(b)
                    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
                    ok = np.isnan(b) | (np.abs(a - b) <= tol)
                    assert np.all(ok), (t, np.max(np.abs(a - b)[~ok]))
    else:
        want = run_updates(WRAPPED[name]("jax"), params, "b")[0]
        assert_trees_equal(got, want, name)  # all steps at once: a leaf's path begins with its step
    assert uses_kernel(update, grads_at(params, 0), st, params), name


@pytest.mark.parametrize("name", list(WRAPPED))
def test_apply_gradients_equals_update_plus_apply_updates(name):
    """A wrapper has no fused apply: apply_gradients is its own update + apply_updates
    (compared with the two in separate jits, which cannot contract). A transformation that
    owns the kernel's apply form equals the chain's jitted apply_gradients bit for bit.
    Either is within one rounding of the update of the chain's jitted apply_gradients."""
    params = params_tree()
    opt, pure = WRAPPED[name]("native"), WRAPPED[name]("jax")
    step = jax.jit(lambda g, st, p: adamjax.apply_gradients(opt, g, st, p))
    pure_step = jax.jit(lambda g, st, p: adamjax.apply_gradients(pure, g, st, p))
    update, add = jax.jit(opt.update), jax.jit(adamjax.apply_updates)
    p = q = params
    st = opt.init(params)
    for t in range(3):
        g = grads_at(params, t)
        u, want_st = update(g, st, p)
        want_p = add(p, u)
        new_p, new_st = step(g, st, p)
        q, q_st = pure_step(g, st, p)
        fused = isinstance(opt, FusedTransformation) and name != "flat_layout"
        if fused:  # (flat_layout over several leaves splits and adds the kernel's updates)
            assert_trees_equal((new_p, new_st), (q, q_st), f"{name}, step {t}")
        else:
            assert_trees_equal((new_p, new_st), (want_p, want_st), f"{name}, step {t}")
        p, st = new_p, new_st
        if name in CONTEXT_ROUNDED:  # no fixed chain reference: see above
            continue
        for x, y, d in zip(*(jax.tree.leaves(a) for a in (new_p, q, u)), strict=True):
            tol = np.spacing(np.abs(np.asarray(d))) + np.spacing(np.abs(np.asarray(y)))
            assert np.all(np.abs(np.asarray(x) - np.asarray(y)) <= tol), name


def test_zeroing_wrapper_moves_nothing():
    """The bug this design removes: a functools.wraps wrapper that zeroes the gradients
    must not inherit adam's fused step (which would move every parameter by the lr)."""
    params = params_tree()
    opt = zeroing_wrapper(adamjax.adam(0.1))
    assert not isinstance(opt, FusedTransformation)
    new_p, _ = jax.jit(lambda g, st, p: adamjax.apply_gradients(opt, g, st, p))(
        grads_at(params, 0), opt.init(params), params
    )
    assert_trees_equal(new_p, params)


def test_primitives_chained_by_hand_are_lowered_like_the_alias():
    parts = [
        adamjax.scale_by_moments(0.9, 0.999),
        adamjax.bias_correct(0.9, 0.999),
        adamjax.precondition(1e-8),
        adamjax.scale_by_lr(1e-2),
    ]
    auto = adamjax.chain(*parts)
    assert isinstance(auto, FusedTransformation) and auto.fused_apply is not None
    hand = adamjax.chain(*parts, implementation="native")
    params = params_tree()
    got, _, _ = run_updates(hand, params, "b")
    want, _, _ = run_updates(adam("jax"), params, "b")
    for a, b in zip(got, want, strict=True):
        assert_trees_equal(a, b)


@pytest.mark.parametrize(
    "parts",
    [
        lambda: [
            optax.clip(1.0),
            adamjax.scale_by_moments(0.9, 0.999),
            adamjax.bias_correct(),
            adamjax.precondition(1e-8),
            adamjax.scale_by_lr(1e-2),
        ],
        lambda: [adamjax.scale_by_moments(0.9, 0.999), adamjax.precondition(1e-8)],
        lambda: [
            adamjax.scale_by_moments(0.9, 0.999),
            adamjax.precondition(1e-8, eps_root=1e-8),
            adamjax.scale_by_lr(1e-2),
        ],
        lambda: [
            adamjax.scale_by_moments(0.9, 0.999),
            zeroing_wrapper(adamjax.bias_correct()),
            adamjax.precondition(1e-8),
            adamjax.scale_by_lr(1e-2),
        ],
        lambda: [
            adamjax.scale_by_moments(0.9, 0.999),
            adamjax.bias_correct(),
            adamjax.precondition(1e-8),
            adamjax.scale_by_lr(1e-2)._replace(update=lambda u, s, p=None: (u, s)),
        ],
    ],
    ids=["unknown-part", "no-lr", "eps-root", "wrapped-primitive", "replaced-update"],
)
def test_chains_the_kernel_does_not_run_are_run_as_written(parts):
    opt = adamjax.chain(*parts())
    assert not isinstance(opt, FusedTransformation)
    with pytest.raises(ValueError, match="implementation='native' cannot run"):
        adamjax.chain(*parts(), implementation="native")


def _loss_of_update(impl):
    def loss(lr, g, mu, st, p):
        opt = adamjax.adam(lr, implementation=impl)
        u, new = opt.update(g, (st[0]._replace(mu=mu), *st[1:]), p)
        leaves = jax.tree.leaves((u, new[0].mu, new[0].nu))
        return sum(jnp.sum(jnp.cos(3.0 * x)) for x in leaves)

    return loss


def test_grad_through_update_is_the_chains():
    params = params_tree()
    st = run_updates(adam("jax"), params, "b", steps=2)[2]
    args = (jnp.float32(1e-2), grads_at(params, 3), st[0].mu, st, params)
    got = jax.jit(jax.grad(_loss_of_update("native"), argnums=(0, 1, 2)))(*args)
    want = jax.jit(jax.grad(_loss_of_update("jax"), argnums=(0, 1, 2)))(*args)
    assert_trees_equal(got, want)
    # The meta-gradient with respect to the learning rate is not zero (the test can fail).
    assert float(got[0]) != 0.0


def test_grad_through_adamw_update_is_the_chains():
    """AdamW with a mask: the derivative w.r.t. the learning rate, the weight decay, the
    gradients and the parameters (read by the decay term) is the chain's."""

    def loss_of(impl):
        def loss(lr, wd, g, p, st):
            mask = {"w": True, "b": False, "big": True, "empty": True}
            opt = adamjax.adamw(lr, weight_decay=wd, mask=mask, implementation=impl)
            u, new = opt.update(g, st, p)
            leaves = jax.tree.leaves((u, new[0].mu, new[0].nu))
            return sum(jnp.sum(jnp.cos(3.0 * x)) for x in leaves)

        return loss

    params = params_tree()
    st = run_updates(make_adamw("jax"), params, "b", steps=2)[2]
    args = (jnp.float32(1e-2), jnp.float32(0.1), grads_at(params, 3), params, st)
    got = jax.jit(jax.grad(loss_of("native"), argnums=(0, 1, 2, 3)))(*args)
    want = jax.jit(jax.grad(loss_of("jax"), argnums=(0, 1, 2, 3)))(*args)
    assert_trees_equal(got, want)
    assert float(got[0]) != 0.0 and float(got[1]) != 0.0  # the test can fail


def test_jvp_through_update_is_the_chains():
    params = params_tree()
    st = run_updates(adam("jax"), params, "b", steps=2)[2]
    g = grads_at(params, 3)
    tangents = (jnp.float32(1.0), jax.tree.map(jnp.cos, g))

    def jvp(impl):
        def f(g, st, p, t):
            def u(lr, g):
                return adamjax.adam(lr, implementation=impl).update(g, st, p)

            return jax.jvp(u, (jnp.float32(1e-2), g), t)

        return jax.jit(f)

    got = jvp("native")(g, st, params, tangents)
    assert_trees_equal(got, jvp("jax")(g, st, params, tangents))
    assert uses_kernel(
        lambda g: adamjax.adam(jnp.float32(1e-2), implementation="native").update(g, st, params),
        g,
    )  # the primal, outside differentiation


def test_update_under_vmap_gives_each_config_its_own_chain():
    """Batched learning rates and gradients: each configuration bit for bit what the chain
    gives it alone (XLA's vmapped chain itself rounds some updates differently, so the
    reference is the unbatched chain)."""
    params = params_tree()
    st = run_updates(adam("jax"), params, "b", steps=2)[2]
    lrs = jnp.asarray([1e-3, 1e-2, 1e-1], jnp.float32)
    gs = jax.tree.map(lambda x: jnp.stack([x, -2 * x, 0.5 * x]), grads_at(params, 3))

    def upd(lr, g, st, p, impl):
        return adamjax.adam(lr, implementation=impl).update(g, st, p)

    batched = jax.jit(
        jax.vmap(lambda lr, g, st, p: upd(lr, g, st, p, "native"), (0, 0, None, None))
    )
    got = batched(lrs, gs, st, params)
    assert uses_kernel(lambda *a: batched(*a), lrs, gs, st, params)
    one = jax.jit(lambda lr, g, st, p: upd(lr, g, st, p, "jax"))
    for i in range(len(lrs)):
        want = one(lrs[i], jax.tree.map(lambda x, i=i: x[i], gs), st, params)
        assert_trees_equal(jax.tree.map(lambda x, i=i: x[i], got), want, f"config {i}")


def test_donated_update_step_keeps_the_state_in_place():
    params = params_tree()
    opt = adam("native")
    st = opt.init(params)
    step = jax.jit(lambda p, st, g: _update_apply(opt, p, st, g), donate_argnums=(0, 1))
    ptrs = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(st[0].mu) if x.size]
    p, st2 = step(params, st, grads_at(params, 0))
    assert [x.unsafe_buffer_pointer() for x in jax.tree.leaves(st2[0].mu) if x.size] == ptrs


def _update_apply(opt, p, st, g):
    u, st = opt.update(g, st, p)
    return optax.apply_updates(p, u), st


def test_implementation_jax_never_runs_the_kernel():
    params = params_tree()
    opt = adam("jax")
    st = opt.init(params)
    g = grads_at(params, 0)
    assert not uses_kernel(opt.update, g, st, params)
    assert not uses_kernel(lambda *a: adamjax.apply_gradients(opt, *a), g, st, params)


def test_unsupported_leaves_run_the_chain_or_raise():
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params_tree())
    opt = adam("auto")
    st = opt.init(params)
    g = grads_at(params, 0)

    def step(o):
        return lambda g, st, p: adamjax.apply_gradients(o, g, st, p)

    assert not uses_kernel(step(opt), g, st, params)
    assert_trees_equal(jax.jit(step(opt))(g, st, params), jax.jit(step(adam("jax")))(g, st, params))
    forced = adam("native")
    with pytest.raises(TypeError, match=r"float32 gradients.*bfloat16"):
        forced.update(g, forced.init(params), params)


def test_inject_hyperparams_with_an_injected_eps_root_runs_the_chain():
    """inject_hyperparams makes every numeric default an array, eps_root too: it is not
    known to be 0 at trace time, so the chain runs as written (same numbers, no kernel)."""
    params = params_tree()
    opt = optax.inject_hyperparams(adamjax.adam)(learning_rate=1e-2)
    got, update, st = run_updates(opt, params, "b")
    pure = optax.inject_hyperparams(adamjax.adam)(learning_rate=1e-2, implementation="jax")
    want, _, _ = run_updates(pure, params, "b")
    for a, b in zip(got, want, strict=True):
        assert_trees_equal(a, b)
    assert not uses_kernel(update, grads_at(params, 0), st, params)


def test_auto_update_is_the_chain_and_apply_gradients_the_kernel():
    """``"auto"``: update runs the chain (XLA fuses it with apply_updates; the kernel's
    update form would need a buffer of its own), apply_gradients the kernel's apply form."""
    params = params_tree()
    opt = adam("auto")
    st = opt.init(params)
    g = grads_at(params, 0)
    assert not uses_kernel(opt.update, g, st, params)
    assert uses_kernel(lambda *a: adamjax.apply_gradients(opt, *a), g, st, params)


def test_grad_through_apply_gradients_is_the_chains():
    """The kernel's apply form is differentiable too (the rule: the chain + apply_updates),
    e.g. for a meta-gradient of the next parameters with respect to the learning rate."""
    params = params_tree()
    st = run_updates(adam("jax"), params, "b", steps=2)[2]
    g = grads_at(params, 3)

    def loss(impl):
        def f(lr, g, p):
            new_p, _ = adamjax.apply_gradients(adamjax.adam(lr, implementation=impl), g, st, p)
            return sum(jnp.sum(jnp.cos(x)) for x in jax.tree.leaves(new_p))

        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))

    got = loss("auto")(jnp.float32(1e-2), g, params)
    assert_trees_equal(got, loss("jax")(jnp.float32(1e-2), g, params))
    assert float(got[0]) != 0.0
    step = jax.jit(lambda lr, g, p: adamjax.apply_gradients(adamjax.adam(lr), g, st, p))
    assert KERNEL in step.lower(jnp.float32(1e-2), g, params).compile().as_text()
