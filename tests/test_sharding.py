"""adamjax.sharding and adamjax.checkpoint on a mesh of 8 simulated CPU devices.

JAX fixes its device count when it starts, and the rest of the suite runs on one device, so
every multi-device case below (a ``_case_*`` function) runs in a fresh Python process with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before JAX is imported. When
this process already has enough devices the case runs here instead. A failing case fails
its test with the child's output.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

import adamjax
from adamjax import sharding
from tests import multidevice

N = 8


# --------------------------------------------------------------------------------------
# Running a case on N simulated devices.
# --------------------------------------------------------------------------------------


def on_devices(case: str, devices: int = N, *args: str) -> None:
    """Run ``case(*args)`` from this file with ``devices`` CPU devices; fail on error."""
    multidevice.run_case(__file__, globals(), case, devices, *args)


# --------------------------------------------------------------------------------------
# Fixtures of the cases (plain functions: they run in the child process).
# --------------------------------------------------------------------------------------


def mesh_of(n: int = N, explicit: bool = False):
    kind = jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto
    return jax.make_mesh((n,), ("data",), axis_types=(kind,), devices=jax.devices()[:n])


def make_params(seed: int = 0):
    """An MLP-shaped tree: every leaf has a dimension divisible by 8, except ``out.b``."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s).astype(np.float32)
    return {
        "hidden": {"w": f(48, 32), "b": f(32)},
        "out": {"w": f(32, 10), "b": f(10)},
        "scale": f(3, 16),
    }


def grad_steps(params, steps: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
        for _ in range(steps)
    ]


OPTIMIZERS = {
    "adam": lambda: adamjax.adam(1e-2),
    "adam_no_bias_correction": lambda: adamjax.adam(1e-2, bias_correction=False),
    "adamax": lambda: adamjax.adamax(2e-3),
    "adagrad": lambda: adamjax.adagrad(1e-1),
    "rmsprop": lambda: adamjax.rmsprop(1e-3),
    "sgd_nesterov": lambda: adamjax.sgd(1e-2, momentum=0.9, nesterov=True),
    "adadelta": lambda: adamjax.adadelta(1.0),
    "averaged_adam": lambda: adamjax.temporal_averaging(adamjax.adam(1e-2)),
    "skip_nonfinite_adam": lambda: adamjax.skip_nonfinite(adamjax.adam(1e-2)),
    "clipped_adam_chain": lambda: adamjax.chain(optax.clip_by_global_norm(1.0), adamjax.adam(1e-2)),
}


def run_steps(opt, params, grads, state=None, step=None):
    """``len(grads)`` updates; returns (params, state). ``step`` defaults to jit(update)."""
    state = opt.init(params) if state is None else state
    step = jax.jit(opt.update) if step is None else step
    for g in grads:
        updates, state = step(g, state, params)
        params = adamjax.apply_updates(params, updates)
    return params, state


def assert_trees_close(a, b, rtol=1e-6, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def spec(x):
    return x.sharding.spec if isinstance(x.sharding, NamedSharding) else x.sharding


def param_shardings(mesh):
    """Params sharded over 'data' along different dims (and some replicated)."""
    ns = lambda *s: NamedSharding(mesh, P(*s))
    return {
        "hidden": {"w": ns("data", None), "b": ns("data")},
        "out": {"w": ns(None, None), "b": ns()},
        "scale": ns(None, "data"),
    }


# --------------------------------------------------------------------------------------
# 1. The state follows the parameters' sharding.
# --------------------------------------------------------------------------------------


def _case_init_sharded_follows_params():
    mesh = mesh_of()
    host = make_params()
    shardings = param_shardings(mesh)
    params = jax.device_put(host, shardings)
    grads = grad_steps(host, 2)
    for name, make in OPTIMIZERS.items():
        opt = make()
        state = sharding.init_sharded(opt, params)
        want = sharding.state_shardings(opt, params)
        for leaf, sh in zip(jax.tree.leaves(state), jax.tree.leaves(want), strict=True):
            assert leaf.sharding.is_equivalent_to(sh, leaf.ndim), (name, leaf.shape, spec(leaf))
        # Every moment shaped like hidden.w is split 8 ways: each device holds 1/8 of it.
        for leaf in jax.tree.leaves(state):
            if leaf.shape == (48, 32):
                assert spec(leaf) == P("data", None), (name, spec(leaf))
                assert leaf.addressable_shards[0].data.shape == (6, 32), name
        # The jitted update keeps the layout and computes what one device computes.
        sharded_grads = [jax.device_put(g, shardings) for g in grads]
        p_sh, s_sh = run_steps(opt, params, sharded_grads, state=state)
        p_1, s_1 = run_steps(opt, host, grads)
        for leaf, sh in zip(jax.tree.leaves(s_sh), jax.tree.leaves(want), strict=True):
            assert leaf.sharding.is_equivalent_to(sh, leaf.ndim), (name, "after update")
        assert_trees_close(p_sh, p_1)
        assert_trees_close(s_sh, s_1)


def test_init_sharded_follows_params_and_update_keeps_it():
    on_devices("_case_init_sharded_follows_params")


def _case_plain_init_follows_params():
    """``opt.init(sharded_params)``, no jit: holds when ``init`` allocates with zeros_like."""
    mesh = mesh_of()
    params = jax.device_put(make_params(), param_shardings(mesh))
    failures = []
    for name, make in OPTIMIZERS.items():
        opt = make()
        state = opt.init(params)
        want = sharding.state_shardings(opt, params)
        for leaf, sh in zip(jax.tree.leaves(state), jax.tree.leaves(want), strict=True):
            if leaf.ndim and not leaf.sharding.is_equivalent_to(sh, leaf.ndim):
                failures.append(f"{name}: {leaf.shape} on {leaf.sharding}")
    assert not failures, "state not laid out like the params:\n" + "\n".join(failures)


def test_plain_init_follows_params():
    on_devices("_case_plain_init_follows_params")


def _case_zeros_like_sharded():
    mesh = mesh_of()
    x = jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, P("data")))
    z = sharding.zeros_like_sharded(x, jnp.bfloat16)
    assert z.dtype == jnp.bfloat16 and spec(z) == P("data")
    assert float(jnp.abs(z.astype(jnp.float32)).sum()) == 0.0
    # On an Explicit mesh the sharding is part of the type, so it holds under jit too.
    emesh = mesh_of(explicit=True)
    xe = jax.device_put(jnp.ones((16, 4)), NamedSharding(emesh, P("data")))
    with jax.set_mesh(emesh):
        ze = jax.jit(sharding.zeros_like_sharded)(xe)
    assert ze.sharding.spec[0] == "data"


def test_zeros_like_sharded_keeps_sharding():
    on_devices("_case_zeros_like_sharded")


# --------------------------------------------------------------------------------------
# 2. ZeRO-1.
# --------------------------------------------------------------------------------------


def _state_bytes(tree, device=None):
    per = sharding.bytes_per_device(tree)
    return per if device is None else per[device]


def _case_zero1_memory_and_equality():
    mesh = mesh_of()
    rep = NamedSharding(mesh, P())
    host = {
        "w1": make_params()["hidden"]["w"],
        "w2": make_params()["scale"],
        "b": np.ones(64, np.float32),
    }
    params = jax.device_put(host, rep)
    grads = grad_steps(host, 4)
    for name in ("adam", "adamax", "sgd_nesterov", "clipped_adam_chain"):
        base = OPTIMIZERS[name]()
        zopt = sharding.zero1(base, mesh, "data")
        state = zopt.init(params)
        moments = [x for x in jax.tree.leaves(state) if x.ndim > 0]
        scalars = [x for x in jax.tree.leaves(state) if x.ndim == 0]
        total = sharding.total_bytes(moments)
        per_device = sharding.bytes_per_device(moments)
        assert len(per_device) == N
        assert set(per_device.values()) == {total // N}, (name, per_device, total)
        assert total % N == 0 and total > 0
        # The whole state: 1/8 of the moments plus the replicated scalars (the step count).
        whole = sharding.bytes_per_device(state)
        assert set(whole.values()) == {total // N + sharding.total_bytes(scalars)}
        # Same trajectory as the unsharded optimizer; the state stays split, params replicated.
        step = jax.jit(zopt.update)
        p_z, s_z = run_steps(zopt, params, [jax.device_put(g, rep) for g in grads], state, step)
        p_1, s_1 = run_steps(base, host, grads)
        assert_trees_close(p_z, p_1)
        assert_trees_close(s_z, s_1)
        assert set(
            sharding.bytes_per_device([x for x in jax.tree.leaves(s_z) if x.ndim]).values()
        ) == {total // N}
        for leaf in jax.tree.leaves(p_z):
            assert leaf.sharding.is_fully_replicated, name
    print(f"ZeRO-1 adam: {total} moment bytes in all, {total // N} per device")


def test_zero1_state_is_one_eighth_per_device_and_updates_match():
    on_devices("_case_zero1_memory_and_equality")


def _case_zero1_communication():
    """Replicated grads in, replicated updates out: one all-gather per leaf, no all-reduce."""
    mesh = mesh_of()
    rep = NamedSharding(mesh, P())
    params = jax.device_put(
        {"w": np.ones((64, 32), np.float32), "v": np.ones((16,), np.float32)}, rep
    )
    zopt = sharding.zero1(adamjax.adam(1e-3), mesh)
    state = zopt.init(params)
    hlo = jax.jit(zopt.update).lower(params, state, params).compile().as_text()
    count = lambda op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo))
    assert count("all-gather") >= 1, hlo
    assert count("all-reduce") == 0, hlo
    # Without ZeRO-1 (state replicated) the same update needs no communication at all.
    plain = adamjax.adam(1e-3)
    hlo_plain = jax.jit(plain.update).lower(params, jax.device_put(plain.init(params), rep), params)
    text = hlo_plain.compile().as_text()
    assert not re.search(r"\ball-(gather|reduce)(?:-start)?\(", text)


def test_zero1_update_only_all_gathers_updates():
    on_devices("_case_zero1_communication")


def _case_zero1_explicit_mesh():
    mesh = mesh_of(explicit=True)
    rep = NamedSharding(mesh, P())
    host = {"w": make_params()["hidden"]["w"], "b": make_params()["out"]["b"]}
    params = jax.device_put(host, rep)
    grads = grad_steps(host, 3)
    zopt = sharding.zero1(adamjax.adam(1e-2), mesh)
    with jax.set_mesh(mesh):
        state = zopt.init(params)
        p_z, s_z = run_steps(zopt, params, [jax.device_put(g, rep) for g in grads], state)
    p_1, s_1 = run_steps(adamjax.adam(1e-2), host, grads)
    assert_trees_close(p_z, p_1)
    assert_trees_close(s_z, s_1)
    mu_w = [x for x in jax.tree.leaves(s_z) if x.shape == (48, 32)]
    assert mu_w and all(x.addressable_shards[0].data.shape == (6, 32) for x in mu_w)
    # out.b has 10 entries: not divisible by 8, so it stays replicated.
    mu_b = [x for x in jax.tree.leaves(s_z) if x.shape == (10,)]
    assert mu_b and all(x.sharding.is_fully_replicated for x in mu_b)


def test_zero1_on_explicit_mesh():
    on_devices("_case_zero1_explicit_mesh")


ABSTRACT = AbstractMesh((8, 2), ("data", "model"))


def test_zero1_spec_picks_largest_divisible_dim():
    assert sharding.zero1_spec((48, 32), ABSTRACT) == P("data", None)
    assert sharding.zero1_spec((10, 64), ABSTRACT) == P(None, "data")
    assert sharding.zero1_spec((10,), ABSTRACT) == P(None)  # stays replicated
    assert sharding.zero1_spec((), ABSTRACT) == P()
    # Combined with a model-parallel layout: 'data' goes where the local size allows.
    assert sharding.zero1_spec((16, 64), ABSTRACT, base=P(None, "model")) == P(
        None, ("model", "data")
    )
    assert sharding.zero1_spec((16, 24), ABSTRACT, base=P(None, "model")) == P("data", "model")
    assert sharding.zero1_spec((16,), ABSTRACT, base=P("data")) == P("data")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 97), min_size=0, max_size=4))
def test_zero1_spec_is_valid_for_any_shape(shape):
    s = sharding.zero1_spec(tuple(shape), ABSTRACT)
    dims = [d for d, e in enumerate(s) if e is not None]
    divisible = [d for d, n in enumerate(shape) if n % 8 == 0]
    if not divisible:
        assert dims == []
    else:
        assert len(dims) == 1 and shape[dims[0]] % 8 == 0
        assert shape[dims[0]] == max(shape[d] for d in divisible)


def test_zero1_rejects_unknown_axis():
    mesh = jax.make_mesh((1,), ("batch",))
    with pytest.raises(ValueError, match="no axis 'data'"):
        sharding.zero1(adamjax.adam(1e-3), mesh, "data")


def test_state_shardings_on_one_device():
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    opt = adamjax.adam(1e-3)
    state = sharding.init_sharded(opt, params)
    assert_trees_close(state, opt.init(params))
    dev = jax.devices()[0]
    assert all(leaf.devices() == {dev} for leaf in jax.tree.leaves(state))


# --------------------------------------------------------------------------------------
# 5. Checkpoints of sharded state restore onto another device count (8 -> 4 -> 1).
# --------------------------------------------------------------------------------------


def _ckpt_setup(n: int):
    from adamjax import checkpoint  # noqa: F401  (import checked in the child)

    mesh = mesh_of(n)
    rep = NamedSharding(mesh, P())
    host = make_params()
    params = jax.device_put(host, rep)
    zopt = sharding.zero1(OPTIMIZERS["clipped_adam_chain"](), mesh)
    return mesh, host, params, zopt


def _case_ckpt(n: str, directory: str, stage: str):
    from adamjax import checkpoint

    n = int(n)
    directory = Path(directory)
    mesh, host, params, zopt = _ckpt_setup(n)
    grads = grad_steps(host, 6, seed=7)
    like = {"params": params, "opt": zopt.init(params)}
    step = jax.jit(zopt.update)
    if stage == "first":  # 8 devices: 2 steps, save
        p, s = run_steps(zopt, params, grads[:2], like["opt"], step)
        checkpoint.save(directory / "a", {"params": p, "opt": s})
        return
    src, dst, done = {"second": ("a", "b", 2), "third": ("b", None, 4)}[stage]
    restored = checkpoint.restore(directory / src, like)
    assert jax.tree.structure(restored) == jax.tree.structure(like)
    for leaf, ref in zip(jax.tree.leaves(restored), jax.tree.leaves(like), strict=True):
        assert leaf.sharding.is_equivalent_to(ref.sharding, leaf.ndim)
        assert len(leaf.sharding.device_set) == n
    big = [x for x in jax.tree.leaves(restored["opt"]) if x.shape == (48, 32)]
    assert big and all(x.addressable_shards[0].data.shape == (48 // n, 32) for x in big)
    # The restored run equals an uninterrupted single-process run of the same steps.
    p_ref, s_ref = run_steps(OPTIMIZERS["clipped_adam_chain"](), host, grads[:done])
    assert_trees_close(restored["params"], p_ref)
    assert_trees_close(restored["opt"], s_ref)
    p, s = run_steps(zopt, restored["params"], grads[done : done + 2], restored["opt"], step)
    if dst is not None:
        checkpoint.save(directory / dst, {"params": p, "opt": s})
    else:
        p_ref, s_ref = run_steps(OPTIMIZERS["clipped_adam_chain"](), host, grads[: done + 2])
        assert_trees_close(p, p_ref, rtol=1e-5, atol=1e-6)


def test_checkpoint_restores_onto_8_then_4_then_1_devices(tmp_path):
    on_devices("_case_ckpt", 8, "8", str(tmp_path), "first")
    on_devices("_case_ckpt", 4, "4", str(tmp_path), "second")
    on_devices("_case_ckpt", 1, "1", str(tmp_path), "third")


def test_checkpoint_roundtrip_keeps_namedtuples(tmp_path):
    from adamjax import checkpoint

    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    opt = adamjax.temporal_averaging(adamjax.adam(1e-3))
    state = opt.update(params, opt.init(params), params)[1]
    checkpoint.save(tmp_path / "c", state)
    restored = checkpoint.restore(tmp_path / "c", opt.init(params))
    assert type(restored) is type(state)
    assert_trees_close(restored, state, rtol=0, atol=0)
