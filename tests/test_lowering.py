"""One gate: an alias and the same chain composed by hand from the primitives take the same
path (the native kernel or the chain as written) and compute the same bits.

:func:`adamjax.lowering.kernel_gate` decides for both; the path taken is read from the
compiled program (the kernel's custom call targets start with ``adamjax_native_``), and
the numbers are compared with the chain as written (``implementation="jax"``), so a
configuration that moves to the kernel keeps the numbers it had.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamjax
from adamjax import native
from adamjax.lowering import kernel_gate
from tests.helpers import assert_trees_equal

pytestmark = pytest.mark.skipif(
    not native.native_available() or jax.default_backend() != "cpu",
    reason="compares the native CPU kernel with the chain: needs the kernel and a CPU backend",
)

KERNEL = "adamjax_native_"
LR = 1e-2

# name -> (the alias's storage arguments, the parameters' dtype, whether the kernel runs
# apply_gradients, whether it runs update under "auto")
CASES = {
    "float32": ({}, jnp.float32, True, False),
    "bfloat16-params": ({}, jnp.bfloat16, False, False),
    "mu_dtype-bfloat16": ({"mu_dtype": jnp.bfloat16}, jnp.float32, True, False),
    "nu_dtype-bfloat16": ({"nu_dtype": jnp.bfloat16}, jnp.float32, True, False),
    "mu-bfloat16-nu-float32": (
        {"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.float32},
        jnp.float32,
        True,
        False,
    ),
    "int8": ({"state_dtype": "int8"}, jnp.float32, True, True),
}


def _parts(storage):
    """adamjax.adam(LR, **storage) composed by hand, one primitive per line."""
    return [
        adamjax.scale_by_moments(0.9, 0.999, **storage),
        adamjax.bias_correct(),
        adamjax.precondition(1e-8),
        adamjax.scale_by_lr(LR),
    ]


def _params(dtype):
    rng = np.random.default_rng(0)
    sizes = {"w": (300, 7), "b": (64,), "big": (9_001,)}  # "big": 8-bit blocks and a tail
    return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in sizes.items()}


def _grads(params, t):
    return jax.tree.map(lambda x: (jnp.sin(x * (t + 1)) * (0.1 + t)).astype(x.dtype), params)


def _uses_kernel(fn, *args) -> bool:
    return KERNEL in jax.jit(fn).lower(*args).compile().as_text()


def _cast_like(updates, grads):
    return jax.tree.map(lambda u, g: u.astype(g.dtype), updates, grads)


@pytest.mark.parametrize("name", list(CASES))
def test_the_alias_and_the_chain_by_hand_take_one_path_with_the_same_bits(name):
    storage, dtype, kernel_applies, kernel_updates = CASES[name]
    alias = adamjax.adam(LR, **storage)
    hand = adamjax.chain(*_parts(storage))
    written = adamjax.adam(LR, **storage, implementation="jax")
    params = _params(dtype)
    g0 = _grads(params, 0)

    def apply(opt):
        return lambda g, s, p: adamjax.apply_gradients(opt, g, s, p)

    def update(opt):
        return lambda g, s, p: opt.update(g, s, p)

    st = alias.init(params)
    assert_trees_equal(st, hand.init(params))
    # The path: the same for both, the one the gate states, the one expected.
    applies = [_uses_kernel(apply(o), g0, st, params) for o in (alias, hand)]
    updates = [_uses_kernel(update(o), g0, st, params) for o in (alias, hand)]
    assert applies == [kernel_applies] * 2, applies
    assert updates == [kernel_updates] * 2, updates
    gate = kernel_gate(_parts(storage), g0, st, params, mode="apply")
    assert gate.runs == kernel_applies, gate.why

    # The bits, over a few steps: apply_gradients and update of both against the chain.
    opts = {"alias": alias, "hand": hand, "written": written}
    steps = {k: (jax.jit(apply(o)), jax.jit(update(o))) for k, o in opts.items()}
    state = {k: st for k in opts}
    p = {k: params for k in opts}
    for t in range(3):
        g = _grads(params, t)
        out = {k: steps[k][0](g, state[k], p[k]) for k in opts}
        upd = {k: steps[k][1](g, state[k], p[k]) for k in opts}
        for k in ("hand", "written"):
            assert_trees_equal(out[k], out["alias"])
            assert_trees_equal((_cast_like(upd[k][0], g), upd[k][1]), upd["alias"])
        p = {k: out[k][0] for k in opts}
        state = {k: out[k][1] for k in opts}
