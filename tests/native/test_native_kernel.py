"""The fused native CPU kernels (adamjax.native) against the composed pure-JAX chain.

Tolerance: bit for bit. The kernel runs the chain's float32 operations in the order in which
XLA's CPU compiler runs them (including the FMA contractions that LLVM makes inside a
fusion, detected at load time), so every non-NaN element must have the same bits (signed
zeros included) and NaNs must sit at the same places. Should XLA ever round differently
from what the kernel models (``native_info()["bitwise_equal_to_xla"]`` False), the
comparison relaxes to 2 ulp and says so.

The reference is ``adamjax.adam(..., implementation="jax")`` (or ``adamax``): the chain of
primitives as written, jitted. The kernel is reached through the same call with
``implementation="native"``, which raises rather than falls back, so nothing here passes by
comparing the chain with itself. These tests fail when the library is unavailable; with
``ADAMJAX_DISABLE_NATIVE=1`` set on purpose they are skipped (saying so), except the checks
of the switched-off state itself, which run in child processes below.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamjax
from adamjax import native

DISABLED = os.environ.get("ADAMJAX_DISABLE_NATIVE", "").strip() not in ("", "0")
needs_kernel = pytest.mark.skipif(
    DISABLED,
    reason="ADAMJAX_DISABLE_NATIVE is set: these compare the kernel with the chain (the "
    "switched-off path is checked by test_fallback_when_disabled_by_env)",
)
INT32_MAX = 2**31 - 1


def _max_ulps() -> int:
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


def assert_trees(got, want, what="", ulps=0):
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_same(a, b, what, ulps)


def _data(n, state_dtype, seed=0, special=False):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32) * np.float32(0.1)
    m = (rng.standard_normal(n) * 0.01).astype(np.float32)
    v = (rng.random(n) * 1e-3).astype(np.float32)
    if special and n >= 10:
        g[:8] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 3e38, -1e-30]
        p[8:10] = [np.inf, np.nan]
        v[:2] = 0.0
    m = jnp.asarray(m).astype(state_dtype)
    v = jnp.asarray(v).astype(state_dtype)
    return jnp.asarray(p), jnp.asarray(g), m, v


def _state(opt, p, m, v, count):
    """``opt``'s state for the tree ``p`` with moments ``m``, ``v`` after ``count`` steps."""
    st = opt.init(p)
    return (st[0]._replace(count=jnp.asarray(count, jnp.int32), mu=m, nu=v), *st[1:])


def _both(make, **kw):
    """(kernel, chain) transformations, and their jitted update and apply_gradients."""
    out = []
    for impl in ("native", "jax"):
        opt = make(implementation=impl, **kw)
        update = jax.jit(opt.update)
        apply = jax.jit(lambda g, st, p, opt=opt: adamjax.apply_gradients(opt, g, st, p))
        out.append((opt, update, apply))
    return out


def _on_special_data(make, learning_rate, state_dtype, n, count):
    """Jitted (update, apply) of the kernel and of the chain of ``make``, and ``p, g`` and the
    chain's state after ``count`` steps from ``_data(n, state_dtype, special=True)`` (its
    second moment is nonnegative: a valid v or AdaMax's u)."""
    (_, k_update, k_apply), (chain, c_update, c_apply) = _both(
        make, learning_rate=learning_rate, state_dtype=state_dtype
    )
    p, g, m, v = _data(n, state_dtype, special=True)
    return (k_update, k_apply), (c_update, c_apply), p, g, _state(chain, p, m, v, count)


def test_native_library_is_available():
    """Fails (does not skip) without the kernel, unless it was switched off on purpose."""
    info = native.native_info()
    if DISABLED:
        assert not native.native_available()
        assert "ADAMJAX_DISABLE_NATIVE" in info["reason"]
        return
    assert native.native_available(), (
        f"native kernel unavailable: {info['reason']}. Build it (pip install -e . or "
        "python setup.py build_ext --inplace), or set ADAMJAX_DISABLE_NATIVE=1 on purpose."
    )
    assert info["isa"] in ("avx512", "avx2", "baseline")


@needs_kernel
@pytest.mark.parametrize("state_dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("n", [1, 7, 1023, 100_003, 300_007])
def test_adam_matches_chain(n, state_dtype):
    (kern, k_update, k_apply), (chain, c_update, c_apply) = _both(
        adamjax.adam, learning_rate=1e-3, state_dtype=state_dtype
    )
    p, g, m, v = _data(n, state_dtype)
    p, g = {"x": p}, {"x": g}
    st = _state(chain, p, {"x": m}, {"x": v}, 0)
    # For a handful of elements with bfloat16 state, XLA compiles the chain into one small
    # fusion whose FMA contraction can pick the other product of the EMA: 1 ulp allowed
    # there (and only there) in the update and params.
    ulps = 1 if (n < 16 and state_dtype == jnp.bfloat16) else 0
    for step in range(1, 4):
        g = jax.tree.map(lambda x: x * np.float32(0.7) + np.float32(0.01), g)
        wu, wst = c_update(g, st, p)
        gu, gst = k_update(g, st, p)
        wp, _ = c_apply(g, st, p)
        gp, ast = k_apply(g, st, p)
        assert_same(gu["x"], wu["x"], f"updates, step {step}", ulps)
        assert_same(gp["x"], wp["x"], f"params, step {step}", ulps)
        assert_trees(gst, wst, f"state of update, step {step}")
        assert_trees(ast, wst, f"state of apply, step {step}")
        p, st = wp, wst


@needs_kernel
@pytest.mark.parametrize("state_dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_nan_inf_pass_through_like_the_chain(state_dtype):
    (k_update, k_apply), (c_update, c_apply), p, g, st = _on_special_data(
        adamjax.adam, 1e-3, state_dtype, 1030, count=4
    )
    gp, gst = k_apply(g, st, p)
    assert np.isnan(np.asarray(gp)[0]) and np.isnan(np.asarray(gst[0].nu, np.float32)[0])
    assert_trees(k_apply(g, st, p), c_apply(g, st, p), "apply")
    assert_trees(k_update(g, st, p), c_update(g, st, p), "update")


@needs_kernel
@pytest.mark.parametrize("flag", [False, True], ids=["traced-false", "traced-true"])
def test_bias_correction_off_and_traced(flag):
    @jax.jit
    def both(p, g, m, v, count, flag):
        outs = []
        for bc in (False, flag):
            for impl in ("native", "jax"):
                opt = adamjax.adam(1e-3, bias_correction=bc, implementation=impl)
                u, st = opt.update(g, _state(opt, p, m, v, count), p)
                outs.append((u, st[0]))
        return outs

    k0, c0, k1, c1 = both(*_data(1023, jnp.float32), jnp.int32(3), jnp.asarray(flag))
    assert_trees(k0, c0, "bias_correction=False")
    assert_trees(k1, c1, f"traced bias_correction={flag}")


@needs_kernel
def test_traced_hyperparameters_and_count():
    @jax.jit
    def both(p, g, m, v, count, lr, b1, b2, eps):
        outs = []
        for impl in ("native", "jax"):
            opt = adamjax.adam(lr, b1, b2, eps, implementation=impl)
            st = _state(opt, p, m, v, count)
            outs.append((opt.update(g, st, p), adamjax.apply_gradients(opt, g, st, p)))
        return outs

    data = _data(4099, jnp.float32, seed=3)
    for count, lr, b1, b2, eps in [(0, 1e-3, 0.9, 0.999, 1e-8), (56, 3e-2, 0.5, 0.99, 1e-6)]:
        hyper = [jnp.float32(x) for x in (lr, b1, b2, eps)]
        got, want = both(*data, jnp.int32(count), *hyper)
        assert_trees(got, want, f"t={count + 1}")


@needs_kernel
def test_saturated_count():
    (_, k_update, _), (chain, c_update, _) = _both(adamjax.adam, learning_rate=1e-3)
    p, g, m, v = _data(513, jnp.float32)
    st = _state(chain, p, m, v, INT32_MAX)
    want = c_update(g, st, p)
    assert int(want[1][0].count) == INT32_MAX
    assert_trees(k_update(g, st, p), want)


@needs_kernel
@pytest.mark.parametrize("state_dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_adamax_matches_chain(state_dtype):
    (k_update, k_apply), (c_update, c_apply), p, g, st = _on_special_data(
        adamjax.adamax, 2e-3, state_dtype, 100_003, count=0
    )
    for step in range(1, 3):
        assert_trees(k_update(g, st, p), c_update(g, st, p), f"update, step {step}")
        assert_trees(k_apply(g, st, p), c_apply(g, st, p), f"apply, step {step}")
        p, st = c_apply(g, st, p)
        g = g * np.float32(-0.5)


@needs_kernel
def test_mixed_state_dtypes_match_the_kernel_formula():
    """m float32 and v bfloat16 (the kernel takes each dtype on its own; no adamjax chain
    stores them so): against the kernel's formula compiled by XLA."""
    from adamjax.native import _selftest

    p, g, m, _ = _data(2049, jnp.float32)
    v = jnp.abs(_data(2049, jnp.bfloat16, seed=1)[3])
    h = native.Hyper(*(jnp.float32(x) for x in (-1e-2, 0.9, 0.1, 0.999, 1e-3, 1e-8, 3.0, 7.0)))
    for algo in ("adam", "adamax"):

        def kernel(p, g, m, v, algo=algo):
            def fallback(leaves):
                return [_selftest.reference(algo, "apply", h, leaf) for leaf in leaves]

            return native.float_step(algo, "apply", [(p, g, m, v)], h, fallback=fallback)[0]

        got = jax.jit(kernel)(p, g, m, v)
        want = jax.jit(lambda *a, algo=algo: _selftest.reference(algo, "apply", h, a))(p, g, m, v)
        assert [x.dtype for x in got] == [jnp.float32, jnp.float32, jnp.bfloat16]
        for a, b in zip(got, want, strict=True):
            assert_same(a, b, algo)


@needs_kernel
def test_empty_and_tiny_leaves():
    (_, k_update, k_apply), (_, c_update, c_apply) = _both(adamjax.adam, learning_rate=1e-3)
    params = {"e": jnp.zeros((0,)), "one": jnp.ones((1,)), "m": jnp.ones((3, 0, 2))}
    g = jax.tree.map(lambda x: x * 0.5, params)
    st = c_update(g, _both(adamjax.adam, learning_rate=1e-3)[1][0].init(params), params)[1]
    assert_trees(k_update(g, st, params), c_update(g, st, params))
    assert_trees(k_apply(g, st, params), c_apply(g, st, params))


@needs_kernel
def test_vmap_over_configs():
    """A leading config axis: per-config lr, b1, count and params; chunks cross configs.
    Each configuration equals the chain run on it alone."""
    n, k = 100_003, 3
    lrs = jnp.array([1e-3, 3e-2, 1e-1], jnp.float32)
    b1s = jnp.array([0.9, 0.5, 0.0], jnp.float32)
    counts = jnp.array([0, 4, 8], jnp.int32)
    data = [
        jnp.stack([x] * k) * jnp.arange(1, k + 1, dtype=jnp.float32)[:, None]
        for x in _data(n, jnp.float32)
    ]
    data[3] = jnp.abs(data[3])

    def one(p, g, m, v, c, lr, b1, impl):
        opt = adamjax.adam(lr, b1, implementation=impl)
        st = _state(opt, p, m, v, c)
        return opt.update(g, st, p), adamjax.apply_gradients(opt, g, st, p)

    got = jax.jit(jax.vmap(lambda *a: one(*a, "native")))(*data, counts, lrs, b1s)
    alone = jax.jit(lambda *a: one(*a, "jax"))
    for i in range(k):
        want = alone(*(x[i] for x in data), counts[i], lrs[i], b1s[i])
        assert_trees(jax.tree.map(lambda x, i=i: x[i], got), want, f"config {i}")


@needs_kernel
def test_jit_donation_updates_in_place():
    """Donated params and state: the apply form writes them in their own buffers, one
    custom call and no copy."""
    sizes = [300_000, 4096, 17]
    params = {f"p{i}": _data(n, jnp.float32, seed=i)[0] for i, n in enumerate(sizes)}
    opt = adamjax.adam(1e-3, state_dtype=jnp.bfloat16, implementation="native")
    step = jax.jit(lambda p, st, g: adamjax.apply_gradients(opt, g, st, p), donate_argnums=(0, 1))
    st = opt.init(params)
    g = jax.tree.map(lambda x: x * 0.1, params)
    hlo = step.lower(params, st, g).compile().as_text()
    assert hlo.count("custom-call(") == 1 and " copy(" not in hlo
    p = jax.tree.map(jnp.array, params)
    ptrs = [x.unsafe_buffer_pointer() for x in jax.tree.leaves((p, st[0].mu, st[0].nu))]
    new_p, new_st = step(p, st, g)
    assert all(x.is_deleted() for x in jax.tree.leaves(p))
    new = [x.unsafe_buffer_pointer() for x in jax.tree.leaves((new_p, new_st[0].mu, new_st[0].nu))]
    assert new == ptrs


@needs_kernel
def test_many_leaves_in_few_calls_equal_the_chain():
    """More leaves than one native call takes, empty and tiny ones, sizes that cross the
    threads' chunk boundaries, multi-dimensional leaves."""
    from adamjax.native import _calls

    sizes = [5, 64, 0, 4096, 70_001, 1, 131_073] * 6
    assert len(sizes) > _calls.LEAVES_PER_CALL
    params = {f"p{i:02d}": _data(n, jnp.float32, seed=i)[0] for i, n in enumerate(sizes)}
    params["p00"] = params["p00"].reshape(5, 1)
    g = jax.tree.map(lambda x: jnp.cos(3 * x) * 0.1, params)
    (kern, k_update, k_apply), (chain, c_update, c_apply) = _both(adamjax.adam, learning_rate=1e-3)
    st = c_update(g, chain.init(params), params)[1]
    hlo = jax.jit(k_apply).lower(g, st, params).compile().as_text()
    assert hlo.count("custom-call(") == -(-len(sizes) // _calls.LEAVES_PER_CALL)
    # Leaves shorter than 16 elements are compiled by XLA in scalar code whose FMA choice
    # may differ from the kernel's (1 ulp, see test_adam_matches_chain).
    for got, want in ((k_update(g, st, params), c_update(g, st, params)),):
        for k in params:
            ulps = 1 if params[k].size < 16 else 0
            assert_same(got[0][k], want[0][k], k, ulps)
            assert_same(got[1][0].mu[k], want[1][0].mu[k], k)
            assert_same(got[1][0].nu[k], want[1][0].nu[k], k)
    gp, _ = k_apply(g, st, params)
    wp, _ = c_apply(g, st, params)
    for k in params:
        assert_same(gp[k], wp[k], k, 1 if params[k].size < 16 else 0)


def test_unsupported_dtypes_run_the_chain_or_raise():
    params = {"x": jnp.ones(5, jnp.float16)}
    opt = adamjax.adam(1e-3, implementation="native")
    with pytest.raises(TypeError, match=r"float32.*float16\[5\]"):
        opt.update(params, opt.init(params), params)
    auto, ref = adamjax.adam(1e-3), adamjax.adam(1e-3, implementation="jax")
    st = auto.init(params)
    assert "custom" not in jax.jit(auto.update).lower(params, st, params).as_text()
    assert_trees(jax.jit(auto.update)(params, st, params), jax.jit(ref.update)(params, st, params))


def test_native_call_checks_its_input():
    """The kernel itself refuses mismatched buffers with a message (the library never
    passes them; a direct call might)."""
    if DISABLED:
        pytest.skip("ADAMJAX_DISABLE_NATIVE is set: no kernel to call")
    from adamjax.native import _calls

    x, y = jnp.ones(3), jnp.ones(4)
    row = native.Hyper(*(jnp.float32(0.5),) * 8).row()
    with pytest.raises(Exception, match="m does not have as many elements"):
        jax.jit(lambda: _calls.step("adam", "update", row, [(x, y, x)], fma=False))()
    with pytest.raises(Exception, match="rows of 8"):
        jax.jit(lambda: _calls.step("adam", "update", row[:5], [(x, x, x)], fma=False))()


# ---------------------------------------------------------------------------------------
# The switched-off and missing-library paths, in child processes.


def _run_python(code: str, cwd: Path | None = None, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ADAMJAX_")}
    full_env.update(env)
    if cwd is not None:
        full_env["PYTHONPATH"] = str(cwd)
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


_OFF_CHECK = """
    import warnings, numpy as np, jax, jax.numpy as jnp
    import adamjax
    from adamjax import native
    print("IMPORTED", flush=True)
    import sys; sys.stderr.write("--- after import\\n"); sys.stderr.flush()
    assert not native.native_available()
    p = {"x": jnp.linspace(-1, 1, 1001, dtype=jnp.float32)}
    g = {"x": jnp.cos(p["x"])}
    opt, ref = adamjax.adam(1e-2), adamjax.adam(1e-2, implementation="jax")
    step = jax.jit(lambda o, p, g: adamjax.apply_gradients(o, g, o.init(p), p), static_argnums=0)
    got, want = step(opt, p, g), step(ref, p, g)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    assert "custom" not in jax.jit(opt.update).lower(g, opt.init(p), p).as_text()
    step(adamjax.adam(2e-2), p, g)  # a second step: no second warning
    try:
        adamjax.adam(1e-2, implementation="native").update(g, opt.init(p), p)
    except RuntimeError as e:
        print("RAISED", e)
    print("OFF OK")
"""


def test_fallback_when_disabled_by_env():
    r = _run_python(_OFF_CHECK, ADAMJAX_DISABLE_NATIVE="1")
    assert r.returncode == 0, r.stderr
    assert "OFF OK" in r.stdout and "RAISED" in r.stdout and "ADAMJAX_DISABLE_NATIVE" in r.stdout
    assert "RuntimeWarning" not in r.stderr  # asked for: no warning


def test_missing_library_warns_once_at_the_first_cpu_step_not_at_import(tmp_path):
    """A copy of the package without the compiled library: importing is silent (on a GPU
    machine nothing would ever warn); the first CPU step that would have used the kernel
    warns once, and runs the chain."""
    root = Path(adamjax.__file__).resolve().parent
    shutil.copytree(root, tmp_path / "adamjax", ignore=shutil.ignore_patterns("*.so", "*.pyd"))
    r = _run_python(_OFF_CHECK, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "OFF OK" in r.stdout and "missing" in r.stdout
    before, after = r.stderr.split("--- after import", 1)
    assert "native CPU Adam kernel" not in before
    assert after.count("native CPU Adam kernel is not available") == 1, r.stderr


@needs_kernel
@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_narrower_isa_variants_give_the_same_bits(isa):
    if native.native_info()["isa"] == "baseline":
        pytest.skip("this CPU only has the baseline variant, tested above")
    code = """
        import numpy as np, jax, jax.numpy as jnp
        import adamjax
        from adamjax import native
        assert native.native_available(), native.native_info()
        print(native.native_info()["isa"])
        rng = np.random.default_rng(0)
        n = 300_007
        p, g = ({"x": jnp.asarray(rng.standard_normal(n), jnp.float32)} for _ in range(2))
        for make in (adamjax.adam, adamjax.adamax):
            for sd in (jnp.float32, jnp.bfloat16):
                outs = []
                for impl in ("native", "jax"):
                    opt = make(1e-3, state_dtype=sd, implementation=impl)
                    st = opt.init(p)
                    for _ in range(2):
                        u, st = jax.jit(opt.update)(g, st, p)
                    step = jax.jit(lambda g, s, p, o=opt: adamjax.apply_gradients(o, g, s, p))
                    outs.append((u, step(g, st, p)))
                for x, y in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
                    x, y = np.atleast_1d(x), np.atleast_1d(y)
                    assert np.array_equal(x.view(np.uint8), y.view(np.uint8))
        print("ISA OK")
    """
    r = _run_python(code, cwd=Path(adamjax.__file__).resolve().parents[1], ADAMJAX_NATIVE_ISA=isa)
    assert r.returncode == 0, r.stderr
    assert "ISA OK" in r.stdout and r.stdout.startswith(isa), r.stdout
