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
from tests.helpers import assert_tree_close, gradient_sequence, random_tree, run

STEPS = 300

# (name, adamjax factory, reference(theta0, grads) -> thetas)
PAPER = [
    (
        "adamw",
        lambda: adamjax.adamw(1e-2, weight_decay=0.1),
        lambda th, g: ref.adamw(th, g, 1e-2, wd=0.1),
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


def _reference_tree(reference, params, grads):
    return jax.tree.map(lambda p, g: reference(np.asarray(p), np.asarray(g)), params, grads)


@pytest.mark.parametrize("name,make,reference", PAPER, ids=[c[0] for c in PAPER])
def test_matches_paper_float64(name, make, reference):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    with jax.enable_x64(True):
        params = random_tree(rng, np.float64)
        grads = gradient_sequence(rng, params, STEPS, np.float64)
        got = run(make(), params, grads)
        assert jax.tree.leaves(got)[0].dtype == np.float64
        assert_tree_close(got, _reference_tree(reference, params, grads), rtol=1e-10, atol=1e-12)


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


def _run_style(opt, params, grads, apply):
    def body(carry, g):
        p, s = carry
        u, s = opt.update(g, s, p)
        p = apply(p, u)
        return (p, s), p

    return jax.jit(lambda p, gs: jax.lax.scan(body, (p, opt.init(p)), gs)[1])(params, grads)


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
    ("amsgrad", adamjax.amsgrad(1e-2, b2=0.99), optax.amsgrad(1e-2, b2=0.99)),
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
        got = _run_style(ours, params, grads, adamjax.apply_updates)
        want = _run_style(theirs, params, grads, optax.apply_updates)
        assert_tree_close(got, want, rtol=1e-9, atol=1e-11)


def test_sgd_accumulator_dtype_is_the_trace_storage():
    """Optax's accumulator_dtype: the trace is stored in that dtype. adamjax steps with the
    unrounded trace and stores it rounded; Optax steps with the rounded one. In float32
    storage of a float64 run each rounding is <= 2^-24 relative, and momentum mu sums them
    into the trace with weight <= 1/(1 - mu), so the displacements agree to
    200 * 2^-24 / (1 - mu) relative at worst (far less in practice)."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        params = random_tree(rng, np.float64)
        grads = gradient_sequence(rng, params, 200, np.float64)
        ours = adamjax.sgd(0.05, 0.9, False, jnp.float32)
        assert ours.init(params)[0].trace["dense"]["w"].dtype == jnp.float32
        got = _run_style(ours, params, grads, adamjax.apply_updates)
        want = _run_style(
            optax.sgd(0.05, 0.9, False, jnp.float32), params, grads, optax.apply_updates
        )
        moved = max(jax.tree.leaves(jax.tree.map(lambda w, p: np.abs(w - p).max(), want, params)))
        assert_tree_close(got, want, rtol=0, atol=200 * 2.0**-24 / (1 - 0.9) * moved)
