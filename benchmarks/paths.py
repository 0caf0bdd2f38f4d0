"""The optimizer step as Flax users take it: each train-state class, side by side.

One donated, jitted step per case, timed with the interleaved timer:

- on one float32 tensor of 10M and 50M parameters (gradient fixed: the optimizer step alone),
  through Flax's Linen ``TrainState`` with ``optax.adam`` (the 1.00x reference) and with
  ``adamjax.adam``, :class:`adamjax.flax.TrainState`, ``nnx.Optimizer`` with ``adamjax.adam``
  and :class:`adamjax.flax.Optimizer`;
- on the paper's MNIST MLP train step (784-1000-1000-10, batch 128, forward + backward +
  Adam) through Flax's ``TrainState`` with ``optax.adam`` (reference) and with
  ``adamjax.adam``, and :class:`adamjax.flax.TrainState` (and, for comparison, the same step
  on raw ``(params, opt_state)`` through ``adamjax.apply_gradients``).

Flax's classes step as ``tx.update`` + ``optax.apply_updates``; adamjax's as
``adamjax.apply_gradients`` (for ``adamjax.adam`` on the CPU: one native pass). The nnx steps
use ``nnx.split``/``nnx.merge`` around ``jax.jit`` (the nnx pattern without per-call graph
traversal), with the model and optimizer state donated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

import adamjax
from benchmarks import device, train
from benchmarks.timing import Stepper, interleaved

LR = 1e-3


def _linen_step():
    def step(state, g):
        return (state.apply_gradients(grads=g),)

    return jax.jit(step, donate_argnums=0)


def _linen_case(cls, tx, params, grads):
    state = cls.create(apply_fn=None, params=params, tx=tx)
    return Stepper(_linen_step(), (state,), grads, inner=device.inner_steps())


def _nnx_case(cls, tx, n):
    from flax import nnx

    class Weights(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.full((n,), 0.5, jnp.float32))

    model = Weights()
    optimizer = cls(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), nnx.state(model, nnx.Param))

    def step(state, g):
        model, optimizer = nnx.merge(graphdef, state)
        optimizer.update(model, g)
        return (nnx.state((model, optimizer)),)

    return Stepper(jax.jit(step, donate_argnums=0), (state,), grads, inner=device.inner_steps())


def single_tensor_cases(n: int) -> dict[str, Any]:
    """The five user paths on one tensor of ``n`` float32 parameters."""
    from flax import nnx
    from flax.training import train_state

    import adamjax.flax

    def params():
        return {"w": jnp.full((n,), 0.5, jnp.float32)}

    g = {"w": jnp.full((n,), 1e-3, jnp.float32)}
    flax_ts = train_state.TrainState
    return {
        "flax_trainstate_optax": _linen_case(flax_ts, optax.adam(LR), params(), g),
        "flax_trainstate_adamjax": _linen_case(flax_ts, adamjax.adam(LR), params(), g),
        "adamjax_flax_trainstate": _linen_case(
            adamjax.flax.TrainState, adamjax.adam(LR), params(), g
        ),
        "nnx_optimizer_adamjax": _nnx_case(nnx.Optimizer, adamjax.adam(LR), n),
        "adamjax_flax_optimizer": _nnx_case(adamjax.flax.Optimizer, adamjax.adam(LR), n),
    }


def mlp_cases() -> dict[str, Any]:
    """The MNIST MLP train step through Flax's TrainState and adamjax's."""
    from flax.training import train_state

    import adamjax.flax

    model = train.flax_mlp()
    x, y = train._batch()
    params0 = model.init(jax.random.key(0), x)["params"]

    def step(state, x, y):
        g = jax.grad(lambda p: train._loss(model, p, x, y))(state.params)
        return (state.apply_gradients(grads=g),)

    jitted = jax.jit(step, donate_argnums=0)
    configs = {
        "flax_trainstate_optax": (train_state.TrainState, optax.adam(LR)),
        "flax_trainstate_adamjax": (train_state.TrainState, adamjax.adam(LR)),
        "adamjax_flax_trainstate": (adamjax.flax.TrainState, adamjax.adam(LR)),
    }
    cases = {}
    for name, (cls, tx) in configs.items():
        state = cls.create(apply_fn=model.apply, params=jax.tree.map(jnp.copy, params0), tx=tx)
        cases[name] = Stepper(jitted, (state,), x, y, inner=device.inner_steps())

    # The same step on raw (params, opt_state), as benchmarks/train.py times it: what the
    # TrainState adds on top (a step counter) should cost nothing.
    def raw_step(p, st, x, y):
        g = jax.grad(lambda p: train._loss(model, p, x, y))(p)
        return adamjax.apply_gradients(tx, g, st, p)

    tx = adamjax.adam(LR)
    p = jax.tree.map(jnp.copy, params0)
    cases["adamjax_apply_gradients_raw"] = Stepper(
        jax.jit(raw_step, donate_argnums=(0, 1)), (p, tx.init(p)), x, y, inner=device.inner_steps()
    )
    return cases


def run(sizes: list[int], repeats: int) -> dict[str, Any]:
    """Seconds per step of every path: ``{"single_tensor": {n: {...}}, "mnist_mlp": {...}}``."""
    k = device.inner_steps()
    out: dict[str, Any] = {"single_tensor": {}}
    for n in sizes:
        t = interleaved(single_tensor_cases(n), repeats=repeats)
        out["single_tensor"][n] = {name: s / k for name, s in t.items()}
    t = interleaved(mlp_cases(), repeats=repeats)
    out["mnist_mlp"] = {name: s / k for name, s in t.items()}
    return out


def rows(results: dict[str, Any]) -> list[tuple[str, str, float, str, str]]:
    """``(group, case, seconds, ratio, what)`` rows; ratios against Flax's TrainState + Optax."""
    ref = "flax_trainstate_optax"
    out = []
    for n, t in results["single_tensor"].items():
        for name, s in t.items():
            out.append(
                (
                    f"Flax paths {n // 1_000_000}M f32",
                    name,
                    s,
                    f"{t[ref] / s:4.2f}x the speed of Flax TrainState+optax.adam",
                    "one donated jitted Adam step, fixed gradient",
                )
            )
    t = results["mnist_mlp"]
    for name, s in t.items():
        out.append(
            (
                "Flax paths MNIST MLP",
                name,
                s,
                f"{s / t[ref]:4.2f}x the time of Flax TrainState+optax.adam",
                "784-1000-1000-10, batch 128, fwd+bwd+Adam",
            )
        )
    return out


def main() -> None:
    """``python -m benchmarks.paths``: this table alone (run.py includes it)."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000_000, 50_000_000])
    args = ap.parse_args()
    print(f"backend {jax.default_backend()}, native kernel: {adamjax.native_available()}")
    for group, case, s, ratio, what in rows(run(args.sizes, args.repeats)):
        print(f"| {group} | {case} | {1e3 * s:.2f} ms | {ratio} | {what} |", flush=True)


if __name__ == "__main__":
    main()
