"""Compensated (Kahan) summation of bfloat16/float16 parameters: exact transcription, no stall.

References: a float64 NumPy transcription of compensated summation whose roundings to float32
and to bfloat16 are written out (bfloat16 by its bit pattern, independent of JAX and
ml_dtypes), and float32 parameters trained with the same updates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import adamjax
import adamjax.flax
from adamjax.kahan import KahanSummationState, kahan_summation
from tests.helpers import assert_trees_equal, jit_step

# Significant bits (precision p) of each low-precision dtype: unit roundoff 2**-p.
_BITS = {jnp.bfloat16: 8, jnp.float16: 11}


def _f32(x: np.ndarray) -> np.ndarray:
    """Round float64 to float32 (to nearest, ties to even), back in float64."""
    return np.asarray(x, np.float64).astype(np.float32).astype(np.float64)


def _round(x: np.ndarray, dtype) -> np.ndarray:
    """Round float32 values (held in float64) to ``dtype``, to nearest, ties to even."""
    x32 = np.asarray(x, np.float64).astype(np.float32)
    if dtype == jnp.float16:
        return x32.astype(np.float16).astype(np.float64)
    bits = x32.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # bfloat16: keep the top 16 bits
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def _ulp(x: np.ndarray, dtype) -> np.ndarray:
    """Spacing of ``dtype`` at |x| (normal range): 2**(floor(log2 |x|) - (p - 1))."""
    return 2.0 ** (np.floor(np.log2(np.abs(x))) - (_BITS[dtype] - 1))


def _reference_step(p, c, u, dtype):
    """One compensated step in float64 with explicit roundings (the module's formulas).

    Returns the new parameter, the new compensation and the textbook new parameter
    ``round(p + (u + c))``, which the apply lands on whenever ``new - p`` is representable.
    """
    y = _f32(u + c)
    s = _f32(p + y)
    textbook = _round(s, dtype)
    delta = _round(_f32(textbook - p), dtype)  # the update handed to apply_updates
    landed = _round(_f32(p + delta), dtype)  # what apply_updates computes
    return landed, _round(_f32(s - landed), dtype), textbook


def _np(x) -> np.ndarray:
    return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_matches_a_float64_transcription_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    n, steps = 512, 60
    p = _round(_f32(rng.normal(size=n) * np.exp(rng.uniform(-2, 2, n))), dtype)
    c = np.zeros(n)
    # Updates from 1e-6 |p| (far below half an ulp) to 3 |p| (a step that crosses zero or
    # binades, whose difference new - p need not be representable), both signs.
    scale = np.exp(rng.uniform(np.log(1e-6), np.log(3.0), (steps, n)))
    updates = (rng.choice([-1.0, 1.0], (steps, n)) * scale * np.abs(p)).astype(np.float32)

    opt = kahan_summation(optax.identity())  # the update is the "gradient" itself
    params = {"w": jnp.asarray(p, jnp.float32).astype(dtype)}
    state = opt.init(params)

    @jax.jit
    def step(params, state, u):
        d, state = opt.update({"w": u}, state, params)
        return optax.apply_updates(params, d), state

    textbook_differs = 0
    for t in range(steps):
        params, state = step(params, state, jnp.asarray(updates[t]))
        p, c, textbook = _reference_step(p, c, updates[t].astype(np.float64), dtype)
        np.testing.assert_array_equal(_np(params["w"]), p, err_msg=f"step {t}")
        np.testing.assert_array_equal(_np(state.compensation["w"]), c, err_msg=f"step {t}")
        textbook_differs += int(np.sum(p != textbook))
    assert params["w"].dtype == dtype and state.compensation["w"].dtype == dtype
    # The data reaches both cases: compensation carried, and (bfloat16, with steps of the
    # size of the parameter) a step not representable, where the apply lands elsewhere.
    assert np.count_nonzero(c) > n // 2
    if dtype == jnp.bfloat16:
        assert textbook_differs > 0


def _no_stall_run(dtype, steps):
    """Per-element constant updates below half an ulp of |p| = 1.5, both signs."""
    bits = _BITS[dtype]
    rng = np.random.default_rng(1)
    n = 256
    half_ulp = 2.0**-bits  # spacing on [1, 2) is 2**(1 - bits)
    # |u| * steps <= 0.45: the parameters stay inside [1, 2), one binade of spacing U.
    mag = rng.uniform(0.03, min(0.9 * half_ulp, 0.45 / steps) / half_ulp, n) * half_ulp
    u = (rng.choice([-1.0, 1.0], n) * mag).astype(np.float32)
    p0 = jnp.full((n,), 1.5, dtype)

    def train(opt, p):
        params, state = {"w": p}, opt.init({"w": p})

        @jax.jit
        def step(params, state):
            d, state = opt.update({"w": jnp.asarray(u)}, state, params)
            return optax.apply_updates(params, d), state

        for _ in range(steps):
            params, state = step(params, state)
        return _np(params["w"])

    nearest = train(optax.identity(), p0)
    kahan = train(kahan_summation(optax.identity()), p0)
    float32 = train(optax.identity(), p0.astype(jnp.float32))
    return u, nearest, kahan, float32


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_no_stall_and_within_the_derived_bound_of_the_float32_sum(dtype):
    steps = 200
    u, nearest, kahan, float32 = _no_stall_run(dtype, steps)
    bits = _BITS[dtype]
    ulp = 2.0 ** (1 - bits)  # on [1, 2), where every run stays
    assert np.all((kahan >= 1) & (kahan < 2)) and np.all(_ulp(kahan, dtype) == ulp)
    # Round to nearest: each update is below half an ulp, so the parameters never move.
    np.testing.assert_array_equal(nearest, 1.5)
    # Kahan. theta_N - sum = -c_N + (the float32 and low-precision roundings of c): |c_N| <=
    # U/2; each step the remainder s - theta (<= U/2, exact in float32) is rounded to
    # `bits` significant bits, losing <= 2**-bits * U/2; the float32 adds y = u + c and
    # s = theta + y lose <= 2**-24 (|y| + |s|) <= 2**-24 * 2.01 each step; the float32 run
    # itself loses <= 2**-24 * 2 per add.
    f32_terms = steps * 2.0**-24 * (2.01 + 2.0)
    bound = ulp / 2 + steps * 2.0 ** -(bits + 1) * ulp + f32_terms
    assert bound < ulp  # "within one ulp of the final value" for this many steps
    err = np.abs(kahan - float32)
    assert np.all(err <= bound), (err.max() / ulp, bound / ulp)
    # The bound is no formality: round to nearest misses it by the stalled sum.
    assert np.all(np.abs(nearest - float32) > bound)
    # The float32 reference is the float64 sum to its own rounding.
    np.testing.assert_allclose(float32, 1.5 + steps * u.astype(np.float64), atol=f32_terms)


def _mixed_params(rng):
    return {
        "w": jnp.asarray(rng.uniform(1.1, 1.9, (8, 16)), jnp.bfloat16),
        "h": jnp.asarray(rng.uniform(1.1, 1.9, (7,)), jnp.float16),
        "f": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
    }


def _grads(rng, params, steps):
    return [
        jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        for _ in range(steps)
    ]


def test_every_apply_path_lands_on_the_same_parameters_and_state():
    rng = np.random.default_rng(2)
    params = _mixed_params(rng)
    grads = _grads(rng, params, 12)
    opt = kahan_summation(adamjax.adam(1e-3))

    steppers = {
        "optax.apply_updates": jit_step(opt, optax.apply_updates),
        "adamjax.apply_updates": jit_step(opt, adamjax.apply_updates),
        "adamjax.apply_gradients": jax.jit(
            lambda p, s, g: adamjax.apply_gradients(opt, g, s, p), donate_argnums=(0, 1)
        ),
    }
    results = {}
    for name, step in steppers.items():
        p, s = jax.tree.map(jnp.copy, params), opt.init(params)
        for g in grads:
            p, s = step(p, s, g)
        results[name] = (p, s)

    for cls in (adamjax.flax.TrainState, train_state.TrainState):
        ts = cls.create(apply_fn=None, params=params, tx=opt)
        ts_step = jax.jit(lambda ts, g: ts.apply_gradients(grads=g))
        for g in grads:
            ts = ts_step(ts, g)
        results[cls.__module__] = (ts.params, ts.opt_state)

    class Model(nnx.Module):
        def __init__(self):
            self.w, self.h, self.f = (nnx.Param(params[k]) for k in ("w", "h", "f"))

    for cls in (adamjax.flax.Optimizer, nnx.Optimizer):
        model = Model()
        optimizer = cls(model, opt, wrt=nnx.Param)

        @nnx.jit
        def nnx_step(model, optimizer, g):
            # d/dx sum(x * g) = g exactly: the gradient is the given tree.
            def loss(m):
                return sum(jnp.sum(getattr(m, k)[...] * g[k]) for k in ("w", "h", "f"))

            optimizer.update(model, nnx.grad(loss)(model))

        for g in grads:
            nnx_step(model, optimizer, g)
        name = f"{cls.__module__}.{cls.__name__}"
        results[name] = ({k: getattr(model, k)[...] for k in ("w", "h", "f")}, None)

    ref_p, ref_s = results.pop("optax.apply_updates")
    assert ref_p["w"].dtype == jnp.bfloat16 and ref_p["h"].dtype == jnp.float16
    for name, (p, s) in results.items():
        assert_trees_equal(p, ref_p, name)
        if s is not None:
            assert_trees_equal(s, ref_s, name)
    # float32 leaves: no buffer, and the plain optimizer's update bit for bit.
    assert ref_s.compensation["f"] is None
    plain = adamjax.adam(1e-3)
    pf = {"f": params["f"]}
    sf = plain.init(pf)
    plain_step = jit_step(plain, optax.apply_updates)
    for g in grads:
        pf, sf = plain_step(pf, sf, {"f": g["f"]})
    np.testing.assert_array_equal(np.asarray(ref_p["f"]), np.asarray(pf["f"]))


def _wrapped(name: str, kahan: bool):
    """The optimizer under test, built the way a user would compose it."""
    k = kahan_summation if kahan else (lambda opt: opt)
    if name == "chain with clipping":
        return k(optax.chain(optax.clip_by_global_norm(0.5), adamjax.adam(1e-3)))
    if name == "inside MultiSteps":
        return optax.MultiSteps(k(adamjax.adam(1e-3)), every_k_schedule=3)
    if name == "around MultiSteps":
        return k(optax.MultiSteps(adamjax.adam(1e-3), every_k_schedule=3).gradient_transformation())
    # inject_hyperparams casts the hyperparameters to the parameters' dtype unless told
    # otherwise: in bfloat16, b2 = 0.999 becomes 1.0 and Adam's bias correction divides by 0.
    inject = dict(hyperparam_dtype=jnp.float32)
    if name == "inside inject_hyperparams":
        return optax.inject_hyperparams(
            lambda learning_rate: k(adamjax.adam(learning_rate)), **inject
        )(learning_rate=1e-3)
    if name == "around inject_hyperparams":
        return k(optax.inject_hyperparams(adamjax.adam, **inject)(learning_rate=1e-3))
    raise AssertionError(name)


WRAPPINGS = [
    "chain with clipping",
    "inside MultiSteps",
    "around MultiSteps",
    "inside inject_hyperparams",
    "around inject_hyperparams",
]


@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_under_wrappers_the_apply_paths_agree_and_follow_float32(wrapping):
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.uniform(1.1, 1.9, (64,)), jnp.bfloat16)}
    steps = 30
    # float32 gradients, so that the float32 run's optimizer sees the same numbers.
    grads = [{"w": jnp.asarray(rng.normal(size=64), jnp.float32)} for _ in range(steps)]
    opt = _wrapped(wrapping, kahan=True)
    two_call = jit_step(opt, optax.apply_updates)
    fused = jax.jit(lambda p, s, g: adamjax.apply_gradients(opt, g, s, p))
    pa, sa = params, opt.init(params)
    pb, sb = params, opt.init(params)
    for g in grads:
        pa, sa = two_call(pa, sa, g)
        pb, sb = fused(pb, sb, g)
        assert_trees_equal((pa, sa), (pb, sb))
    # The compensated bfloat16 run follows the float32 one within the bound of
    # test_no_stall_...: |c_N| <= U/2, plus 2**-9 U per step, plus float32 rounding.
    plain = _wrapped(wrapping, kahan=False)
    p32 = {"w": params["w"].astype(jnp.float32)}
    s32 = plain.init(p32)
    plain_step = jit_step(plain, optax.apply_updates)
    for g in grads:
        p32, s32 = plain_step(p32, s32, g)
    got, want = _np(pa["w"]), _np(p32["w"])
    ulp = _ulp(np.maximum(np.abs(got), np.abs(want)), jnp.bfloat16)
    assert np.all(ulp == _ulp(_np(params["w"]), jnp.bfloat16))  # one binade throughout
    bound = ulp / 2 + steps * 2.0**-9 * ulp + steps * 2.0**-24 * 4.1
    err = np.abs(got - want)
    assert np.all(err <= bound), np.max(err / ulp)
    # ... which round to nearest misses: Adam's steps of about 1e-3 are below half an ulp.
    pr, sr = params, plain.init(params)
    for g in grads:
        pr, sr = plain_step(pr, sr, g)
    assert np.any(np.abs(_np(pr["w"]) - want) > bound)


def test_state_keeps_its_dtypes_and_shapes_and_the_step_compiles_once():
    rng = np.random.default_rng(4)
    params = _mixed_params(rng)
    opt = kahan_summation(adamjax.adam(1e-3))
    state = opt.init(params)
    assert isinstance(state, KahanSummationState)
    comp = state.compensation
    assert comp["f"] is None  # float32 leaves carry no buffer
    for k in ("w", "h"):
        assert comp[k].dtype == params[k].dtype and comp[k].shape == params[k].shape
    spec = jax.tree.map(lambda x: (x.shape, x.dtype), (params, state))

    @jax.jit
    def step(p, s, g):
        return adamjax.apply_gradients(opt, g, s, p)

    for g in _grads(rng, params, 4):
        params, state = step(params, state, g)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), (params, state)) == spec
    assert step._cache_size() == 1
    assert np.count_nonzero(np.asarray(state.compensation["w"])) > 0


def test_bad_input_is_refused_with_a_clear_message():
    opt = kahan_summation(adamjax.sgd(0.1))
    params = {"w": jnp.ones(2, jnp.bfloat16)}
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.update({"w": jnp.ones(2)}, opt.init(params))
    with pytest.raises(TypeError, match="kahan_summation wraps an optimizer"):
        kahan_summation(1e-3)  # type: ignore[arg-type]
