"""jit vs eager, vmap over hyperparameters (including traced bias_correction)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import adamjax
from tests import reference as ref
from tests.helpers import gradient_sequence, random_tree, run


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    params = random_tree(rng)
    return params, gradient_sequence(rng, params, 40)


FAMILY = {
    "adam": lambda: adamjax.adam(1e-2),
    "adam-no-bc": lambda: adamjax.adam(1e-2, bias_correction=False),
    "adamax": lambda: adamjax.adamax(),
    "adagrad": lambda: adamjax.adagrad(0.1),
    "rmsprop": lambda: adamjax.rmsprop(1e-2),
    "sgd-nesterov": lambda: adamjax.sgd(0.01, 0.9, nesterov=True),
    "adadelta": lambda: adamjax.adadelta(),
    "skip(adam)": lambda: adamjax.skip_nonfinite(adamjax.adam(1e-2)),
    "average(adam)": lambda: adamjax.temporal_averaging(adamjax.adam(1e-2)),
}


@pytest.mark.parametrize("name", list(FAMILY))
def test_jit_equals_eager(name, problem):
    params, grads = problem
    eager = run(FAMILY[name](), params, grads, jit=False)
    jitted = run(FAMILY[name](), params, grads, jit=True)
    # params are O(1): a few float32 ulps of 1.0 (1.2e-7) may differ once XLA fuses.
    chex.assert_trees_all_close(jitted, eager, rtol=1e-6, atol=1e-6)


# Each alias beside its float64 NumPy transcription (tests/reference.py), called step by step
# through chex's variants: plain Python and jax.jit (several devices: tests/test_sharding.py).
REFERENCES = {
    "adam": (lambda: adamjax.adam(1e-2), lambda th, g: ref.adam(th, g, 1e-2)),
    "adam-no-bc": (
        lambda: adamjax.adam(1e-2, bias_correction=False),
        lambda th, g: ref.adam(th, g, 1e-2, bias_correction=False),
    ),
    "adamax": (lambda: adamjax.adamax(), lambda th, g: ref.adamax(th, g)),
    "adagrad": (lambda: adamjax.adagrad(0.1), lambda th, g: ref.adagrad(th, g, 0.1)),
    "rmsprop": (lambda: adamjax.rmsprop(1e-2), lambda th, g: ref.rmsprop(th, g, 1e-2)),
    "sgd-nesterov": (
        lambda: adamjax.sgd(0.01, 0.9, nesterov=True),
        lambda th, g: ref.sgd(th, g, 0.01, momentum=0.9, nesterov=True),
    ),
    "adadelta": (
        lambda: adamjax.adadelta(rho=0.95),  # Zeiler's rho, the reference's
        lambda th, g: ref.adadelta(th, g, rho=0.95),
    ),
}
VARIANT_STEPS = 10


class StepVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*((name, name) for name in REFERENCES))
    def test_steps_match_float64_reference(self, name):
        make, reference = REFERENCES[name]
        rng = np.random.default_rng(11)
        params = random_tree(rng)
        grads = gradient_sequence(rng, params, VARIANT_STEPS)
        opt = make()

        @self.variant
        def step(params, state, g):
            updates, state = opt.update(g, state, params)
            return adamjax.apply_updates(params, updates), state

        p, state = params, opt.init(params)
        for t in range(VARIANT_STEPS):
            p, state = step(p, state, jax.tree.map(lambda x, t=t: x[t], grads))
        chex.assert_trees_all_equal_shapes_and_dtypes(p, params)
        want = jax.tree.map(lambda th, g: reference(th, g)[-1], params, grads)
        # 10 float32 steps on O(1) parameters: each step adds a few roundings of 6e-8
        # relative, so 1e-5 holds with room; a wrong line of an algorithm is off by ~1e-3.
        chex.assert_trees_all_close(p, want, rtol=1e-5, atol=1e-5)


def test_vmap_over_learning_rates_equals_separate_runs(problem):
    params, grads = problem
    lrs = jnp.array([1e-4, 1e-3, 1e-2, 1e-1])
    grid = jax.jit(jax.vmap(lambda lr: run(adamjax.adam(lr), params, grads)))(lrs)
    chex.assert_tree_shape_prefix(grid, (4, 40))  # configs, then steps
    chex.assert_trees_all_equal_dtypes(grid, params)
    for i, lr in enumerate([1e-4, 1e-3, 1e-2, 1e-1]):
        single = run(adamjax.adam(lr), params, grads)
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], grid), single, rtol=1e-6, atol=1e-7
        )


def test_vmap_over_every_hyperparameter_and_bias_correction(problem):
    params, grads = problem
    configs = [
        dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, bc=True),
        dict(lr=1e-2, b1=0.0, b2=0.99, eps=1e-6, bc=False),
        dict(lr=3e-3, b1=0.5, b2=0.9999, eps=1e-8, bc=False),
        dict(lr=1e-1, b1=0.9, b2=0.9, eps=1e-4, bc=True),
    ]
    stacked = {k: jnp.array([c[k] for c in configs]) for k in configs[0]}

    def one(h):
        opt = adamjax.adam(h["lr"], h["b1"], h["b2"], h["eps"], bias_correction=h["bc"])
        return run(opt, params, grads)

    grid = jax.jit(jax.vmap(one))(stacked)
    for i in range(len(configs)):
        # Separate runs see the same float32 values: with Python floats, `1 - b2` would be
        # rounded once from double (e.g. 1e-4) rather than computed from float32(0.9999).
        single = one({k: v[i] for k, v in stacked.items()})
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], grid), single, rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize(
    "make",
    [
        lambda lr: adamjax.adamax(lr, b1=lr * 5),
        lambda lr: adamjax.rmsprop(lr, decay=1 - lr),
        lambda lr: adamjax.adagrad(lr, eps=lr * 1e-4),
        lambda lr: adamjax.sgd(lr, momentum=1 - 5 * lr, nesterov=True),
        lambda lr: adamjax.adadelta(lr * 10, rho=1 - lr),
        lambda lr: adamjax.adam(adamjax.inverse_sqrt_schedule(lr), b1_decay=1 - lr),
        lambda lr: adamjax.temporal_averaging(adamjax.adam(lr), decay=1 - lr),
    ],
    ids=["adamax", "rmsprop", "adagrad", "nesterov", "adadelta", "adam-schedule", "averaging"],
)
def test_every_alias_vmaps_over_traced_hyperparameters(make, problem):
    params, grads = problem
    lrs = [0.01, 0.05]
    grid = jax.jit(jax.vmap(lambda lr: run(make(lr), params, grads)))(jnp.array(lrs))
    for i, lr in enumerate(lrs):
        single = run(make(lr), params, grads)
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], grid), single, rtol=1e-5, atol=1e-6
        )


def _clip_by_global_norm(grads_seq, max_norm):
    """NumPy float64: each step's gradients scaled by min(1, max_norm / global norm)."""
    leaves, treedef = jax.tree.flatten(grads_seq)
    leaves = [np.asarray(g, np.float64) for g in leaves]
    norms = np.sqrt(sum(np.sum(g.reshape(len(g), -1) ** 2, axis=1) for g in leaves))
    scale = np.minimum(1.0, max_norm / norms)
    clipped = [g * scale.reshape((-1,) + (1,) * (g.ndim - 1)) for g in leaves]
    return jax.tree.unflatten(treedef, clipped), norms


@pytest.mark.parametrize("chain", [adamjax.chain, optax.chain], ids=["adamjax", "optax"])
def test_adam_after_clipping_in_a_chain_matches_float64_reference(chain):
    """``chain(clip_by_global_norm(8), adam)``, adamjax's chain and Optax's, against clipping
    and Algorithm 1 transcribed in float64 NumPy (tests/reference.py)."""
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        params = random_tree(rng, np.float64)
        grads = gradient_sequence(rng, params, 40, np.float64)
        clipped, norms = _clip_by_global_norm(grads, 8.0)
        assert (norms > 8.0).any() and (norms < 8.0).any()  # clipping both on and off
        got = run(chain(optax.clip_by_global_norm(8.0), adamjax.adam(1e-2)), params, grads)
        want = jax.tree.map(lambda p, g: ref.adam(np.asarray(p), g, 1e-2), params, clipped)
        # float64 throughout: only rounding of ~1e-16 per operation separates the two.
        chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)
