"""Many leaves: a 1000-leaf tree of 64x64 arrays and a small transformer's parameter shapes.

Step time (update + apply, donated) and compile time of the same step, adamjax layouts vs
Optax. "flat params" keeps the parameters themselves as one buffer per dtype
(``adamjax.flat.ravel``), so gradients arrive flat; "flat_layout" keeps tree parameters
and holds only the state flat (concatenate/split every step).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax

import adamjax
from adamjax.flat import flat_layout, ravel
from adamjax.step import apply_gradients
from benchmarks import device
from benchmarks.timing import Stepper, interleaved

LR = 1e-3


def leaves_tree(num_leaves: int):
    return {f"w{i:04d}": jnp.full((64, 64), 0.01 * (i % 7), jnp.float32) for i in range(num_leaves)}


def transformer_tree(vocab=8192, d=256, layers=4, mlp=1024, seq=256):
    """Parameter shapes of a small GPT-style transformer (about 5.5M parameters)."""

    def z(*shape):
        return jnp.full(shape, 0.01, jnp.float32)

    tree = {"embed": z(vocab, d), "pos": z(seq, d), "ln_f": {"scale": z(d), "bias": z(d)}}
    for i in range(layers):
        tree[f"block{i}"] = {
            "ln1": {"scale": z(d), "bias": z(d)},
            "attn": {"qkv": z(d, 3 * d), "qkv_b": z(3 * d), "out": z(d, d), "out_b": z(d)},
            "ln2": {"scale": z(d), "bias": z(d)},
            "mlp": {"fc1": z(d, mlp), "fc1_b": z(mlp), "fc2": z(mlp, d), "fc2_b": z(d)},
        }
    return tree


def _apply_fn(opt):
    def make():
        def step(p, st, g):
            return apply_gradients(opt, g, st, p)

        return step

    return make


def _optax_fn(opt):
    def make():
        def step(p, st, g):
            u, st = opt.update(g, st, p)
            return optax.apply_updates(p, u), st

        return step

    return make


def tree_cases(params, include_flat_layout: bool):
    """name -> (step factory, optimizer, params to run on)."""
    grads = jax.tree.map(lambda x: x * 0 + 1e-3, params)
    flat_p, _ = ravel(params)
    flat_g, _ = ravel(grads)
    o = optax.adam(LR)
    jax_opt = adamjax.adam(LR, implementation="jax")
    cases = {
        "optax": (_optax_fn(o), o, params, grads),
        "adamjax_tree_jax": (_apply_fn(jax_opt), jax_opt, params, grads),
        "adamjax_tree_native": (_apply_fn(adamjax.adam(LR)), adamjax.adam(LR), params, grads),
        "adamjax_flatparams_jax": (
            _apply_fn(adamjax.adam(LR, implementation="jax")),
            adamjax.adam(LR, implementation="jax"),
            flat_p,
            flat_g,
        ),
        "adamjax_flatparams_native": (
            _apply_fn(adamjax.adam(LR)),
            adamjax.adam(LR),
            flat_p,
            flat_g,
        ),
    }
    if not device.native_in_use():  # "auto" is the pure chain here: same as the _jax rows
        del cases["adamjax_tree_native"], cases["adamjax_flatparams_native"]
    if include_flat_layout:
        o2 = flat_layout(adamjax.adam(LR, implementation="jax"))
        cases["adamjax_flat_layout_jax"] = (_apply_fn(o2), o2, params, grads)
    return cases


def run_tree(params, repeats: int, include_flat_layout: bool):
    cases = tree_cases(params, include_flat_layout)
    compile_s: dict[str, float] = {}
    steppers: dict[str, Stepper] = {}
    for name, (make, opt, p, g) in cases.items():
        p = jax.tree.map(jnp.copy, p)
        st = opt.init(p)
        t0 = time.perf_counter()
        compiled = jax.jit(make(), donate_argnums=(0, 1)).lower(p, st, g).compile()
        compile_s[name] = time.perf_counter() - t0
        steppers[name] = Stepper(compiled, (p, st), g, inner=device.inner_steps())
    step_s = {k: s / device.inner_steps() for k, s in interleaved(steppers, repeats).items()}
    n = sum(x.size for x in jax.tree.leaves(params))
    return {
        "leaves": len(jax.tree.leaves(params)),
        "params": int(n),
        "step_seconds": step_s,
        "compile_seconds": compile_s,
    }
