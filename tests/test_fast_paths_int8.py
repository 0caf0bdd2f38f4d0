"""The 8-bit-state fast paths under the wrappers and chains users write.

With ``state_dtype="int8"`` both ``update`` and ``adamjax.apply_gradients`` take the native
8-bit kernel under ``implementation="auto"``. Reference: the same composition built with
``implementation="jax"`` (the chain as written, compiled by XLA), bit for bit; the kernel
must be in the compiled program. As in tests/test_fast_paths.py, ``update`` followed by
``apply_updates`` in one jit may differ from the fused apply by one rounding of the update
(XLA may contract the chain's ``p + (-lr * d)`` into one FMA), so apply_gradients of a
wrapper is compared with its own update and apply_updates in separate jits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamjax
from adamjax import native
from adamjax.step import FusedTransformation
from tests.helpers import assert_trees_equal, grads_at, run_updates, zeroing_wrapper

pytestmark = pytest.mark.skipif(
    not native.native_available() or jax.default_backend() != "cpu",
    reason="compares the native CPU kernel with the chain: needs the kernel and a CPU backend",
)

# The 8-bit kernel's custom calls (targets adamjax_native_{adam,adamax}_{apply,update}_q8).
Q8_CALL = re.compile(r'custom_call_target="adamjax_native_\w+_q8"')


def params_tree(seed=0):
    rng = np.random.default_rng(seed)
    sizes = {"w": (300, 17), "b": (64,), "big": (10_001,)}
    return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in sizes.items()}


def uses_q8(fn, *args) -> bool:
    return Q8_CALL.search(jax.jit(fn).lower(*args).compile().as_text()) is not None


def int8_adam(impl, **kw):
    return adamjax.adam(**{"learning_rate": 1e-2, **kw}, state_dtype="int8", implementation=impl)


WRAPPED = {
    "adam": lambda i: int8_adam(i),
    "adam-schedule": lambda i: int8_adam(i, learning_rate=adamjax.inverse_sqrt_schedule(1e-2)),
    "adam-no-bias-correction": lambda i: int8_adam(i, bias_correction=False),
    "adamax": lambda i: adamjax.adamax(1e-2, state_dtype="int8", implementation=i),
    "optax.chain-clip-first": lambda i: optax.chain(optax.clip_by_global_norm(0.5), int8_adam(i)),
    "inject_hyperparams": lambda i: optax.inject_hyperparams(
        adamjax.adam, static_args=("eps_root", "state_dtype")
    )(learning_rate=1e-2, state_dtype="int8", implementation=i),
    "MultiSteps": lambda i: optax.MultiSteps(int8_adam(i), every_k_schedule=2),
    "masked": lambda i: optax.masked(int8_adam(i), {"w": True, "b": False, "big": True}),
    "functools.wraps-zeroing": lambda i: zeroing_wrapper(int8_adam(i)),
}


@pytest.mark.parametrize("name", list(WRAPPED))
def test_update_equals_the_chain_under_wrappers(name):
    params = params_tree()
    got, update, st = run_updates(WRAPPED[name]("auto"), params, "big")
    want = run_updates(WRAPPED[name]("jax"), params, "big")[0]
    assert_trees_equal(got, want, name)  # all steps at once: a leaf's path begins with its step
    assert uses_q8(update, grads_at(params, 0), st, params), name


@pytest.mark.parametrize("name", list(WRAPPED))
def test_apply_gradients_equals_update_plus_apply_updates(name):
    params = params_tree()
    opt = WRAPPED[name]("auto")
    step = jax.jit(lambda g, st, p: adamjax.apply_gradients(opt, g, st, p))
    pure = WRAPPED[name]("jax")
    pure_step = jax.jit(lambda g, st, p: adamjax.apply_gradients(pure, g, st, p))
    update, add = jax.jit(opt.update), jax.jit(adamjax.apply_updates)
    p, st = params, opt.init(params)
    for t in range(3):
        g = grads_at(params, t)
        u, want_st = update(g, st, p)
        new_p, new_st = step(g, st, p)
        if isinstance(opt, FusedTransformation):  # the kernel's apply form: the chain's
            assert_trees_equal((new_p, new_st), pure_step(g, st, p), f"{name}, step {t}")
        else:  # a wrapper: its own update + apply_updates
            assert_trees_equal((new_p, new_st), (add(p, u), want_st), f"{name}, step {t}")
        p, st = new_p, new_st
    assert uses_q8(step, grads_at(params, 0), st, p), name


def test_auto_runs_the_kernel_in_update_and_apply_gradients():
    """Unlike float32 state (update: the chain), 8-bit state takes the kernel in both."""
    params = params_tree()
    opt = int8_adam("auto")
    st = opt.init(params)
    g = grads_at(params, 0)
    assert uses_q8(opt.update, g, st, params)
    assert uses_q8(lambda *a: adamjax.apply_gradients(opt, *a), g, st, params)
    jax_opt = int8_adam("jax")
    assert not uses_q8(jax_opt.update, g, st, params)


def test_one_int8_moment_only_runs_the_chain():
    """mu in 8 bits and nu in float32: no kernel for that mix, the chain as written."""
    params = params_tree()
    opt = adamjax.adam(1e-2, mu_dtype="int8", nu_dtype=jnp.float32)
    st = opt.init(params)
    g = grads_at(params, 0)
    assert not uses_q8(lambda *a: adamjax.apply_gradients(opt, *a), g, st, params)
    parts = [
        adamjax.scale_by_moments(mu_dtype="int8", nu_dtype=jnp.float32),
        adamjax.bias_correct(),
        adamjax.precondition(1e-8),
        adamjax.scale_by_lr(1e-2),
    ]
    with pytest.raises(ValueError, match="8-bit storage of one moment only"):
        adamjax.chain(*parts, implementation="native")


def test_adamw_with_int8_moments_runs_the_chain():
    """The 8-bit kernel has no weight-decay term: AdamW with 8-bit moments is the chain as
    written in both calls (and "native" says why)."""
    params = params_tree()
    opt = adamjax.adamw(1e-2, weight_decay=0.1, state_dtype="int8")
    pure = adamjax.adamw(1e-2, weight_decay=0.1, state_dtype="int8", implementation="jax")
    st = opt.init(params)
    g = grads_at(params, 0)
    step = jax.jit(lambda *a: adamjax.apply_gradients(opt, *a))
    assert not uses_q8(step, g, st, params)
    assert not uses_q8(opt.update, g, st, params)

    @jax.jit
    def pure_step(g, st, p):
        u, st = pure.update(g, st, p)
        return optax.apply_updates(p, u), st

    a, b = (params, st), (params, st)
    for t in range(3):
        a, b = step(grads_at(params, t), a[1], a[0]), pure_step(grads_at(params, t), b[1], b[0])
        assert_trees_equal(a, b, f"step {t}")
    with pytest.raises(ValueError, match="no weight decay term"):
        adamjax.adamw(1e-2, state_dtype="int8", implementation="native")


def _loss_of_update(impl):
    def loss(lr, g, st, p):
        u, new = int8_adam(impl, learning_rate=lr).update(g, st, p)
        return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(u))

    return loss


def test_grad_and_jvp_through_update_are_the_chains():
    params = params_tree()
    st = run_updates(int8_adam("jax"), params, "big", steps=2)[2]
    g = grads_at(params, 3)
    args = (jnp.float32(1e-2), g, st, params)
    got = jax.jit(jax.grad(_loss_of_update("native"), argnums=(0, 1)))(*args)
    want = jax.jit(jax.grad(_loss_of_update("jax"), argnums=(0, 1)))(*args)
    assert_trees_equal(got, want)
    assert float(got[0]) != 0.0

    def jvp(impl):
        def f(g, t):
            return jax.jvp(
                lambda lr, g: int8_adam(impl, learning_rate=lr).update(g, st, params)[0],
                (jnp.float32(1e-2), g),
                t,
            )

        return jax.jit(f)

    tangents = (jnp.float32(1.0), jax.tree.map(jnp.cos, g))
    assert_trees_equal(jvp("native")(g, tangents), jvp("jax")(g, tangents))


def test_flax_train_state_takes_the_kernel():
    flax_ts = pytest.importorskip("adamjax.flax")
    params = params_tree()

    def make(impl):
        return flax_ts.TrainState.create(apply_fn=None, params=params, tx=int8_adam(impl))

    def step(state, g):
        return state.apply_gradients(grads=g)

    jitted = jax.jit(step)
    s, r = make("auto"), make("jax")
    for t in range(3):
        g = grads_at(params, t)
        s, r = jitted(s, g), jitted(r, g)
        assert_trees_equal((s.params, s.opt_state), (r.params, r.opt_state), f"step {t}")
    assert uses_q8(step, s, grads_at(params, 0))


_CHILD = """
import jax, jax.numpy as jnp, numpy as np, adamjax
p = {"w": jnp.linspace(-1.0, 1.0, 5000, dtype=jnp.float32)}
opt, ref = (adamjax.adam(1e-2, state_dtype="int8", implementation=i) for i in ("auto", "jax"))
step = lambda o: jax.jit(lambda g, s, p: adamjax.apply_gradients(o, g, s, p))
g = {"w": jnp.cos(p["w"])}
text = step(opt).lower(g, opt.init(p), p).compile().as_text()
assert '_q8"' not in text, "the kernel ran where it must fall back"
a, b = step(opt)(g, opt.init(p), p), step(ref)(g, ref.init(p), p)
for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
try:
    o = adamjax.adam(1e-2, state_dtype="int8", implementation="native")
    o.update(g, o.init(p), p)
except ValueError as e:
    print("native raised:", e)
else:
    raise AssertionError("implementation='native' did not raise")
"""


@pytest.mark.parametrize(
    "env",
    [
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        {"JAX_ENABLE_X64": "1"},
    ],
    ids=["several-cpu-devices", "x64"],
)
def test_falls_back_to_the_chain(env):
    """Several CPU devices (a mesh would replicate the call) or 64-bit mode: the chain runs
    under auto (same numbers), and implementation='native' raises a ValueError."""
    root = Path(__file__).resolve().parents[1]
    full = {**os.environ, **env, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD)],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "native raised:" in out.stdout


def test_a_failed_check_runs_the_chain_with_one_warning(monkeypatch):
    """If the one-time check ever finds the kernel differing from the chain (a jaxlib that
    compiles the chain otherwise), auto runs the chain and says so; native raises."""
    from adamjax.lowering import _packing

    monkeypatch.setattr(_packing, "_CHECK", {"done": False, "why": None})
    monkeypatch.setattr(
        _packing, "_compare_quantized_steps", lambda chain: "differs from the chain at step 1"
    )
    params = params_tree()
    opt = int8_adam("auto")
    st, g = opt.init(params), grads_at(params, 0)
    with pytest.warns(RuntimeWarning, match="8-bit-state kernel differs from the chain"):
        assert not uses_q8(opt.update, g, st, params)
    with pytest.raises(RuntimeError, match="8-bit kernel differs from the chain"):
        int8_adam("native").update(g, st, params)
