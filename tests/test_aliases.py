"""Every alias against a float64 NumPy transcription of its paper algorithm."""

from __future__ import annotations

import zlib

import jax
import numpy as np
import pytest

import adamjax
from tests import reference as ref
from tests.helpers import (
    assert_matches_reference_float64,
    assert_tree_close,
    gradient_sequence,
    random_tree,
    reference_tree,
    run,
)

STEPS = 300

# (name, adamjax factory, reference(theta0, grads) -> thetas)
CASES = [
    ("adam-default", lambda: adamjax.adam(1e-2), lambda th, g: ref.adam(th, g, 1e-2)),
    (
        "adam-b1=0.5,b2=0.99,eps=1e-6",
        lambda: adamjax.adam(3e-3, b1=0.5, b2=0.99, eps=1e-6),
        lambda th, g: ref.adam(th, g, 3e-3, b1=0.5, b2=0.99, eps=1e-6),
    ),
    (
        "adam-b1=0,b2=0.9999",
        lambda: adamjax.adam(1e-3, b1=0.0, b2=0.9999),
        lambda th, g: ref.adam(th, g, 1e-3, b1=0.0, b2=0.9999),
    ),
    (
        "adam-no-bias-correction",
        lambda: adamjax.adam(1e-3, b2=0.99, bias_correction=False),
        lambda th, g: ref.adam(th, g, 1e-3, b2=0.99, bias_correction=False),
    ),
    (
        "adam-b1_decay=0.99",
        lambda: adamjax.adam(1e-2, b1_decay=0.99),
        lambda th, g: ref.adam(th, g, 1e-2, lam=0.99),
    ),
    (
        "adam-inverse-sqrt",
        lambda: adamjax.adam(adamjax.inverse_sqrt_schedule(0.05)),
        lambda th, g: ref.adam(th, g, None, alpha_fn=lambda t: 0.05 / np.sqrt(t)),
    ),
    ("adamax-default", lambda: adamjax.adamax(), lambda th, g: ref.adamax(th, g)),
    (
        "adamax-b1=0.8,b2=0.99",
        lambda: adamjax.adamax(0.01, b1=0.8, b2=0.99),
        lambda th, g: ref.adamax(th, g, 0.01, b1=0.8, b2=0.99),
    ),
    ("adagrad", lambda: adamjax.adagrad(0.1), lambda th, g: ref.adagrad(th, g, 0.1)),
    (
        "adagrad-eps=1e-4",
        lambda: adamjax.adagrad(0.5, eps=1e-4),
        lambda th, g: ref.adagrad(th, g, 0.5, eps=1e-4),
    ),
    ("rmsprop", lambda: adamjax.rmsprop(1e-3), lambda th, g: ref.rmsprop(th, g, 1e-3)),
    (
        "rmsprop-decay=0.99",
        lambda: adamjax.rmsprop(1e-2, decay=0.99, eps=1e-6),
        lambda th, g: ref.rmsprop(th, g, 1e-2, decay=0.99, eps=1e-6),
    ),
    ("sgd", lambda: adamjax.sgd(0.01), lambda th, g: ref.sgd(th, g, 0.01)),
    (
        "sgd-momentum",
        lambda: adamjax.sgd(0.01, momentum=0.9),
        lambda th, g: ref.sgd(th, g, 0.01, momentum=0.9),
    ),
    (
        "sgd-nesterov",
        lambda: adamjax.sgd(0.01, momentum=0.95, nesterov=True),
        lambda th, g: ref.sgd(th, g, 0.01, momentum=0.95, nesterov=True),
    ),
    ("adadelta", lambda: adamjax.adadelta(), lambda th, g: ref.adadelta(th, g, rho=0.9)),
    (
        "adadelta-zeiler-rho=0.95",
        lambda: adamjax.adadelta(rho=0.95),
        lambda th, g: ref.adadelta(th, g, rho=0.95),
    ),
    (
        "adadelta-rho=0.9,lr=0.5",
        lambda: adamjax.adadelta(0.5, rho=0.9, eps=1e-5),
        lambda th, g: ref.adadelta(th, g, 0.5, rho=0.9, eps=1e-5),
    ),
]


@pytest.mark.parametrize("name,make,reference", CASES, ids=[c[0] for c in CASES])
def test_alias_matches_paper_float64(name, make, reference):
    assert_matches_reference_float64(name, make, reference, STEPS)


@pytest.mark.parametrize("name,make,reference", CASES, ids=[c[0] for c in CASES])
def test_alias_matches_paper_float32(name, make, reference):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    params = random_tree(rng, np.float32)
    grads = gradient_sequence(rng, params, STEPS, np.float32)
    got = run(make(), params, grads)
    assert jax.tree.leaves(got)[0].dtype == np.float32
    want = reference_tree(reference, params, grads)
    # float32 rounding accumulates over 300 steps: compare the displacement from theta_0.
    moved = jax.tree.map(lambda w, p: np.abs(w - np.asarray(p, np.float64)).max(), want, params)
    scale = max(jax.tree.leaves(moved))
    assert_tree_close(got, want, rtol=2e-4, atol=2e-4 * scale + 1e-6)
