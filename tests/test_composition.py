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


def test_adam_is_the_four_primitives():
    composed = adamjax.chain(
        adamjax.scale_by_moments(0.9, 0.999),
        adamjax.bias_correct(0.9, 0.999),
        adamjax.precondition(1e-8),
        adamjax.scale_by_lr(1e-3),
    )
    a = _trace(composed)[0]["w"]
    b = _trace(adamjax.adam(1e-3))[0]["w"]
    assert jnp.array_equal(a, b)
    # First step of Adam with a constant gradient is exactly -alpha * g/|g| (up to eps).
    assert jnp.allclose(a, -1e-3, rtol=1e-6)
