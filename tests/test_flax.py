"""adamjax drops into Flax unchanged: a Linen TrainState and an nnx.Optimizer."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.linen.fp8_ops import OVERWRITE_WITH_GRADIENT
from flax.training import train_state

import adamjax
import adamjax.flax
from adamjax import native
from tests.helpers import assert_trees_equal


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32) + 0.1
    return jnp.asarray(x), jnp.asarray(y)


def test_linen_train_state_takes_ten_adam_steps_like_optax():
    x, y = _data()
    model = linen.Dense(1)
    params = model.init(jax.random.key(0), x)

    def loss_fn(p):
        return jnp.mean((model.apply(p, x)[:, 0] - y) ** 2)

    @jax.jit
    def step(state):
        grads = jax.grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads)

    ours = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=adamjax.adam(0.05))
    theirs = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(0.05))
    loss0 = loss_fn(params)
    for _ in range(10):
        ours, theirs = step(ours), step(theirs)
    assert int(ours.step) == 10
    assert loss_fn(ours.params) < 0.7 * loss0
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(theirs.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _nnx_losses(tx):
    x, y = _data()
    model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def loss_fn(m):
        return jnp.mean((m(x) - y[:, None]) ** 2)

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    return np.array([float(step(model, optimizer)) for _ in range(10)] + [float(loss_fn(model))])


def test_nnx_optimizer_takes_ten_adam_steps():
    ours = _nnx_losses(adamjax.adam(0.2))
    np.testing.assert_allclose(ours, _nnx_losses(optax.adam(0.2)), rtol=1e-5)
    assert ours[-1] < 0.5 * ours[0]


# ---------------------------------------------------------------------------------------
# adamjax.flax: Flax's train states with the one-pass step (adamjax.apply_gradients).
#
# Each case runs the same transformation through adamjax.flax's class and through Flax's
# own, jitted with the state donated, and asserts the same bits. Flax's classes step as
# ``tx.update`` + ``optax.apply_updates``; ours as ``adamjax.apply_gradients``, which for
# ``adamjax.adam`` on the CPU is the native kernel: it runs the XLA chain's operations in
# the same order without FMA contraction, so it equals it bit for bit (adamjax.native's own
# tests check this across dtypes and sizes), and every other transformation runs the
# two-call form itself (float32 ``p + u`` in both ``apply_updates``). No tolerance is due,
# with one exception that the models here avoid (every leaf has two elements or more): on a
# one-element leaf XLA's simplifier rewrites the chain differently (it keeps true divisions
# and folds 1 - b1^t into the denominator), so the kernel and XLA may differ there by an
# ulp; test_single_element_leaf_within_rounding derives and checks that bound.

STEPS = 4
NATIVE_TARGET = "adamjax_native_"


def _halved_by_wrapper(opt):
    """A user's wrapper that halves the update, copying ``update``'s metadata with
    ``functools.wraps`` (a fast path must not survive it)."""

    @functools.wraps(opt.update)
    def update(grads, state, params=None):
        u, state = opt.update(grads, state, params)
        return jax.tree.map(lambda x: 0.5 * x, u), state

    return optax.GradientTransformation(opt.init, update)


OPTIMIZERS = {
    "adam": lambda: adamjax.adam(0.01),
    "adam_bf16_state": lambda: adamjax.adam(0.01, state_dtype=jnp.bfloat16),
    "adam_schedule": lambda: adamjax.adam(adamjax.inverse_sqrt_schedule(0.01)),
    "adamax": lambda: adamjax.adamax(0.01),
    "adamw": lambda: adamjax.adamw(0.01, weight_decay=0.1),
    "adamw_decay_matrices": lambda: adamjax.adamw(
        0.01, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    ),
    "sgd_momentum": lambda: adamjax.sgd(0.01, momentum=0.9),
    "clip_then_adam": lambda: optax.chain(optax.clip_by_global_norm(1.0), adamjax.adam(0.01)),
    "skip_nonfinite_adam": lambda: adamjax.skip_nonfinite(adamjax.adam(0.01)),
    "optax_adam": lambda: optax.adam(0.01),
}
# Transformations that are exactly adamjax.adam, adamax or adamw (chains adamjax.chain
# lowers): the native kernel runs them on the CPU.
FUSED = {"adam", "adam_bf16_state", "adam_schedule", "adamax", "adamw", "adamw_decay_matrices"}
native_on_cpu = native.native_available() and jax.default_backend() == "cpu"

# A functools.wraps wrapper around adam's update that halves it: the wrapper's own update
# runs (the fused step belongs to adam's transformation object, not to its update).
CASES = [*OPTIMIZERS, "wraps_halved_adam"]


def _make_tx(name):
    if name == "wraps_halved_adam":
        return _halved_by_wrapper(adamjax.adam(0.01))
    return OPTIMIZERS[name]()


class _MLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(2)(jnp.tanh(linen.Dense(8)(x)))


def _linen_setup():
    x, y = _data()
    model = _MLP()
    params = model.init(jax.random.key(0), x)["params"]

    def loss_fn(p):
        return jnp.mean((model.apply({"params": p}, x) - y[:, None]) ** 2)

    return model, params, loss_fn


def _linen_step(loss_fn):
    def step(state):
        return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))

    return step


def _jit_twice(fn, **kwargs):
    """Two separately jitted copies of ``fn``: one for adamjax's state, one for Flax's.

    JAX (0.10) compares the tree structures of registered dataclasses without their class,
    so one jitted function called with ``adamjax.flax.TrainState`` and then with Flax's
    ``TrainState`` (same fields, same ``tx``) may reuse the first trace for the second
    call: the comparison would then be between one program and itself.
    """
    return (
        jax.jit(lambda *a: fn(*a), **kwargs),
        jax.jit(lambda *a: fn(*a), **kwargs),
    )


@pytest.mark.parametrize("name", CASES)
def test_train_state_equals_flax_train_state_bit_for_bit(name):
    model, params, loss_fn = _linen_setup()
    step_ours, step_theirs = _jit_twice(_linen_step(loss_fn), donate_argnums=0)
    ours = adamjax.flax.TrainState.create(
        apply_fn=model.apply, params=jax.tree.map(jnp.copy, params), tx=_make_tx(name)
    )
    theirs = train_state.TrainState.create(
        apply_fn=model.apply, params=jax.tree.map(jnp.copy, params), tx=_make_tx(name)
    )
    loss0 = loss_fn(params)
    for _ in range(STEPS):
        ours, theirs = step_ours(ours), step_theirs(theirs)
    assert type(ours) is adamjax.flax.TrainState
    assert int(ours.step) == int(theirs.step) == STEPS
    assert_trees_equal((ours.params, ours.opt_state), (theirs.params, theirs.opt_state))
    assert loss_fn(ours.params) < loss0  # the steps did move the parameters downhill


@pytest.mark.parametrize(
    "name", ["adam", "adam_bf16_state", "adamax", "adamw", "adamw_decay_matrices", "clip_then_adam"]
)
def test_train_state_takes_the_native_kernel_exactly_for_the_lowered_chains(name):
    """The comparison above is between two different programs: ours calls the native
    kernel for adamjax.adam, adamax and adamw on the CPU, Flax's never does (nor any other
    tx)."""
    model, params, loss_fn = _linen_setup()
    step_ours, step_theirs = _jit_twice(_linen_step(loss_fn))
    tx = _make_tx(name)
    ours = adamjax.flax.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    theirs = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    assert (NATIVE_TARGET in step_ours.lower(ours).as_text()) == (native_on_cpu and name in FUSED)
    assert NATIVE_TARGET not in step_theirs.lower(theirs).as_text()


def test_train_state_is_a_flax_train_state_with_its_fields():
    model, params, _ = _linen_setup()
    state = adamjax.flax.TrainState.create(apply_fn=model.apply, params=params, tx=adamjax.adam(1))
    assert isinstance(state, train_state.TrainState)
    assert [f.name for f in state.__dataclass_fields__.values()] == list(
        train_state.TrainState.__dataclass_fields__
    )
    assert state.step == 0


def test_train_state_step_counter_replace_and_extra_fields():
    """``replace`` keeps the class (so the next step is still fused); ``apply_gradients``
    replaces extra fields of a subclass as Flax's does; the counter counts calls."""

    class WithStats(adamjax.flax.TrainState):
        stats: Any

    class FlaxWithStats(train_state.TrainState):
        stats: Any

    model, params, loss_fn = _linen_setup()

    def step(state):
        grads = jax.grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads, stats=state.stats + 1.0)

    step_ours, step_theirs = _jit_twice(step, donate_argnums=0)
    ours = WithStats.create(
        apply_fn=model.apply,
        params=jax.tree.map(jnp.copy, params),
        tx=adamjax.adam(0.01),
        stats=jnp.zeros(()),
    )
    theirs = FlaxWithStats.create(
        apply_fn=model.apply, params=params, tx=adamjax.adam(0.01), stats=jnp.zeros(())
    )
    for _ in range(2):
        ours, theirs = step_ours(ours), step_theirs(theirs)
    assert float(ours.stats) == 2.0 and int(ours.step) == 2
    ours, theirs = ours.replace(step=10), theirs.replace(step=10)
    assert type(ours) is WithStats
    ours, theirs = step_ours(ours), step_theirs(theirs)
    assert int(ours.step) == int(theirs.step) == 11
    assert jnp.asarray(ours.step).dtype == jnp.asarray(theirs.step).dtype
    assert_trees_equal(
        (ours.params, ours.opt_state, ours.stats), (theirs.params, theirs.opt_state, theirs.stats)
    )


def test_train_state_overwrite_with_gradient_collection_like_flax():
    """fp8 layers keep an ``_overwrite_with_gradient`` collection beside ``params``: only
    ``params`` is optimized, the other takes its gradient as its new value (as in Flax)."""
    model, params, loss_fn = _linen_setup()
    variables = {"params": params, OVERWRITE_WITH_GRADIENT: {"scale": jnp.ones((3,))}}

    def step(state):
        g = jax.grad(loss_fn)(state.params["params"])
        grads = {"params": g, OVERWRITE_WITH_GRADIENT: {"scale": jnp.full((3,), 7.0)}}
        return state.apply_gradients(grads=grads)

    step_ours, step_theirs = _jit_twice(step, donate_argnums=0)
    copy = functools.partial(jax.tree.map, jnp.copy)
    ours = adamjax.flax.TrainState.create(
        apply_fn=model.apply, params=copy(variables), tx=adamjax.adam(0.01)
    )
    theirs = train_state.TrainState.create(
        apply_fn=model.apply, params=copy(variables), tx=adamjax.adam(0.01)
    )
    for _ in range(2):
        ours, theirs = step_ours(ours), step_theirs(theirs)
    np.testing.assert_array_equal(ours.params[OVERWRITE_WITH_GRADIENT]["scale"], 7.0)
    assert_trees_equal((ours.params, ours.opt_state), (theirs.params, theirs.opt_state))


def test_train_state_serialization_round_trip_and_flax_checkpoints_load():
    """The state dict has Flax's layout: a Flax checkpoint restores into ours (and back),
    and training continues where it stopped."""
    model, params, loss_fn = _linen_setup()
    step_ours, step_theirs = _jit_twice(_linen_step(loss_fn))
    ours = adamjax.flax.TrainState.create(
        apply_fn=model.apply, params=params, tx=adamjax.adam(0.01)
    )
    theirs = train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=adamjax.adam(0.01)
    )
    for _ in range(3):
        ours, theirs = step_ours(ours), step_theirs(theirs)
    ours_dict = flax.serialization.to_state_dict(ours)
    assert_trees_equal(ours_dict, flax.serialization.to_state_dict(theirs))

    template = adamjax.flax.TrainState.create(
        apply_fn=model.apply, params=params, tx=adamjax.adam(0.01)
    )
    from_theirs = flax.serialization.from_bytes(template, flax.serialization.to_bytes(theirs))
    assert type(from_theirs) is adamjax.flax.TrainState and int(from_theirs.step) == 3
    assert_trees_equal(flax.serialization.to_state_dict(from_theirs), ours_dict)
    restored = flax.serialization.from_state_dict(template, ours_dict)
    assert_trees_equal(step_ours(restored).params, step_ours(ours).params)
    assert_trees_equal(step_ours(restored).params, step_theirs(theirs).params)


# ---------------------------------------------------------------------------------------
# nnx


class _NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.out = nnx.Linear(8, 2, rngs=rngs)
        self.calls = nnx.Variable(jnp.zeros((), jnp.int32))  # not a Param: not optimized

    def __call__(self, x):
        self.calls[...] += 1
        return self.out(jnp.tanh(self.hidden(x)))


def _nnx_run(cls, tx, steps=STEPS, graph=None):
    x, y = _data()
    model = _NnxMLP(nnx.Rngs(0))
    optimizer = cls(model, tx, wrt=nnx.Param, graph=graph)

    @nnx.jit(donate_argnums=(0, 1))
    def step(m, opt):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y[:, None]) ** 2))(m)
        opt.update(m, grads)

    for _ in range(steps):
        step(model, optimizer)
    return model, optimizer


@pytest.mark.parametrize("name", CASES)
def test_nnx_optimizer_equals_nnx_optimizer_bit_for_bit(name):
    model, opt = _nnx_run(adamjax.flax.Optimizer, _make_tx(name))
    ref_model, ref_opt = _nnx_run(nnx.Optimizer, _make_tx(name))
    assert isinstance(opt, nnx.Optimizer)
    assert int(opt.step[...]) == int(ref_opt.step[...]) == STEPS
    assert opt.step[...].dtype == ref_opt.step[...].dtype
    assert int(model.calls[...]) == STEPS
    assert_trees_equal(nnx.state(model), nnx.state(ref_model))
    assert_trees_equal(nnx.state(opt), nnx.state(ref_opt))


@pytest.mark.parametrize("graph", [True, False])
def test_nnx_optimizer_graph_and_tree_mode(graph):
    model, opt = _nnx_run(adamjax.flax.Optimizer, adamjax.adam(0.01), graph=graph)
    ref_model, ref_opt = _nnx_run(nnx.Optimizer, adamjax.adam(0.01), graph=graph)
    assert_trees_equal(nnx.state(model), nnx.state(ref_model))
    assert_trees_equal(nnx.state(opt), nnx.state(ref_opt))


@pytest.mark.parametrize("name", ["adam", "adamax", "adamw", "adamw_decay_matrices"])
def test_nnx_optimizer_takes_the_native_kernel_exactly_for_the_lowered_chains(name):
    x, y = _data()
    texts = {}
    for cls in (adamjax.flax.Optimizer, nnx.Optimizer):
        model = _NnxMLP(nnx.Rngs(0))
        optimizer = cls(model, _make_tx(name), wrt=nnx.Param)

        def step(m, opt):
            opt.update(m, nnx.grad(lambda m: jnp.mean((m(x) - y[:, None]) ** 2))(m))

        texts[cls] = nnx.jit(step).lower(model, optimizer).as_text()
    uses = NATIVE_TARGET in texts[adamjax.flax.Optimizer]
    assert uses == (native_on_cpu and name in FUSED)
    assert NATIVE_TARGET not in texts[nnx.Optimizer]


def test_nnx_optimizer_returns_the_change_it_made():
    """``update`` returns ``new - old`` per parameter. Flax's returns tx's update ``u``; the
    two differ by the rounding of ``old + u``, at most half a unit in the last place of the
    new value, plus the rounding of the subtraction (exact when new and old are within a
    factor 2 of each other, Sterbenz): within one ulp of max(|new|, |old|)."""
    x, y = _data()
    outs = []
    for cls in (adamjax.flax.Optimizer, nnx.Optimizer):
        model = _NnxMLP(nnx.Rngs(0))
        optimizer = cls(model, adamjax.adam(0.01), wrt=nnx.Param)
        before = nnx.as_pure(nnx.state(model, nnx.Param))
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y[:, None]) ** 2))(model)
        returned = nnx.jit(lambda m, o, g: o.update(m, g))(model, optimizer, grads)
        outs.append((before, nnx.as_pure(nnx.state(model, nnx.Param)), returned))
    (before, after, change), (_, _, flax_updates) = outs
    for old, new, d, u in zip(
        *map(jax.tree.leaves, (before, after, change, flax_updates)), strict=True
    ):
        np.testing.assert_array_equal(d, np.asarray(new) - np.asarray(old))
        bound = np.spacing(np.maximum(np.abs(new), np.abs(old)))
        assert np.all(np.abs(np.asarray(d) - np.asarray(u)) <= bound)
        assert np.any(np.asarray(u) != 0)


def test_nnx_optimizer_passes_extra_args_to_tx_update_like_flax():
    """Extra keyword arguments go to ``tx.update`` (GradientTransformationExtraArgs), as in
    ``nnx.Optimizer``."""

    def update(updates, state, params=None, *, scale):
        return jax.tree.map(lambda g: -scale * g, updates), state

    tx = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    x, y = _data()
    states = []
    for cls in (adamjax.flax.Optimizer, nnx.Optimizer):
        model = _NnxMLP(nnx.Rngs(0))
        optimizer = cls(model, tx, wrt=nnx.Param)
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y[:, None]) ** 2))(model)
        optimizer.update(model, grads, scale=jnp.float32(0.3))
        states.append(nnx.state(model))
    assert_trees_equal(*states)
    with pytest.raises(TypeError, match="scale"):
        adamjax.flax.Optimizer(model, tx, wrt=nnx.Param).update(model, grads)


def test_core_does_not_import_flax():
    import subprocess
    import sys

    code = "import sys, adamjax; print('flax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_single_element_leaf_within_rounding():
    """One-element leaves (e.g. the bias of ``Dense(1)``): there XLA evaluates Adam's
    ``theta - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`` with other roundings
    than the kernel (true divisions, 1 - b1^t folded into the denominator). Both paths
    compute the same ``m`` and ``v`` (same operations: checked bit for bit) and then
    ``lr * d`` from them in at most 11 rounded float32 operations each (two powers, two
    subtractions, a reciprocal or division each for the corrections, the scaling of m and
    v, the root, the epsilon, the quotient, the learning rate), so the two steps differ by
    at most 22 u |lr d| (u = 2^-24) before ``p + step`` rounds each to within half an ulp
    of the new parameter. With gradients that do not depend on the parameters the
    differences add up over the steps: |p_ours - p_flax| <= sum_t (22 u |lr d_t| + ulp(p_t)).
    """
    n_leaves, steps, lr = 64, 20, 0.01
    rng = np.random.default_rng(3)
    params = {f"b{i}": jnp.asarray(rng.normal(size=(1,)), jnp.float32) for i in range(n_leaves)}
    grads = [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        for _ in range(steps)
    ]
    step_ours, step_theirs = _jit_twice(lambda state, g: state.apply_gradients(grads=g))
    ours = adamjax.flax.TrainState.create(apply_fn=None, params=params, tx=adamjax.adam(lr))
    theirs = train_state.TrainState.create(apply_fn=None, params=params, tx=adamjax.adam(lr))
    bound = jax.tree.map(lambda p: np.zeros(p.shape), params)
    for t, g in enumerate(grads, start=1):
        ours, theirs = step_ours(ours, g), step_theirs(theirs, g)
        mu, nu = ours.opt_state[0].mu, ours.opt_state[0].nu
        d = jax.tree.map(
            lambda m, v, t=t: (
                (np.float64(m) / (1 - 0.9**t)) / (np.sqrt(np.float64(v) / (1 - 0.999**t)) + 1e-8)
            ),
            mu,
            nu,
        )
        bound = jax.tree.map(
            lambda b, d, p: b + 22 * 2.0**-24 * lr * np.abs(d) + np.spacing(np.abs(np.asarray(p))),
            bound,
            d,
            theirs.params,
        )
    assert_trees_equal(ours.opt_state, theirs.opt_state)
    for a, b, bd in zip(*map(jax.tree.leaves, (ours.params, theirs.params, bound)), strict=True):
        assert np.all(np.abs(np.float64(a) - np.float64(b)) <= bd), (a, b, bd)


def test_nnx_optimizer_explains_a_too_old_flax(monkeypatch):
    monkeypatch.setattr(flax, "__version__", "0.10.7")
    with pytest.raises(RuntimeError, match=r"flax >= 0\.11.*0\.10\.7"):
        adamjax.flax.Optimizer(_NnxMLP(nnx.Rngs(0)), adamjax.adam(0.01), wrt=nnx.Param)
