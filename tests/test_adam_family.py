"""AdamW, AMSGrad, NAdam, RAdam against float64 transcriptions of their papers, Optax and
PyTorch; and the Optax options of the older aliases against Optax."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamjax
from tests import reference as ref
from tests.helpers import (
    assert_matches_reference_float64,
    assert_tree_close,
    gradient_sequence,
    random_tree,
    run,
)

STEPS = 300

# (name, adamjax factory, reference(theta0, grads) -> thetas)
PAPER = [
    (
        "adamw",
        lambda: adamjax.adamw(1e-2, weight_decay=0.1),
        lambda th, g: ref.adamw(th, g, 1e-2, wd=0.1),
    ),
    (
        "adamw-weight_decay-schedule",
        lambda: adamjax.adamw(1e-2, weight_decay=lambda count: 0.5 / (1.0 + count)),
        lambda th, g: ref.adamw(th, g, 1e-2, wd=lambda t: 0.5 / (1.0 + t)),
    ),
    (
        "adamw-b1=0.8,b2=0.99,eps=1e-6",
        lambda: adamjax.adamw(3e-3, 0.8, 0.99, 1e-6, weight_decay=0.5),
        lambda th, g: ref.adamw(th, g, 3e-3, 0.8, 0.99, 1e-6, wd=0.5),
    ),
    (
        "amsgrad-optax-placement",
        lambda: adamjax.amsgrad(1e-2),
        lambda th, g: ref.amsgrad(th, g, 1e-2, max_of="corrected"),
    ),
    (
        "amsgrad-pytorch-placement",
        lambda: adamjax.chain(
            adamjax.scale_by_moments(0.9, 0.99),
            adamjax.keep_max_nu(),  # max of the raw v_t ...
            adamjax.bias_correct(),  # ... then divided by 1 - b2^t
            adamjax.precondition(1e-8),
            adamjax.scale_by_lr(1e-2),
        ),
        lambda th, g: ref.amsgrad(th, g, 1e-2, b2=0.99, max_of="raw"),
    ),
    (
        "amsgrad-paper",
        lambda: adamjax.chain(
            adamjax.scale_by_moments(0.9, 0.999),
            adamjax.keep_max_nu(),
            adamjax.precondition(1e-8),
            adamjax.scale_by_lr(1e-3),
        ),
        lambda th, g: ref.amsgrad(th, g, 1e-3, max_of="paper"),
    ),
    ("nadam", lambda: adamjax.nadam(1e-2), lambda th, g: ref.nadam(th, g, 1e-2)),
    (
        "nadam-b1=0.5,b2=0.99",
        lambda: adamjax.nadam(3e-3, 0.5, 0.99, 1e-6),
        lambda th, g: ref.nadam(th, g, 3e-3, 0.5, 0.99, 1e-6),
    ),
    ("radam", lambda: adamjax.radam(1e-2), lambda th, g: ref.radam(th, g, 1e-2)),
    (
        "radam-b2=0.9,threshold=4",  # rho_t passes 4 and 5 at different steps here
        lambda: adamjax.radam(3e-3, 0.8, 0.9, 1e-6, threshold=4.0),
        lambda th, g: ref.radam(th, g, 3e-3, 0.8, 0.9, 1e-6, threshold=4.0),
    ),
]


@pytest.mark.parametrize("name,make,reference", PAPER, ids=[c[0] for c in PAPER])
def test_matches_paper_float64(name, make, reference):
    assert_matches_reference_float64(name, make, reference, STEPS)


def test_amsgrad_placements_differ_early_and_agree_late():
    """Optax's max over v_t/(1-b2^t) and PyTorch's max over v_t differ while 1-b2^t changes:
    a large early gradient keeps its raw v_t maximal, but its corrected value is inflated."""
    g = np.concatenate([np.full(5, 10.0), np.full(400, 0.1)])[:, None]
    th = np.zeros(1)
    optax_like = ref.amsgrad(th, g, 1e-2, b2=0.99, max_of="corrected")
    torch_like = ref.amsgrad(th, g, 1e-2, b2=0.99, max_of="raw")
    with jax.enable_x64(True):
        ours = np.asarray(run(adamjax.amsgrad(1e-2, b2=0.99), jnp.zeros(1), jnp.asarray(g)))
    np.testing.assert_allclose(ours, optax_like, rtol=1e-10)
    assert np.max(np.abs(optax_like - torch_like)) > 1e-3  # visibly different optimizers


def test_adamw_mask_tree_and_callable():
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
        grads = gradient_sequence(rng, params, 50, np.float64)
        tree_mask = {"w": True, "b": False}
        for mask in (tree_mask, lambda p: jax.tree.map(lambda x: x.ndim > 1, p)):
            got = run(adamjax.adamw(1e-2, weight_decay=0.3, mask=mask), params, grads)
            for k in params:
                want = ref.adamw(params[k], grads[k], 1e-2, wd=0.3, decay=tree_mask[k])
                np.testing.assert_allclose(got[k], want, rtol=1e-10, atol=1e-12)


def _decay_matrices(p):
    return jax.tree.map(lambda x: x.ndim > 1, p)


OPTAX = [
    ("adamw", adamjax.adamw(1e-2, weight_decay=0.1), optax.adamw(1e-2, weight_decay=0.1)),
    (
        "adamw-mask",
        adamjax.adamw(1e-2, weight_decay=0.1, mask=_decay_matrices),
        optax.adamw(1e-2, weight_decay=0.1, mask=_decay_matrices),
    ),
    ("nadamw", adamjax.adamw(1e-2, nesterov=True), optax.adamw(1e-2, nesterov=True)),
    (
        "nadamw-alias",
        adamjax.nadamw(1e-2, 0.8, 0.99, weight_decay=0.1, mask=_decay_matrices),
        optax.nadamw(1e-2, 0.8, 0.99, weight_decay=0.1, mask=_decay_matrices),
    ),
    ("amsgrad", adamjax.amsgrad(1e-2, b2=0.99), optax.amsgrad(1e-2, b2=0.99)),
    *[
        (
            f"amsgrad-bias_correction_mu={mu},nu={nu}",
            adamjax.amsgrad(1e-2, b2=0.99, bias_correction_mu=mu, bias_correction_nu=nu),
            optax.amsgrad(1e-2, b2=0.99, bias_correction_mu=mu, bias_correction_nu=nu),
        )
        for mu, nu in ((False, True), (True, False), (False, False))
    ],
    (
        "adamw-weight_decay-schedule",
        adamjax.adamw(1e-2, weight_decay=optax.linear_schedule(0.3, 0.0, 10)),
        optax.adamw(1e-2, weight_decay=optax.linear_schedule(0.3, 0.0, 10)),
    ),
    ("nadam", adamjax.nadam(1e-2), optax.nadam(1e-2)),
    ("adam-nesterov", adamjax.adam(1e-2, nesterov=True), optax.adam(1e-2, nesterov=True)),
    ("radam", adamjax.radam(1e-2), optax.radam(1e-2)),
    ("radam-nesterov", adamjax.radam(1e-2, nesterov=True), optax.radam(1e-2, nesterov=True)),
    (
        "rmsprop-centered-momentum",
        adamjax.rmsprop(1e-3, 0.9, 1e-6, centered=True, momentum=0.9),
        optax.rmsprop(1e-3, 0.9, 1e-6, centered=True, momentum=0.9),
    ),
    (
        "rmsprop-all-options",
        adamjax.rmsprop(1e-3, 0.95, 1e-4, 0.5, False, False, 0.8, True, True),
        optax.rmsprop(1e-3, 0.95, 1e-4, 0.5, False, False, 0.8, True, True),
    ),
    (
        # at t = 1 the corrected variance is 0 (rounding: +-): eps inside the root keeps it real
        "rmsprop-centered-bias-correction",
        adamjax.rmsprop(1e-3, eps=0.1, centered=True, bias_correction=True),
        optax.rmsprop(1e-3, eps=0.1, centered=True, bias_correction=True),
    ),
    (
        "adadelta-weight_decay",
        adamjax.adadelta(0.5, 0.9, 1e-6, 0.01, _decay_matrices),
        optax.adadelta(0.5, 0.9, 1e-6, 0.01, _decay_matrices),
    ),
    (
        "adagrad-accumulator",
        adamjax.adagrad(0.1, 1e-7, initial_accumulator_value=0.1),
        optax.adagrad(0.1, 0.1, 1e-7),
    ),
]


@pytest.mark.parametrize("name,ours,theirs", OPTAX, ids=[a[0] for a in OPTAX])
def test_matches_optax(name, ours, theirs):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    with jax.enable_x64(True):
        params = random_tree(rng, np.float64)
        grads = gradient_sequence(rng, params, 200, np.float64)
        got = run(ours, params, grads, apply=adamjax.apply_updates)
        want = run(theirs, params, grads, apply=optax.apply_updates)
        assert_tree_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(
    "ours,theirs,decay",
    [
        (
            adamjax.sgd(0.05, 0.9, False, jnp.float32),
            optax.sgd(0.05, 0.9, False, jnp.float32),
            0.9,
        ),
        (adamjax.adam(1e-2, mu_dtype=jnp.float32), optax.adam(1e-2, mu_dtype=jnp.float32), 0.9),
    ],
    ids=["sgd-accumulator_dtype", "adam-mu_dtype"],
)
def test_float32_storage_of_a_float64_run_agrees_with_optax(ours, theirs, decay):
    """Optax's accumulator_dtype / mu_dtype: the moment is stored in that dtype. Both libraries
    round it once per step for storage (2^-24 relative in float32), but differ in where else
    they round (Optax multiplies the stored float32 moment by the decay in float32; sgd's
    Optax steps with the rounded trace). A moment averaged with decay d carries each step's
    rounding with weight <= 1 / (1 - d), so over 200 steps the displacements agree to
    200 * 2^-24 / (1 - d) relative to the largest displacement, at worst."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        params = random_tree(rng, np.float64)
        grads = gradient_sequence(rng, params, 200, np.float64)
        state = jax.tree.leaves(ours.init(params)[0])
        assert np.dtype(np.float32) in {x.dtype for x in state}
        got = run(ours, params, grads, apply=adamjax.apply_updates)
        want = run(theirs, params, grads, apply=optax.apply_updates)
        moved = max(jax.tree.leaves(jax.tree.map(lambda w, p: np.abs(w - p).max(), want, params)))
        assert_tree_close(got, want, rtol=0, atol=200 * 2.0**-24 / (1 - decay) * moved)


BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32


@pytest.mark.parametrize(
    "factory,kwargs,mu,nu",
    [
        (adamjax.adam, {"mu_dtype": BF16}, BF16, F32),
        (adamjax.adam, {"nu_dtype": BF16}, F32, BF16),
        (adamjax.adam, {"state_dtype": BF16}, BF16, BF16),
        (adamjax.adam, {"state_dtype": BF16, "nu_dtype": F32}, BF16, F32),
        (adamjax.adamax, {"mu_dtype": F16}, F16, F32),
        (adamjax.nadam, {"mu_dtype": BF16}, BF16, F32),
        (adamjax.amsgrad, {"nu_dtype": BF16}, F32, BF16),
        (adamjax.adamw, {"mu_dtype": BF16}, BF16, F32),
    ],
)
def test_separate_moment_storage_dtypes(factory, kwargs, mu, nu):
    """mu_dtype and nu_dtype each set one moment's storage (state_dtype: both), and stay so
    after a step. The step is computed in float32 from the unrounded moments, so the first
    update equals the float32-state one exactly (m_1, v_1 are stored, not read back)."""
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    grads = {"w": jnp.linspace(0.5, -2.0, 6)}
    opt = factory(0.1, **kwargs)
    u, state = jax.jit(opt.update)(grads, opt.init(params), params)
    moments = state[0]
    assert moments.mu["w"].dtype == mu and moments.nu["w"].dtype == nu
    ref_opt = factory(0.1)
    want, _ = jax.jit(ref_opt.update)(grads, ref_opt.init(params), params)
    np.testing.assert_array_equal(u["w"], want["w"])
