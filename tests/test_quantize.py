"""8-bit block-wise quantized moments (Dettmers et al., ICLR 2022) against float64 references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamjax
from adamjax import quantize as Q
from tests.helpers import assert_trees_equal


def brute_nearest(x: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference: per block of BLOCK_SIZE, the nearest code value * absmax."""
    code = (Q.signed_code() if signed else Q.unsigned_code()).astype(np.float64)
    n = x.size
    nb = max(1, -(-n // Q.BLOCK_SIZE))
    flat = np.zeros(nb * Q.BLOCK_SIZE)
    flat[:n] = x.astype(np.float64).ravel()
    blocks = flat.reshape(nb, Q.BLOCK_SIZE)
    scale = np.abs(blocks).max(axis=1, keepdims=True)
    normed = blocks / np.where(scale > 0, scale, 1.0)
    dist = np.abs(code[None, None, :] - normed[:, :, None])
    best = code[np.argmin(dist, axis=2)]
    return normed, best, dist.min(axis=2), scale


def test_codes_are_sorted_and_hold_zero_and_one():
    s, u = Q.signed_code(), Q.unsigned_code()
    assert len(s) == 255 and len(u) == 256
    assert np.all(np.diff(s) > 0) and np.all(np.diff(u) > 0)
    assert s[0] == -1 and s[-1] == 1 and 0 in s and u[0] == 0 and u[-1] == 1
    np.testing.assert_array_equal(s[127:], -s[127::-1])  # symmetric around 0
    # Dynamic: every decade down to 1e-6 (signed) / 1e-7 (unsigned) holds code points.
    for code, decades in ((s, 7), (u, 8)):
        pos = code[code > 0]
        for e in range(decades):
            assert np.any((pos > 10.0 ** -(e + 1)) & (pos <= 10.0**-e)), e


@pytest.mark.parametrize("signed", [True, False])
def test_quantize_picks_the_nearest_code_value_per_block(signed):
    rng = np.random.default_rng(0)
    n = 3 * Q.BLOCK_SIZE + 77  # a partial last block
    mags = np.exp(rng.uniform(-30, 0, n))  # many decades, as squared gradients span
    x = mags * (rng.choice([-1.0, 1.0], n) if signed else 1.0)
    x[:5] = 0.0
    x = x.astype(np.float32)
    got = np.asarray(Q.dequantize(Q.quantize(jnp.asarray(x), signed=signed)), np.float64)
    normed, _, best_dist, scale = brute_nearest(x, signed)
    scale = np.repeat(scale.ravel(), Q.BLOCK_SIZE)[:n]
    got_dist = np.abs(got / scale - normed.ravel()[:n])
    # The chosen code value is as near as the nearest one (ties to 1e-6 of the code's
    # resolution), except the documented floor: a positive v never rounds to zero.
    floor = (~np.array(signed)) & (x > 0) & (got / scale == Q.unsigned_code()[1])
    ok = (got_dist <= best_dist.ravel()[:n] + 1e-6) | floor
    assert ok.all(), np.flatnonzero(~ok)[:10]
    assert np.all(got[x == 0] == 0)


@pytest.mark.parametrize("signed", [True, False])
def test_code_values_round_trip_exactly(signed):
    code = Q.signed_code() if signed else Q.unsigned_code()
    x = np.resize(code, Q.BLOCK_SIZE) * np.float32(3.5)  # absmax 3.5 in the one block
    q = Q.quantize(jnp.asarray(x), signed=signed)
    np.testing.assert_array_equal(np.asarray(Q.dequantize(q)), x)


def test_error_bound_against_float64():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(4 * Q.BLOCK_SIZE).astype(np.float32)
    got = np.asarray(Q.dequantize(Q.quantize(jnp.asarray(x), signed=True)), np.float64)
    code = Q.signed_code().astype(np.float64)
    scale = np.repeat(np.abs(x.reshape(-1, Q.BLOCK_SIZE)).max(1), Q.BLOCK_SIZE)
    # Half the largest gap of the code, relative to the block's absmax: the worst case.
    bound = np.max(np.diff(code)) / 2 * scale
    assert np.all(np.abs(got - x) <= bound * (1 + 1e-6))


def test_nonfinite_blocks_read_back_as_nan_and_leave_other_blocks_alone():
    x = np.ones(3 * Q.BLOCK_SIZE, np.float32)
    x[5] = np.nan
    x[Q.BLOCK_SIZE + 7] = np.inf
    got = np.asarray(Q.dequantize(Q.quantize(jnp.asarray(x), signed=True)))
    assert np.isnan(got[: 2 * Q.BLOCK_SIZE]).all()
    np.testing.assert_array_equal(got[2 * Q.BLOCK_SIZE :], 1.0)


def test_empty_and_zero_arrays():
    for shape in [(0,), (3, 0)]:
        q = Q.quantize(jnp.zeros(shape), signed=True)
        assert Q.dequantize(q).shape == shape
    z = Q.dequantize(Q.zeros((5000,), signed=False))
    np.testing.assert_array_equal(np.asarray(z), 0.0)
    np.testing.assert_array_equal(
        np.asarray(Q.dequantize(Q.quantize(jnp.zeros(5000), signed=True))), 0
    )


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w": jax.random.normal(k1, (64, 128)),  # 8192 elements: quantized
        "b": jax.random.normal(k2, (100,)),  # small: kept in float32
        "e": jnp.zeros((0,)),
    }


def test_int8_state_layout_and_bytes():
    params = _params()
    st = adamjax.adam(1e-3, state_dtype="int8").init(params)
    mu, nu = st[0].mu, st[0].nu
    assert isinstance(mu["w"], Q.QuantizedArray) and mu["w"].signed
    assert isinstance(nu["w"], Q.QuantizedArray) and not nu["w"].signed
    assert mu["b"].dtype == jnp.float32 and nu["e"].shape == (0,)
    big = mu["w"].nbytes + nu["w"].nbytes
    assert big / params["w"].size == pytest.approx(2 + 8 / Q.BLOCK_SIZE)


@pytest.mark.parametrize("name", ["adam", "adamax", "rmsprop"])
def test_int8_step_is_the_float32_math_on_the_stored_values(name):
    """Quantization only changes storage: one step from a quantized state equals the
    float32 step from the dequantized state, and the new state is its quantization."""
    make = {"adam": adamjax.adam, "adamax": adamjax.adamax, "rmsprop": adamjax.rmsprop}[name]
    params = _params()
    grads = jax.tree.map(lambda p: jnp.cos(3 * p) + 0.1, params)
    q_opt, f_opt = make(1e-3, state_dtype="int8"), make(1e-3)
    q_state = q_opt.init(params)
    for _ in range(3):  # reach a non-trivial quantized state
        _, q_state = jax.jit(q_opt.update)(grads, q_state, params)
        grads = jax.tree.map(lambda g: -0.7 * g + 0.05, grads)

    def as_float(tree):
        is_q = lambda x: isinstance(x, Q.QuantizedArray)  # noqa: E731
        return jax.tree.map(lambda x: Q.dequantize(x) if is_q(x) else x, tree, is_leaf=is_q)

    f_state = as_float(q_state)
    u_q, new_q = jax.jit(q_opt.update)(grads, q_state, params)
    u_f, new_f = jax.jit(f_opt.update)(grads, f_state, params)
    # The same float32 math. XLA may fuse the dequantization (code * scale) into the EMA
    # and contract it into an FMA, which moves m and v by an ulp or so; |update| <= lr
    # (times a bias-correction factor near 1), so updates agree to ~1e-6 lr.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * 1e-3), u_q, u_f
    )
    np.testing.assert_array_equal(u_q["b"], u_f["b"])  # float32 leaves: identical math
    m_q, m_f = new_q[0], new_f[0]
    pairs = [(m_q.nu["w"], Q.quantize(m_f.nu["w"], signed=False))]
    if m_f.mu is not None:
        pairs.append((m_q.mu["w"], Q.quantize(m_f.mu["w"], signed=True)))
    for got, want in pairs:
        # The new state is the quantization of the float32 moments: an ulp of difference
        # can only move a value across a midpoint, i.e. to the adjacent code, and rarely.
        diff = np.abs(np.asarray(got.codes, np.int32) - np.asarray(want.codes, np.int32))
        assert diff.max() <= 1 and diff.mean() < 1e-3, (diff.max(), diff.mean())
        np.testing.assert_allclose(got.scales, want.scales, rtol=4e-7)  # a few ulps


def test_int8_adam_minimises_like_float32_adam():
    """On a quadratic with per-coordinate curvatures over two decades, 8-bit Adam reaches
    the float32 run's loss to within the quantizer's step noise: both end far below the start."""
    rng = np.random.default_rng(3)
    n = 8192
    curv = jnp.asarray(np.exp(rng.uniform(-2.3, 2.3, n)), jnp.float32)
    target = jnp.asarray(rng.standard_normal(n), jnp.float32)

    def loss(p):
        return 0.5 * jnp.sum(curv * (p - target) ** 2)

    def run(opt):
        def body(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        p0 = jnp.zeros(n)
        (p, _), _ = jax.lax.scan(body, (p0, opt.init(p0)), None, length=300)
        return loss(p), loss(p0)

    lf, l0 = (float(x) for x in jax.jit(lambda: run(adamjax.adam(0.05)))())
    lq = float(jax.jit(lambda: run(adamjax.adam(0.05, state_dtype="int8")))()[0])
    assert lf < l0 / 100 and lq < l0 / 100, (l0, lf, lq)


def test_int8_state_vmaps_over_learning_rates():
    params = _params()
    grads = jax.tree.map(jnp.sin, params)

    def step(lr):
        opt = adamjax.adam(lr, state_dtype="int8")
        return opt.update(grads, opt.init(params), params)[0]

    lrs = jnp.array([1e-3, 1e-2])
    got = jax.vmap(step)(lrs)
    for i, lr in enumerate([1e-3, 1e-2]):
        one = step(jnp.float32(lr))
        jax.tree.map(lambda a, b, i=i: np.testing.assert_array_equal(a[i], b), got, one)


def test_int8_state_checkpoints_with_orbax(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    from adamjax import checkpoint

    params = _params()
    del params["e"]  # Orbax refuses zero-size arrays
    opt = adamjax.adam(1e-3, state_dtype="int8")
    st = opt.update(jax.tree.map(jnp.sin, params), opt.init(params), params)[1]
    checkpoint.save(tmp_path / "ck", st)
    back = checkpoint.restore(tmp_path / "ck", opt.init(params))
    assert_trees_equal(back, st)
    assert isinstance(back[0].mu["w"], Q.QuantizedArray)


def test_int8_is_refused_where_state_is_not_a_moment():
    with pytest.raises(TypeError, match="int8"):
        adamjax.sgd(0.1, momentum=0.9, state_dtype="int8").init(_params())
    with pytest.raises(TypeError, match="floating"):
        adamjax.adam(0.1, state_dtype=jnp.int32).init(_params())
    with pytest.raises(TypeError, match="complex"):
        adamjax.adam(0.1, state_dtype="int8").init({"z": jnp.zeros(5000, jnp.complex64)})


def _case_zero1_splits_whole_blocks():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from adamjax import sharding

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    rep = NamedSharding(mesh, PartitionSpec())
    host = {"w": np.cos(np.arange(8 * Q.BLOCK_SIZE, dtype=np.float32)).reshape(64, -1)}
    grads = [jax.tree.map(lambda x, k=k: np.sin(x + k), host) for k in range(3)]
    opt = adamjax.adam(1e-2, state_dtype="int8")
    zopt = sharding.zero1(opt, mesh)
    params, state = jax.device_put(host, rep), zopt.init(jax.device_put(host, rep))
    plain_p, plain_s = host, opt.init(host)
    for g in grads:
        u, state = jax.jit(zopt.update)(jax.device_put(g, rep), state, params)
        params = optax.apply_updates(params, u)
        pu, plain_s = jax.jit(opt.update)(g, plain_s, plain_p)
        plain_p = optax.apply_updates(plain_p, pu)
    mu = state[0].mu["w"]
    assert mu.codes.addressable_shards[0].data.shape == (1, Q.BLOCK_SIZE)  # one block each
    assert mu.scales.addressable_shards[0].data.shape == (1,)
    np.testing.assert_allclose(np.asarray(params["w"]), plain_p["w"], rtol=1e-6, atol=1e-7)


def test_zero1_splits_quantized_moments_by_whole_blocks():
    from tests.multidevice import run_case

    run_case(__file__, globals(), "_case_zero1_splits_whole_blocks", 8)
