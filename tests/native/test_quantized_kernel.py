"""The native 8-bit-state kernel (quantized_ffi.cc) against the pure-JAX int8 chain.

Reference: ``adamjax.adam(lr, state_dtype="int8", implementation="jax")`` (or ``adamax``),
jitted: the chain of primitives with :mod:`adamjax.quantize`'s decode and encode as XLA's
CPU compiler compiles them. The kernel is reached through the same call with
``implementation="native"``, which raises rather than falls back, and every test checks
that the compiled program holds the 8-bit custom call, so nothing passes by comparing the
chain with itself.

Tolerance: bit for bit, for the parameters (or the update), the codes and the scales, over
many steps, each side fed its own state. NaN scales compare as NaN (their sign is not part
of the format).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamjax
from adamjax import native, quantize
from adamjax.quantize import QuantizedArray

pytestmark = pytest.mark.skipif(
    not native.native_available() or jax.default_backend() != "cpu",
    reason="compares the native CPU kernel with the chain: needs the kernel and a CPU backend",
)

Q8 = "_q8"  # suffix of the 8-bit kernel's custom-call targets


def assert_bits(got, want, what=""):
    """Trees equal bit for bit (float NaNs: same places)."""
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape)
        if a.dtype.kind == "f":
            nan = np.isnan(b)
            np.testing.assert_array_equal(np.isnan(a), nan, err_msg=f"{what}: NaN places")
            a, b = a[~nan].view(np.uint32), b[~nan].view(np.uint32)
        bad = int(np.sum(a != b))
        assert bad == 0, f"{what}: {bad} of {a.size} elements differ"


def hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def grads_like(params, rng, t, subnormal_block=True):
    """Gradients over many decades, with the blocks the format must get right: a zero block,
    a block of tiny values (subnormal included), a block of subnormal values only, NaN at
    step 2 and Inf at step 3.

    The subnormal-only block is left out for AdaMax: there ``u = max(b2 u, |g|)`` passes
    the subnormal |g| through unchanged (no arithmetic flushes it), and the chain's block
    maximum is then XLA's reduction under flush-to-zero, whose result for a block whose
    largest value is subnormal depends on its own operand order (0 for a full block of
    them, the subnormal for a 7-element tail block, seen here), not on the values. The
    kernel returns the largest |u| (the subnormal). For Adam the EMAs flush such values to 0
    on both sides, and the block is kept."""

    def one(x):
        n = x.size
        scale = 10.0 ** rng.integers(-7, 2, size=n)
        g = (rng.standard_normal(n) * scale).astype(np.float32)
        if n >= 3 * quantize.BLOCK_SIZE:
            b = quantize.BLOCK_SIZE
            g[b : 2 * b] = 0.0  # a zero block: scale 0, every code the code of 0
            g[2 * b : 2 * b + 64] = np.float32(1e-30) * rng.standard_normal(64).astype(np.float32)
            g[2 * b + 64] = np.float32(1e-41)  # subnormal
            if subnormal_block:  # a block of subnormal values only
                g[3 * b : 4 * b] = np.float32(1e-41)
                g[3 * b] = 0.0
        if t == 2 and n > 10:
            g[3] = np.nan
        if t == 3 and n > 10:
            g[-1] = -np.inf
        return jnp.asarray(g.reshape(x.shape))

    return jax.tree.map(one, params)


def params_tree(seed=0):
    """Leaves of odd sizes (not multiples of 2048), a 2-D leaf, and small float32 leaves."""
    rng = np.random.default_rng(seed)
    sizes = {
        "big": (3 * 2048 + 7,),
        "just_quantized": (4096 + 1,),
        "matrix": (70, 130),
        "exact_blocks": (2 * 2048,),
        "tail_of_100": (2 * 2048 + 100,),  # a last block of 64 + 2 * 16 + 4 elements
        "small": (100,),
        "small_matrix": (30, 7),
    }
    return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in sizes.items()}


def make(algo, impl, **kw):
    return getattr(adamjax, algo)(
        **{"learning_rate": 1e-2, **kw}, state_dtype="int8", implementation=impl
    )


def run(opt, mode, params, steps, seed=1, subnormal_block=True):
    rng = np.random.default_rng(seed)
    if mode == "apply":
        step = jax.jit(lambda g, st, p: adamjax.apply_gradients(opt, g, st, p))
    else:
        step = jax.jit(opt.update)
    st, p, outs = opt.init(params), params, []
    for t in range(steps):
        g = grads_like(params, rng, t, subnormal_block)
        first, st = step(g, st, p)
        outs.append((first, st))
        if mode == "apply":
            p = first
    return outs, step, (g, st, p)


def test_state_is_quantized_where_the_kernel_runs():
    st = make("adam", "native").init(params_tree())
    kinds = {k: isinstance(v, QuantizedArray) for k, v in st[0].mu.items()}
    assert kinds == {
        "big": True,
        "just_quantized": True,
        "matrix": True,
        "exact_blocks": True,
        "tail_of_100": True,
        "small": False,
        "small_matrix": False,
    }


@pytest.mark.parametrize("mode", ["apply", "update"])
@pytest.mark.parametrize("algo", ["adam", "adamax"])
def test_kernel_equals_the_int8_chain_over_many_steps(algo, mode):
    params = params_tree()
    sub = algo == "adam"  # see grads_like
    got, step, args = run(make(algo, "native"), mode, params, steps=8, subnormal_block=sub)
    want, _, _ = run(make(algo, "jax"), mode, params, steps=8, subnormal_block=sub)
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_bits(a, b, f"{algo} {mode}, step {t}")
    text = hlo(step, *args)
    # The quantized leaves in the 8-bit kernel, the small float32 ones in the float kernel.
    assert f'custom_call_target="adamjax_native_{algo}_{mode}{Q8}"' in text
    assert f'custom_call_target="adamjax_native_{algo}_{mode}"' in text


def test_non_finite_blocks_read_back_as_nan_and_the_rest_stays_finite():
    """A NaN gradient poisons its block (NaN scale) and only its block, as the chain does."""
    params = {"w": jnp.ones((3 * 2048,), jnp.float32)}
    opt = make("adam", "native")
    g = jnp.full((3 * 2048,), 0.5, jnp.float32).at[2048 + 5].set(jnp.nan)
    u, st = jax.jit(opt.update)({"w": g}, opt.init(params), params)
    scales = np.asarray(st[0].mu["w"].scales)
    assert np.isnan(scales[1]) and np.isfinite(scales[[0, 2]]).all()
    m = np.asarray(quantize.dequantize(st[0].mu["w"]))
    assert np.isnan(m[2048:4096]).all() and np.isfinite(m[:2048]).all()


def test_small_nonzero_v_never_rounds_to_zero():
    """The v floor: in a block whose absmax is huge, a tiny non-zero v keeps index 1."""
    n = 2 * 2048
    g = np.full(n, 1e-6, np.float32)
    g[0] = 1e3
    params = {"w": jnp.zeros((n,), jnp.float32)}
    opt = make("adam", "native")
    _, st = jax.jit(opt.update)({"w": jnp.asarray(g)}, opt.init(params), params)
    codes = np.asarray(st[0].nu["w"].codes)
    assert codes[0, 1] == 1 and codes[1, 0] != 0


@pytest.mark.parametrize("mode", ["apply", "update"])
def test_vmap_over_learning_rates(mode):
    """One kernel call for a row of configurations, each bit for bit its own chain."""
    params = {"w": jnp.asarray(np.random.default_rng(0).standard_normal(5000), jnp.float32)}
    st = make("adam", "jax").init(params)
    lrs = jnp.asarray([1e-3, 1e-2, 1e-1], jnp.float32)
    g = grads_like(params, np.random.default_rng(3), 0)

    def one(lr, impl):
        opt = adamjax.adam(lr, state_dtype="int8", implementation=impl)
        if mode == "apply":
            return adamjax.apply_gradients(opt, g, st, params)
        return opt.update(g, st, params)

    batched = jax.jit(jax.vmap(lambda lr: one(lr, "native")))
    got = batched(lrs)
    assert 'custom_call_target="adamjax_native_adam_' in hlo(batched, lrs)
    assert f'{mode}{Q8}"' in hlo(batched, lrs)
    for i in range(len(lrs)):
        want = jax.jit(lambda lr: one(lr, "jax"))(lrs[i])
        assert_bits(jax.tree.map(lambda x, i=i: x[i], got), want, f"config {i}")


def test_donated_apply_keeps_codes_and_scales_in_place():
    params = {"w": jnp.ones((3 * 2048,), jnp.float32)}
    opt = make("adam", "native")
    st = opt.init(params)
    step = jax.jit(lambda p, st, g: adamjax.apply_gradients(opt, g, st, p), donate_argnums=(0, 1))
    m = st[0].mu["w"]
    ptrs = [m.codes.unsafe_buffer_pointer(), m.scales.unsafe_buffer_pointer()]
    _, st2 = step(params, st, {"w": jnp.full((3 * 2048,), 0.1, jnp.float32)})
    m2 = st2[0].mu["w"]
    assert [m2.codes.unsafe_buffer_pointer(), m2.scales.unsafe_buffer_pointer()] == ptrs


def test_the_8bit_call_checks_its_operands():
    hyper = native.Hyper(*(np.float32(x) for x in (-1e-3, 0.9, 0.1, 0.999, 1e-3, 1e-8, 1, 1)))
    tables = (quantize.decode_table(True), quantize.decode_table(False))
    n = 5000
    g = jnp.ones((n,), jnp.float32)
    codes = jnp.zeros((2, 2048), jnp.uint8)  # 5000 elements need 3 blocks
    scales = jnp.zeros((2,), jnp.float32)
    with pytest.raises(Exception, match="ceil"):
        jax.block_until_ready(
            native.quantized_step(
                "adam",
                "update",
                [(g, codes, scales, codes, scales)],
                hyper,
                tables,
                fallback=lambda leaves: leaves,
            )
        )
    with pytest.raises(ValueError, match="no kernel"):
        native.quantized_step("sgd", "update", [], hyper, tables, fallback=list)


def test_decode_table_is_what_dequantize_reads():
    for signed in (True, False):
        table = quantize.decode_table(signed)
        codes = jnp.arange(2048, dtype=jnp.int32).reshape(1, 2048) % 256
        q = QuantizedArray(codes.astype(jnp.uint8), jnp.ones((1,), jnp.float32), (2048,), signed)
        got = np.asarray(quantize.dequantize(q))
        np.testing.assert_array_equal(got, table[np.arange(2048) % 256])


def _rounding_ties(count=64):
    """Magnitudes y in [0.5, 1) at which the encoder's ``(y - 0.1) / 0.9 * 64 - 1`` (as XLA
    computes it: ``(y + -0.1) * (1 / 0.9f) * 64 + -1`` in float32) is exactly halfway
    between two integers: there round-half-to-even and any other rounding differ."""
    lo, hi = np.float32(0.5).view(np.uint32), np.float32(1.0).view(np.uint32)
    a = np.arange(lo, hi, dtype=np.uint32).view(np.float32)
    f = (a + np.float32(-0.1)) * (np.float32(1) / np.float32(0.9)) * np.float32(64)
    f = f + np.float32(-1)
    return a[(f - np.floor(f)) == np.float32(0.5)][:count]


@pytest.mark.parametrize("algo", ["adam", "adamax"])
def test_exact_rounding_ties_encode_like_the_chain(algo):
    """m = 0.5 g exactly on the first step (b1 = 0.5, m_0 = 0), and the block's maximum is 1,
    so the encoder sees the ties themselves (random data almost never does)."""
    ties = _rounding_ties()
    assert ties.size > 20  # the ties exist: this test can fail
    n = 2 * 2048
    g = np.resize(np.concatenate([2 * ties, -2 * ties]), n).astype(np.float32)
    g[0] = 2.0  # m = 1: scale 1, y = m exactly
    params = {"w": jnp.zeros((n,), jnp.float32)}

    def first_step(impl):
        opt = getattr(adamjax, algo)(1e-3, b1=0.5, state_dtype="int8", implementation=impl)
        return jax.jit(opt.update)({"w": jnp.asarray(g)}, opt.init(params), params)

    got, want = first_step("native"), first_step("jax")
    assert_bits(got, want)
    assert np.asarray(want[1][0].mu["w"].scales)[0] == 1.0


def _encoder_steps(signed: bool) -> np.ndarray:
    """Every y in (0, 1] at which the chain's encoder (:func:`adamjax.quantize.quantize`,
    jitted, block scale 1) moves to the next code magnitude: for each magnitude index c the
    smallest float32 y with index >= c, by bisection on the float's bits (the index never
    decreases with y). The unsigned code's index 1 is taken by any y > 0 (the v floor)."""
    enc = jax.jit(lambda x: quantize.quantize(x, signed=signed).codes)
    zero = 127 if signed else 0
    targets = np.arange(1, 128) if signed else np.arange(2, 256)
    lo = np.zeros(targets.size, np.int64)  # index(lo) < c
    hi = np.full(targets.size, np.float32(1.0).view(np.uint32), np.int64)  # index(hi) >= c
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        x = np.zeros(2048, np.float32)
        x[0] = 1.0  # scale 1
        x[1 : 1 + mid.size] = mid.astype(np.uint32).view(np.float32)
        mag = np.asarray(enc(jnp.asarray(x)))[0, 1 : 1 + mid.size].astype(np.int64) - zero
        reached = mag >= targets
        hi = np.where(reached, mid, hi)
        lo = np.where(reached, lo, mid)
    return hi.astype(np.uint32).view(np.float32)


def test_every_code_threshold_encodes_like_the_chain():
    """At each step of both encoders, and one float below it, the kernel's codes equal the
    chain's: AdaMax with b1 = 0.5 on its first step has m = 0.5 g and v = |g| exactly, and
    g[0] = 2 makes the scales 1 and 2, so both encoders see y = |g| / 2 itself."""
    steps = np.concatenate([_encoder_steps(True), _encoder_steps(False)])
    assert np.unique(steps).size > 250  # 127 + 254 steps, a few shared
    below = np.nextafter(steps, np.float32(0))
    y = np.concatenate([steps, below]).astype(np.float32)
    n = 2 * 2048
    g = np.resize(np.concatenate([2 * y, -2 * y]), n).astype(np.float32)
    g[0] = 2.0
    params = {"w": jnp.zeros((n,), jnp.float32)}

    def first_step(impl):
        opt = adamjax.adamax(1e-3, b1=0.5, state_dtype="int8", implementation=impl)
        return jax.jit(opt.update)({"w": jnp.asarray(g)}, opt.init(params), params)

    got, want = first_step("native"), first_step("jax")
    assert_bits(got, want)
    assert np.asarray(want[1][0].mu["w"].scales)[0] == 1.0
    assert np.asarray(want[1][0].nu["w"].scales)[0] == 2.0


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512-novbmi"])
def test_narrower_isa_variants_give_the_same_bits(isa):
    """The scalar loops (AVX2 and baseline machines), and the AVX-512 loop that decodes by
    gathers (CPUs without VBMI), against the chain, in a child process with
    ADAMJAX_NATIVE_ISA forcing that variant."""
    if native.native_info()["isa"] == "baseline":
        pytest.skip("this CPU only has the baseline variant, tested above")
    if isa == "avx512-novbmi" and native.native_info()["isa"] != "avx512":
        pytest.skip("this CPU has no AVX-512: the AVX-512 variants cannot run")
    reported = isa.split("-")[0]
    code = f"""
import jax
from adamjax import native
from tests.native import test_quantized_kernel as t
assert native.native_info()["isa"] == {reported!r}, native.native_info()
params = t.params_tree()
for algo in ("adam", "adamax"):
    for mode in ("apply", "update"):
        sub = algo == "adam"
        got = t.run(t.make(algo, "native"), mode, params, 4, subnormal_block=sub)[0]
        want = t.run(t.make(algo, "jax"), mode, params, 4, subnormal_block=sub)[0]
        t.assert_bits(got, want, algo + " " + mode)
print("ISA OK")
"""
    root = Path(adamjax.__file__).resolve().parents[1]
    env = {**os.environ, "ADAMJAX_NATIVE_ISA": isa, "PYTHONPATH": str(root)}
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ISA OK" in r.stdout


def test_update_is_written_over_a_gradient_computed_in_the_step():
    """The update form's result shares the gradient's buffer: with the gradient computed
    inside the jitted step (dead after the update) the kernel writes the update over it,
    reading each element before writing it. Bit for bit against the chain, and the aliasing
    is in the compiled program (operand 3, after the row and the two tables, is g)."""
    params = params_tree()
    g = grads_like(params, np.random.default_rng(3), 0)

    def step(opt):
        return jax.jit(lambda g, st, p: opt.update(jax.tree.map(lambda x: x * 2.0, g), st, p))

    native_opt, chain = make("adam", "native"), make("adam", "jax")
    text = hlo(step(native_opt), g, native_opt.init(params), params)
    assert Q8 in text and "output_to_operand_aliasing={{0}: (3, {})" in text
    st_n, st_c = native_opt.init(params), chain.init(params)
    for _ in range(3):
        u_n, st_n = step(native_opt)(g, st_n, params)
        u_c, st_c = step(chain)(g, st_c, params)
        assert_bits((u_n, st_n), (u_c, st_c))
