"""The kernel's step: its scalars, and the kernel call as the primal of a ``custom_jvp``
whose derivative (and fallback off the CPU) is the pure chain's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from adamjax import _validate, native, quantize
from adamjax.base import apply_updates, safe_increment
from adamjax.lowering._match import _Plan
from adamjax.lowering._packing import _quantized
from adamjax.native import Hyper


def _correction(beta: Any, count: jax.Array, enabled: Any) -> jax.Array:
    """``1 - beta**t`` in float32 (the expression of adamjax.bias_correct), or 1 where
    correction is off."""
    t = count.astype(jnp.float32)
    c = 1 - beta**t
    if enabled is True:
        return c
    return jnp.where(enabled, c, jnp.ones_like(c))


def _hyper(plan: _Plan, v: dict[str, Any], old_count: jax.Array):
    """The kernel's scalars, computed with the chain's own expressions so that they are
    the same bits (XLA turns the chain's ``m / c`` into ``m * (1 / c)``); AdamW's hold the
    weight decay too."""
    count = safe_increment(old_count)
    one = jnp.ones([], jnp.float32)
    inv_c1 = inv_c2 = one
    if plan.bias is not None:
        which = plan.bias.options  # bias_correct(mu=..., nu=...): both when absent
        cb1 = v["b1"] if v["cb1"] is None else v["cb1"]
        if which.get("mu", True):
            inv_c1 = 1 / _correction(cb1, count, v["enabled"])
        if plan.algo != "adamax" and which.get("nu", True):
            cb2 = v["b2"] if v["cb2"] is None else v["cb2"]
            inv_c2 = 1 / _correction(cb2, count, v["enabled"])
    b1, b2, decay = v["b1"], v["b2"], v["b1_decay"]
    # Sec. 4's b1_t = b1 * decay**(t-1), as scale_by_moments computes it; bias_correct
    # keeps the paper's 1 - b1**t.
    b1_t = (
        b1
        if _validate.is_python_number(decay, 1.0)
        else b1 * decay ** (count - 1).astype(jnp.float32)
    )
    wd = v["wd"] if plan.decay is not None else None
    return Hyper(-v["lr"], b1_t, 1 - b1_t, b2, 1 - b2, v["eps"], inv_c1, inv_c2, wd)


def _custom_step(mode: str, plan: _Plan, static: dict[str, Any], flags: Any) -> Callable:
    """``step(dynamic, p, g, mu, nu, count) -> (p or u, mu, nu)`` (lists of leaves): the
    kernel as primal, the pure chain's JVP as derivative, the pure chain off the CPU.

    ``flags``: AdamW's decayed leaves (Python booleans), or None for Adam and AdaMax. The
    decayed leaves run AdamW's kernel, the others Adam's (the chain leaves them untouched,
    where ``0 * p`` would turn an infinite parameter into NaN); ``p`` is read by both forms
    of AdamW's step.
    """

    def pure(dynamic, p, g, mu, nu, count, mask=None):
        # The chain on lists of leaves (elementwise, so the structure changes no bit).
        estimator, rest = plan.pure({**static, **dynamic}, mask=mask)
        params = list(p) if p else None
        # The estimator's state at (count, mu, nu): init gives its type, XLA drops the zeros.
        state = estimator.init(g)._replace(count=count, mu=list(mu), nu=list(nu))
        moments, state = estimator.update(list(g), state, params)
        u, _ = rest.update(moments, rest.init(g), params)
        first = apply_updates(list(p), u) if mode == "apply" else u
        return list(first), list(state.mu), list(state.nu)

    def run(algo, hyper, dynamic, p, g, mu, nu, count, mask):
        reads_p = mode == "apply" or algo == "adamw"

        def fallback(leaves):
            cols = [list(c) for c in zip(*leaves, strict=True)]
            args = cols if reads_p else [[], *cols]
            return list(zip(*pure(dynamic, *args, count, mask=mask), strict=True))

        def group(idx):  # the leaves idx, as (p, g, m, v) or (g, m, v)
            cols = ([p[i] for i in idx],) if reads_p else ()
            return [*cols, *([x[i] for i in idx] for x in (g, mu, nu))]

        # 8-bit moments (QuantizedArray) go to the 8-bit kernel, the others (float32 or
        # bfloat16, e.g. leaves too small to quantize) to the float kernel.
        q8 = [i for i, m in enumerate(mu) if isinstance(m, quantize.QuantizedArray)]
        plain = [i for i in range(len(g)) if i not in set(q8)]
        outs: list = [None] * len(g)
        if plain:
            leaves = list(zip(*group(plain), strict=True))
            got = native.float_step(algo, mode, leaves, hyper, fallback=fallback)
            for i, out in zip(plain, got, strict=True):
                outs[i] = out
        if q8:
            got = _quantized(native, algo, mode, group(q8), hyper, fallback)
            for i, out in zip(q8, got, strict=True):
                outs[i] = out
        return outs

    @jax.custom_jvp
    def step(dynamic, p, g, mu, nu, count):
        hyper = _hyper(plan, {**static, **dynamic}, count)
        if flags is None:
            outs = run(plan.algo, hyper, dynamic, p, g, mu, nu, count, None)
        else:
            outs = [None] * len(g)
            for decayed in (True, False):
                idx = [i for i, f in enumerate(flags) if f is decayed]
                if not idx:
                    continue
                algo, h = (
                    ("adamw", hyper) if decayed else ("adam", hyper._replace(weight_decay=None))
                )
                pick = [[leaves[i] for i in idx] for leaves in (p, g, mu, nu)]
                if not decayed and mode == "update":
                    pick[0] = []
                res = run(algo, h, dynamic, *pick, count, None if decayed else False)
                for i, r in zip(idx, res, strict=True):
                    outs[i] = r
        return tuple(list(col) for col in zip(*outs, strict=True))

    mask_all = None if flags is None else list(flags)

    def step_jvp(primals, tangents):
        # Differentiate the pure chain w.r.t. the arguments with nonzero tangents only, so
        # that the program (and XLA's rounding) is the one JAX builds for the chain itself.
        flat_p, tree = jax.tree.flatten(primals)
        flat_t = tree.flatten_up_to(tangents)
        live = [i for i, t in enumerate(flat_t) if not isinstance(t, SymbolicZero)]

        def of_live(*xs):
            full = list(flat_p)
            for i, x in zip(live, xs, strict=True):
                full[i] = x
            return pure(*jax.tree.unflatten(tree, full), mask=mask_all)

        return jax.jvp(of_live, [flat_p[i] for i in live], [flat_t[i] for i in live])

    step.defjvp(step_jvp, symbolic_zeros=True)

    return step
