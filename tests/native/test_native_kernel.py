"""The fused native CPU kernels (adamjax.native) against the composed pure-JAX chain.

Tolerance: bit for bit. The kernel runs the chain's float32 operations in the order in which
XLA's CPU compiler runs them (including the FMA contractions that LLVM makes inside a
fusion, detected at load time), so every non-NaN element must have the same bits (signed
zeros included) and NaNs must sit at the same places. Should XLA ever round differently
from what the kernel models (``native_info()["bitwise_equal_to_xla"]`` False), the
comparison relaxes to 2 ulp and says so.

These tests fail, not skip, when the native library is unavailable, unless
``ADAMJAX_DISABLE_NATIVE=1`` is set explicitly: then they check the pure-JAX fallback
against the same chain instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamjax
from adamjax import native

DISABLED = os.environ.get(native.DISABLE_ENV, "").strip() not in ("", "0")
# native=True raises when the kernel is unavailable, so nothing passes by silent fallback.
USE = None if DISABLED else True
INT32_MAX = 2**31 - 1


def _max_ulps() -> int:
    if DISABLED:
        return 0
    return 0 if native.native_info()["bitwise_equal_to_xla"] else 2


def assert_same(got, want, what="", ulps=0):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype)
    g32, w32 = got.astype(np.float32), want.astype(np.float32)
    nan = np.isnan(w32)
    np.testing.assert_array_equal(np.isnan(g32), nan, err_msg=f"{what}: NaN positions")
    gi = g32[~nan].view(np.int32).astype(np.int64)
    wi = w32[~nan].view(np.int32).astype(np.int64)
    # Distance in ulps on the float32 (or widened bfloat16) bit patterns.
    gi = np.where(gi < 0, np.int64(-(2**31)) - gi, gi)
    wi = np.where(wi < 0, np.int64(-(2**31)) - wi, wi)
    diff = np.abs(gi - wi)
    if got.dtype == jnp.bfloat16:
        diff = diff >> 16
    bad = int(np.sum(diff > max(ulps, _max_ulps())))
    assert bad == 0, f"{what}: {bad} of {diff.size} elements differ (max {diff.max()} ulp)"


def _data(n, state_dtype, seed=0, special=False):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32) * np.float32(0.1)
    m = (rng.standard_normal(n) * 0.01).astype(np.float32)
    v = (rng.random(n) * 1e-3).astype(np.float32)
    if special and n >= 8:
        g[:8] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 3e38, -1e-30]
        p[8:10] = [np.inf, np.nan] if n >= 10 else p[8:10]
        v[:2] = 0.0
    m = jnp.asarray(m).astype(state_dtype)
    v = jnp.asarray(v).astype(state_dtype)
    return jnp.asarray(p), jnp.asarray(g), m, v


def _chain_state(opt, p, m, v, count):
    st = opt.init(p)
    return (st[0]._replace(count=jnp.asarray(count, jnp.int32), mu=m, nu=v), *st[1:])


@jax.jit
def _noop(x):
    return x


def _chain_apply(opt):
    @jax.jit
    def step(p, st, g):
        u, st = opt.update(g, st, p)
        return adamjax.apply_updates(p, u), u, st

    return step


def test_native_library_is_available():
    """Fails (does not skip) without the kernel, unless the fallback was asked for."""
    info = native.native_info()
    if DISABLED:
        assert not native.native_available()
        assert native.DISABLE_ENV in info["reason"]
    else:
        assert native.native_available(), (
            f"native kernel unavailable: {info['reason']}. Build it (pip install -e .) or "
            f"set {native.DISABLE_ENV}=1 to test the pure-JAX fallback explicitly."
        )
        assert info["isa"] in ("avx512", "avx2", "baseline")


@pytest.mark.parametrize("state_dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("n", [1, 7, 1023, 100_003, 300_007])
def test_adam_matches_chain(n, state_dtype):
    opt = adamjax.adam(1e-3, state_dtype=state_dtype)
    chain = _chain_apply(opt)
    apply = jax.jit(lambda p, g, m, v, c: native.adam_apply(p, g, m, v, c, 1e-3, native=USE))
    update = jax.jit(lambda g, m, v, c: native.adam_update(g, m, v, c, 1e-3, native=USE))
    p, g, m, v = _data(n, state_dtype)
    st = _chain_state(opt, p, m, v, 0)
    # For a handful of elements with bfloat16 state, XLA compiles the chain into one small
    # fusion whose FMA contraction can pick the other product of the EMA: 1 ulp allowed
    # there (and only there) in the update and params.
    ulps = 1 if (n < 16 and state_dtype == jnp.bfloat16) else 0
    for step in range(1, 4):
        g = g * np.float32(0.7) + np.float32(0.01)
        wp, wu, st = chain(p, st, g)
        gu, um, uv = update(g, m, v, step)
        p, m, v = apply(p, g, m, v, step)
        assert_same(gu, wu, f"updates, step {step}", ulps)
        assert_same(p, wp, f"params, step {step}", ulps)
        assert_same(m, st[0].mu, f"m, step {step}")
        assert_same(v, st[0].nu, f"v, step {step}")
        assert_same(um, m, "m of update form")
        assert_same(uv, v, "v of update form")


@pytest.mark.parametrize("state_dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_nan_inf_pass_through_like_the_chain(state_dtype):
    opt = adamjax.adam(1e-3, state_dtype=state_dtype)
    p, g, m, v = _data(1030, state_dtype, special=True)
    wp, wu, st = _chain_apply(opt)(p, _chain_state(opt, p, m, v, 4), g)
    gp, gm, gv = native.adam_apply(p, g, m, v, 5, 1e-3, native=USE)
    assert np.isnan(np.asarray(gp)[0]) and np.isnan(np.asarray(gv, np.float32)[0])
    assert_same(gp, wp, "params")
    assert_same(gm, st[0].mu, "m")
    assert_same(gv, st[0].nu, "v")


@pytest.mark.parametrize("bias_correction", [False, "traced_true", "traced_false"])
def test_bias_correction_off_and_traced(bias_correction):
    flag = {False: False, "traced_true": True, "traced_false": False}[bias_correction]
    traced = bias_correction != False  # noqa: E712

    @jax.jit
    def both(p, g, m, v, count, flag):
        bc = flag if traced else False
        opt = adamjax.adam(1e-3, bias_correction=bc)
        u, st = opt.update(g, _chain_state(opt, p, m, v, count - 1), p)
        want = (adamjax.apply_updates(p, u), st[0].mu, st[0].nu)
        got = native.adam_apply(p, g, m, v, count, 1e-3, bias_correction=bc, native=USE)
        return got, want

    got, want = both(*_data(1023, jnp.float32), jnp.int32(3), jnp.asarray(flag))
    for a, b, what in zip(got, want, ("params", "m", "v"), strict=True):
        assert_same(a, b, what)


def test_traced_hyperparameters_and_count():
    @jax.jit
    def both(p, g, m, v, count, lr, b1, b2, eps):
        opt = adamjax.adam(lr, b1, b2, eps)
        u, st = opt.update(g, _chain_state(opt, p, m, v, count - 1), p)
        want = (adamjax.apply_updates(p, u), st[0].mu, st[0].nu)
        got = native.adam_apply(p, g, m, v, count, lr, b1, b2, eps, native=USE)
        return got, want

    data = _data(4099, jnp.float32, seed=3)
    for count, lr, b1, b2, eps in [(1, 1e-3, 0.9, 0.999, 1e-8), (57, 3e-2, 0.5, 0.99, 1e-6)]:
        hyper = [jnp.float32(x) for x in (lr, b1, b2, eps)]
        got, want = both(*data, jnp.int32(count), *hyper)
        for a, b, what in zip(got, want, ("params", "m", "v"), strict=True):
            assert_same(a, b, f"{what} at t={count}")


def test_saturated_count():
    opt = adamjax.adam(1e-3)
    p, g, m, v = _data(513, jnp.float32)
    wp, _, st = _chain_apply(opt)(p, _chain_state(opt, p, m, v, INT32_MAX), g)
    assert int(st[0].count) == INT32_MAX
    got = native.adam_apply(p, g, m, v, st[0].count, 1e-3, native=USE)
    assert_same(got[0], wp, "params")


@pytest.mark.parametrize("state_dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_adamax_matches_chain(state_dtype):
    opt = adamjax.adamax(2e-3, state_dtype=state_dtype)
    chain = _chain_apply(opt)
    p, g, m, u = _data(100_003, state_dtype, special=True)
    u = jnp.abs(u)
    st = _chain_state(opt, p, m, u, 0)
    for step in range(1, 3):
        wp, wu, st = chain(p, st, g)
        gu, _, _ = native.adamax_update(g, m, u, step, 2e-3, native=USE)
        p, m, u = native.adamax_apply(p, g, m, u, step, 2e-3, native=USE)
        assert_same(gu, wu, "updates")
        assert_same(p, wp, "params")
        assert_same(m, st[0].mu, "m")
        assert_same(u, st[0].nu, "u")
        g = g * np.float32(-0.5)


def test_mixed_state_dtypes_match_pure_formula():
    p, g, m, _ = _data(2049, jnp.float32)
    v = jnp.abs(_data(2049, jnp.bfloat16, seed=1)[3])
    for fn in (native.adam_apply, native.adamax_apply):
        c = jnp.int32(7)  # a traced count, as in training (see test_saturated_count)
        got = jax.jit(lambda *a, fn=fn: fn(*a, 1e-2, native=USE))(p, g, m, v, c)
        want = jax.jit(lambda *a, fn=fn: fn(*a, 1e-2, native=False))(p, g, m, v, c)
        assert [x.dtype for x in got] == [jnp.float32, jnp.float32, jnp.bfloat16]
        for a, b in zip(got, want, strict=True):
            assert_same(a, b, fn.__name__)


def test_empty_buffers():
    z = jnp.zeros((0,), jnp.float32)
    zb = jnp.zeros((0,), jnp.bfloat16)
    out = jax.jit(lambda p, g, m, v: native.adam_apply(p, g, m, v, 1, 1e-3, native=USE))(
        z, z, z, zb
    )
    assert [(x.shape, x.dtype) for x in out] == [((0,), z.dtype), ((0,), z.dtype), ((0,), zb.dtype)]
    out = native.adamax_update(z, z, z, 1, 1e-3, native=USE)
    assert all(x.shape == (0,) for x in out)


def test_vmap_over_configs():
    """A leading config axis: per-config lr, b1, count and params; chunks cross configs."""
    n, k = 100_003, 3
    lrs = jnp.array([1e-3, 3e-2, 1e-1], jnp.float32)
    b1s = jnp.array([0.9, 0.5, 0.0], jnp.float32)
    counts = jnp.array([1, 5, 9], jnp.int32)
    data = [
        jnp.stack([x] * k) * jnp.arange(1, k + 1, dtype=jnp.float32)[:, None]
        for x in _data(n, jnp.float32)
    ]
    data[3] = jnp.abs(data[3])

    def one(p, g, m, v, c, lr, b1):
        opt = adamjax.adam(lr, b1)
        u, st = opt.update(g, _chain_state(opt, p, m, v, c - 1), p)
        want = (adamjax.apply_updates(p, u), st[0].mu, st[0].nu)
        got = native.adam_apply(p, g, m, v, c, lr, b1, native=USE)
        return got, want

    got, want = jax.jit(jax.vmap(one))(*data, counts, lrs, b1s)
    assert got[0].shape == (k, n)
    for a, b, what in zip(got, want, ("params", "m", "v"), strict=True):
        assert_same(a, b, what)
    # Shared params, batched learning rate only: params are broadcast per config.
    p, g, m, v = (x[0] for x in data)
    got = jax.vmap(lambda lr: native.adam_apply(p, g, m, v, 2, lr, native=USE))(lrs)
    for i in range(k):
        single = native.adam_apply(p, g, m, v, 2, lrs[i], native=USE)
        for a, b in zip(got, single, strict=True):
            assert_same(a[i], b, f"config {i}")


def test_jit_donation_updates_in_place():
    n = 200_000
    p, g, m, v = _data(n, jnp.bfloat16)
    p, m = jnp.array(p), jnp.array(m)
    v = jnp.array(v)
    ptrs = [x.unsafe_buffer_pointer() for x in (p, m, v)]
    step = jax.jit(
        lambda p, g, m, v, c: native.adam_apply(p, g, m, v, c, 1e-3, native=USE),
        donate_argnums=(0, 2, 3),
    )
    one = jnp.int32(1)
    want = jax.jit(lambda *a: native.adam_apply(*a, 1e-3, native=False))(p, g, m, v, one)
    out = step(p, g, m, v, one)
    assert p.is_deleted() and m.is_deleted() and v.is_deleted()
    assert [x.unsafe_buffer_pointer() for x in out] == ptrs
    for a, b in zip(out, want, strict=True):
        assert_same(a, b)


def test_roofline_step():
    if DISABLED:
        with pytest.raises(RuntimeError):
            native.roofline_step(*(jnp.ones(3),) * 4)
        return
    p, g, m, v = (jnp.asarray(x, jnp.float32) for x in _data(300_001, jnp.float32))
    out = jax.jit(native.roofline_step)(p, g, m, v)
    for a, b in zip(out, (p + g, m + g, v + g), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unsupported_dtypes_fall_back_or_raise():
    p = jnp.ones(5, jnp.float16)
    with pytest.raises(TypeError, match="float32"):
        native.adam_apply(p, p, p, p, 1, 1e-3, native=True)
    out = native.adam_apply(p, p, p, p, 1, 1e-3)  # auto: pure JAX
    assert out[0].dtype == jnp.float16


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ADAMJAX_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


_FALLBACK_CHECK = """
    import warnings, numpy as np, jax, jax.numpy as jnp
    import adamjax
    from adamjax import native
    assert not native.native_available()
    p = jnp.linspace(-1, 1, 101, dtype=jnp.float32); g = jnp.cos(p)
    m = jnp.zeros_like(p); v = jnp.zeros_like(p)
    opt = adamjax.adam(1e-2)
    step = jax.jit(lambda p, s, g: adamjax.apply_updates(p, opt.update(g, s, p)[0]))
    want = step(p, opt.init(p), g)
    got = jax.jit(lambda *a: native.adam_apply(*a))(p, g, m, v, jnp.int32(1), 1e-2)
    assert np.array_equal(np.asarray(got[0]), np.asarray(want))
    try:
        native.adam_apply(p, g, m, v, 1, 1e-2, native=True)
    except RuntimeError as e:
        print("RAISED", e)
    print("FALLBACK OK")
"""


def test_fallback_when_disabled_by_env():
    r = _run_python(_FALLBACK_CHECK, ADAMJAX_DISABLE_NATIVE="1")
    assert r.returncode == 0, r.stderr
    assert "FALLBACK OK" in r.stdout and "RAISED" in r.stdout
    assert "RuntimeWarning" not in r.stderr  # asked for: no warning


def test_fallback_warns_once_when_library_missing():
    r = _run_python(
        "import adamjax.native, adamjax.native as n\n" + textwrap.dedent(_FALLBACK_CHECK),
        ADAMJAX_NATIVE_LIBRARY="/nonexistent/_adam_ffi.so",
    )
    assert r.returncode == 0, r.stderr
    assert "FALLBACK OK" in r.stdout
    assert r.stderr.count("native CPU Adam kernel is not available") == 1, r.stderr


@pytest.mark.skipif(DISABLED, reason="checks the native instruction-set variants")
@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_narrower_isa_variants_give_the_same_bits(isa):
    if native.native_info()["isa"] == "baseline":
        pytest.skip("this CPU only has the baseline variant, tested above")
    code = """
        import numpy as np, jax, jax.numpy as jnp
        from adamjax import native
        assert native.native_available(), native.native_info()
        print(native.native_info()["isa"])
        rng = np.random.default_rng(0)
        n = 300_007
        p, g, m = (jnp.asarray(rng.standard_normal(n), jnp.float32) for _ in range(3))
        v = jnp.asarray(rng.random(n), jnp.bfloat16)
        for fn in (native.adam_apply, native.adamax_apply):
            c = jnp.int32(3)
            a = jax.jit(lambda *x: fn(*x, 1e-3, native=True))(p, g, m, v, c)
            b = jax.jit(lambda *x: fn(*x, 1e-3, native=False))(p, g, m, v, c)
            for x, y in zip(a, b):
                assert np.array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))
        print("ISA OK")
    """
    r = _run_python(code, ADAMJAX_NATIVE_ISA=isa)
    assert r.returncode == 0, r.stderr
    assert "ISA OK" in r.stdout and r.stdout.startswith(isa), r.stdout


# ---------------------------------------------------------------------------------------
# Many leaves in one call (adam_apply_leaves / adamax_apply_leaves).


def _leaves(sizes, dtypes, seed=0):
    out = [
        _data(n, dt, seed=seed + i, special=(i == 1))
        for i, (n, dt) in enumerate(zip(sizes, dtypes, strict=True))
    ]
    # Some leaves multi-dimensional: the kernel sees them end to end.
    out[0] = tuple(x.reshape(-1, 1) if x.size % 1 == 0 else x for x in out[0])
    return [list(x) for x in zip(*out, strict=True)]


# More leaves than one native call takes (_LEAVES_PER_CALL), empty and tiny ones, both
# state dtypes mixed, sizes that cross the threads' chunk boundaries.
_SIZES = [5, 64, 0, 4096, 70_001, 1, 131_073] * 6
_DTYPES = [jnp.float32, jnp.bfloat16, jnp.float32] * 14


@pytest.mark.parametrize("algo", ["adam", "adamax"])
def test_apply_leaves_equals_one_leaf_at_a_time(algo):
    many = getattr(native, f"{algo}_apply_leaves")
    one = getattr(native, f"{algo}_apply")
    assert len(_SIZES) > native._LEAVES_PER_CALL
    p, g, m, v = _leaves(_SIZES, _DTYPES)
    got = jax.jit(lambda p, g, m, v, c: many(p, g, m, v, c, 1e-3, native=USE))(p, g, m, v, 3)
    # Against the single-leaf kernel, which the tests above hold to the chain bit for bit
    # (the chain itself, jitted on a 1-element leaf, may contract its FMAs differently).
    want = jax.jit(
        lambda p, g, m, v, c: [
            one(*leaf, c, 1e-3, native=USE) for leaf in zip(p, g, m, v, strict=True)
        ]
    )(p, g, m, v, 3)
    assert len(got) == len(_SIZES)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        for x, y, what in zip(a, b, ("params", "m", "v"), strict=True):
            assert x.shape == y.shape
            assert_same(x, y, f"leaf {k} {what}")


def test_apply_leaves_is_one_call_per_group_and_in_place():
    p, g, m, v = _leaves([300_000, 4096, 17], [jnp.bfloat16, jnp.float32, jnp.float32])
    step = jax.jit(
        lambda p, g, m, v: native.adam_apply_leaves(p, g, m, v, 1, 1e-3, native=USE),
        donate_argnums=(0, 2, 3),
    )
    if not DISABLED:
        hlo = step.lower(p, g, m, v).compile().as_text()
        assert hlo.count("custom-call(") == 1 and " copy(" not in hlo
    p, m, v = (jax.tree.map(jnp.array, x) for x in (p, m, v))
    ptrs = [[x.unsafe_buffer_pointer() for x in leaf] for leaf in zip(p, m, v, strict=True)]
    out = step(p, g, m, v)
    assert all(x.is_deleted() for x in p + m + v)
    assert [[x.unsafe_buffer_pointer() for x in leaf] for leaf in out] == ptrs


def test_apply_leaves_vmap_over_configs():
    lrs = jnp.array([1e-3, 3e-2, 1e-1], jnp.float32)
    p, g, m, v = _leaves([70_001, 5, 4096], [jnp.float32, jnp.bfloat16, jnp.float32])
    got = jax.jit(jax.vmap(lambda lr: native.adam_apply_leaves(p, g, m, v, 2, lr, native=USE)))(lrs)
    one = jax.jit(lambda lr: native.adam_apply_leaves(p, g, m, v, 2, lr, native=USE))
    for i in range(3):
        for a, b in zip(got, one(lrs[i]), strict=True):
            for x, y in zip(a, b, strict=True):
                assert_same(x[i], y, f"config {i}")


def test_apply_leaves_bad_input():
    assert native.adam_apply_leaves([], [], [], [], 1, 1e-3, native=USE) == []
    x = jnp.ones(3)
    with pytest.raises(ValueError):  # leaves lists of different lengths
        native.adam_apply_leaves([x, x], [x], [x], [x], 1, 1e-3)
    h = jnp.ones(3, jnp.float16)
    with pytest.raises(TypeError, match=r"float32.*float16\[3\]"):
        native.adam_apply_leaves([x, h], [x, h], [x, h], [x, h], 1, 1e-3, native=True)
    out = native.adam_apply_leaves([x, h], [x, h], [x, h], [x, h], 1, 1e-3)  # auto: per leaf
    assert [o[0].dtype for o in out] == [jnp.float32, jnp.float16]
