"""8-bit block-wise moments against float32 moments: one Adam step on the default paths.

One float32 tensor of ``n`` parameters (50M by default), one donated jitted step, timed
side by side (interleaved) in one run:

* ``update+apply_updates``: ``opt.update`` then ``optax.apply_updates`` (plain Optax, Flax's
  own TrainState, ``nnx.Optimizer``);
* ``apply_gradients``: ``adamjax.apply_gradients`` (adamjax's Flax TrainState);
* ``update, grads in jit``: ``update+apply_updates`` with the gradient computed inside the
  step (here ``g * s``, ``s`` a traced 1.0), as a training step computes it: a buffer that
  is dead after the update, which the 8-bit kernel overwrites with the update.

For each path it prints the float32-state step (``adamjax.adam(lr)``), the 8-bit-state step
(``adamjax.adam(lr, state_dtype="int8")``) and their ratio, and the 8-bit step of the chain
as written (``implementation="jax"``) for scale. Run::

    python -m benchmarks.int8_state [--n 50000000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import adamjax
from benchmarks.timing import Stepper, interleaved

LR = 1e-3
PATHS = ("update+apply_updates", "update, grads in jit", "apply_gradients")


def _step(opt, path: str):
    def apply_gradients(p, st, g, s):
        return adamjax.apply_gradients(opt, g, st, p)

    def update_apply(p, st, g, s):
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st

    def update_apply_grads_in_jit(p, st, g, s):
        u, st = opt.update(g * s, st, p)
        return optax.apply_updates(p, u), st

    step = {
        "apply_gradients": apply_gradients,
        "update+apply_updates": update_apply,
        "update, grads in jit": update_apply_grads_in_jit,
    }[path]
    return jax.jit(step, donate_argnums=(0, 1))


def cases(n: int, with_jax_int8: bool):
    g = jnp.full((n,), 1e-3, jnp.float32)
    opts = {
        "f32 state": adamjax.adam(LR),
        "int8 state": adamjax.adam(LR, state_dtype="int8"),
    }
    if with_jax_int8:
        opts["int8 state, implementation='jax'"] = adamjax.adam(
            LR, state_dtype="int8", implementation="jax"
        )
    out = {}
    for path in PATHS:
        for name, opt in opts.items():
            p = jnp.linspace(-1.0, 1.0, n, dtype=jnp.float32)
            s = jnp.float32(1.0)  # traced: g * s is computed in the step
            out[(path, name)] = Stepper(_step(opt, path), (p, opt.init(p)), g, s)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000_000, help="parameters (one tensor)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-jax-int8", action="store_true", help="skip the slow chain rows")
    args = ap.parse_args(argv)
    from adamjax import native

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, native {native.native_info()}")
    t0 = time.perf_counter()
    c = cases(args.n, not args.no_jax_int8)
    t = interleaved({f"{p} | {k}": v for (p, k), v in c.items()}, repeats=args.repeats)
    print(f"n = {args.n:,} float32 parameters, median of {args.repeats} interleaved steps")
    for path in PATHS:
        base = t[f"{path} | f32 state"]
        for name in ("f32 state", "int8 state", "int8 state, implementation='jax'"):
            key = f"{path} | {name}"
            if key in t:
                print(f"{path:22s} {name:34s} {t[key] * 1e3:9.2f} ms  {t[key] / base:6.2f}x f32")
    print(f"(wall {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
