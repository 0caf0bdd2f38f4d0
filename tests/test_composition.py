"""A wrong composition of primitives fails at trace time with a message that says why."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import adamjax
from adamjax import CompositionError

PARAMS = {"w": jnp.ones((2, 3))}
GRADS = {"w": jnp.full((2, 3), 0.5)}


def _trace(opt):
    return jax.jit(lambda g: opt.update(g, opt.init(PARAMS), PARAMS))(GRADS)


@pytest.mark.parametrize(
    "opt,fragments",
    [
        (
            adamjax.chain(adamjax.precondition(), adamjax.scale_by_lr(0.1)),
            ["precondition", "Moments", "scale_by_moments"],
        ),
        (
            adamjax.chain(adamjax.bias_correct(), adamjax.scale_by_lr(0.1)),
            ["bias_correct", "Moments"],
        ),
        (
            adamjax.chain(adamjax.scale_by_moments(), adamjax.scale_by_lr(0.1)),
            ["scale_by_lr", "precondition"],
        ),
        (
            adamjax.chain(adamjax.scale_by_moments(), adamjax.scale_by_moments()),
            ["scale_by_moments", "gradients"],
        ),
        (
            adamjax.chain(adamjax.scale_by_sum_of_squares(), adamjax.bias_correct()),
            ["bias_correct", "sum of squares"],
        ),
        (
            adamjax.chain(
                adamjax.scale_by_moments(), adamjax.bias_correct(), adamjax.bias_correct()
            ),
            ["already bias-corrected"],
        ),
        (
            adamjax.chain(adamjax.scale_by_inf_moment(), adamjax.precondition(eps_root=1e-8)),
            ["eps_root", "AdaMax"],
        ),
        (adamjax.chain(adamjax.scale_by_moments(), adamjax.trace()), ["trace", "gradients"]),
    ],
)
def test_wrong_composition_names_the_primitive(opt, fragments):
    with pytest.raises(CompositionError) as info:
        _trace(opt)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def _four_primitives(moments=(0.9, 0.999), correct=(0.9, 0.999), eps=1e-8):
    """Adam with learning rate 1e-3 as its four primitives: scale_by_moments(*moments),
    bias_correct(*correct), precondition(eps), scale_by_lr(1e-3)."""
    return adamjax.chain(
        adamjax.scale_by_moments(*moments),
        adamjax.bias_correct(*correct),
        adamjax.precondition(eps),
        adamjax.scale_by_lr(1e-3),
    )


def test_adam_is_the_four_primitives():
    a = _trace(_four_primitives())[0]["w"]
    b = _trace(adamjax.adam(1e-3))[0]["w"]
    assert jnp.array_equal(a, b)
    # First step of Adam with a constant gradient is exactly -alpha * g/|g| (up to eps).
    assert jnp.allclose(a, -1e-3, rtol=1e-6)


def test_bias_correct_reads_the_estimators_betas():
    """bias_correct() without arguments corrects with the rates the moments were built with:
    the first step of Adam on a constant gradient is exactly -alpha (the correction cancels
    the (1 - b)^1 of the first moment only if the same b is used)."""
    for b1, b2 in ((0.9, 0.999), (0.5, 0.9), (0.0, 0.99)):
        u = _trace(_four_primitives((b1, b2), correct=(), eps=0.0))[0]["w"]
        assert jnp.allclose(u, -1e-3, rtol=1e-6), (b1, b2, u)


def test_bias_correct_with_disagreeing_betas_names_both():
    with pytest.raises(CompositionError) as info:
        _trace(_four_primitives(correct=(0.5, 0.9)))
    message = str(info.value)
    assert "b1=0.5" in message and "b1=0.9" in message, message
    # agreeing explicit betas are accepted
    ok = adamjax.chain(adamjax.scale_by_moments(0.9, 0.999), adamjax.bias_correct(0.9, 0.999))
    _trace(ok)
    with pytest.raises(CompositionError, match="b2=0.99.*b2=0.999"):
        _trace(adamjax.chain(adamjax.scale_by_moments(0.9, 0.999), adamjax.bias_correct(b2=0.99)))


def test_vmapped_b1_reaches_the_bias_correction():
    """A batch of b1 values under jax.vmap: each member equals the run built with that
    Python number (the recorded b1 is a batched array, not a stale default)."""
    import numpy as np

    b1s = jnp.asarray([0.0, 0.5, 0.9, 0.99])
    grads = [jnp.asarray([0.3, -1.0, 2.0]) * (k + 1) for k in range(5)]

    def steps(b1):
        opt = adamjax.adam(1e-2, b1=b1)
        p = jnp.ones(3)
        s = opt.init(p)
        for g in grads:
            u, s = opt.update(g, s, p)
            p = adamjax.apply_updates(p, u)
        return p

    batched = jax.jit(jax.vmap(steps))(b1s)
    for i, b1 in enumerate([0.0, 0.5, 0.9, 0.99]):
        np.testing.assert_allclose(batched[i], steps(b1), rtol=1e-6)
