"""Training workloads: the paper's MNIST MLP train step, and a 16-point learning-rate grid.

Inputs are synthetic batches with MNIST's shapes (28x28 images in [0, 1], 10 classes):
the time of a step does not depend on the pixel values.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamjax
from adamjax.flat import ravel
from adamjax.step import apply_gradients
from benchmarks import device
from benchmarks.timing import Stepper, interleaved

BATCH = 128


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, 784), dtype=np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def flax_mlp(hidden=(1000, 1000)):
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for h in hidden:
                x = nn.relu(nn.Dense(h)(x))
            return nn.Dense(10)(x)

    return MLP()


def _loss(model, params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def mlp_cases(with_torch: bool):
    model = flax_mlp()
    x, y = _batch()
    params0 = model.init(jax.random.key(0), x)["params"]

    def adamjax_step(opt):
        def step(p, st, x, y):
            g = jax.grad(lambda p: _loss(model, p, x, y))(p)
            return apply_gradients(opt, g, st, p)

        return jax.jit(step, donate_argnums=(0, 1))

    def optax_step(opt):
        def step(p, st, x, y):
            g = jax.grad(lambda p: _loss(model, p, x, y))(p)
            u, st = opt.update(g, st, p)
            return optax.apply_updates(p, u), st

        return jax.jit(step, donate_argnums=(0, 1))

    cases = {}
    k = device.inner_steps()
    configs = {"adamjax_jax": adamjax.adam(1e-3, implementation="jax")}
    if device.native_in_use():
        configs = {"adamjax_native": adamjax.adam(1e-3)} | configs
    for name, opt in configs.items():
        p = jax.tree.map(jnp.copy, params0)
        cases[name] = Stepper(adamjax_step(opt), (p, opt.init(p)), x, y, inner=k)
    o = optax.adam(1e-3)
    p = jax.tree.map(jnp.copy, params0)
    cases["optax"] = Stepper(optax_step(o), (p, o.init(p)), x, y, inner=k)
    if with_torch:
        cases["torch_eager"] = _torch_mlp_step(x, y)
    return cases


def _torch_mlp_step(x, y):
    import torch

    torch.manual_seed(0)
    dev = device.torch_device()
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 1000),
        torch.nn.ReLU(),
        torch.nn.Linear(1000, 1000),
        torch.nn.ReLU(),
        torch.nn.Linear(1000, 10),
    ).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # PyTorch's default (foreach) Adam
    tx = torch.from_numpy(np.asarray(x)).to(dev)
    ty = torch.from_numpy(np.asarray(y)).long().to(dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(tx), ty)
        loss.backward()
        opt.step()

    return device.torch_synced(step, dev)


def run_mlp(repeats: int, with_torch: bool):
    cases = mlp_cases(with_torch)
    torch_case = cases.pop("torch_eager", None)
    seconds = interleaved(cases, repeats=repeats)
    if torch_case is not None:
        # PyTorch's OpenMP threads keep spinning after a step and slow whatever runs next on
        # 2 cores, so PyTorch is timed in its own loop after the JAX cases, not among them.
        seconds |= interleaved({"torch_eager": torch_case}, repeats=repeats)
    return {"seconds": {k: s / device.inner_steps() for k, s in seconds.items()}}


# ---------------------------------------------------------------------------------------
# A learning-rate grid: logistic regression on MNIST-shaped data (the paper's Sec. 6.1),
# `steps` Adam steps per run under lax.scan, 16 learning rates. Each step takes the next
# minibatch of 128 from a dataset of `steps` x 128 examples held on the device, as a
# training run does: the vmapped grid reads each minibatch once for all 16 configs, the
# runs one after another read the whole dataset 16 times. (With a single fixed batch,
# which stays in cache, the ratio is lower: 2.5-2.8x on 2 CPU cores.)


def _logreg_run(steps: int):
    rng = np.random.default_rng(1)
    shape = (steps * BATCH, 784)  # sparse like MNIST: ~20% of the pixels nonzero
    x_np = (rng.random(shape, dtype=np.float32) * (rng.random(shape) < 0.2)).astype(np.float32)
    # Labels from a random linear teacher, so that the runs learn (on random labels, the
    # large learning rates of the grid wander chaotically and no two programs agree).
    teacher = rng.standard_normal((784, 10)).astype(np.float32)
    xs = jnp.asarray(x_np)
    ys = jnp.asarray(np.argmax((x_np - 0.1) @ teacher, axis=1).astype(np.int32))

    def run(lr):
        opt = adamjax.adam(lr)
        params = {"w": jnp.zeros((784, 10)), "b": jnp.zeros((10,))}

        def body(carry, i):
            p, st = carry
            x = jax.lax.dynamic_slice_in_dim(xs, i * BATCH, BATCH)
            y = jax.lax.dynamic_slice_in_dim(ys, i * BATCH, BATCH)

            def loss(p):
                logits = x @ p["w"] + p["b"]
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            lval, g = jax.value_and_grad(loss)(p)
            p, st = apply_gradients(opt, g, st, p)
            return (p, st), lval

        (_, _), losses = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(steps))
        return losses[-1]

    return run


def run_grid(points: int, steps: int, repeats: int):
    lrs = jnp.asarray(np.logspace(-4, -1, points), jnp.float32)
    run = _logreg_run(steps)
    vmapped = jax.jit(jax.vmap(run))
    single = jax.jit(run)
    t0 = time.perf_counter()
    jax.block_until_ready(vmapped(lrs))
    compile_vmapped = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(single(lrs[0]))
    compile_single = time.perf_counter() - t0
    seq_out: list[jax.Array] = []

    def sequential():
        seq_out[:] = [single(lr) for lr in lrs]
        jax.block_until_ready(seq_out)

    vm_out: list[jax.Array] = []

    def vm():
        vm_out[:] = [vmapped(lrs)]
        jax.block_until_ready(vm_out)

    t = interleaved({"vmapped": vm, "sequential": sequential}, repeats=repeats, warmup=1)
    same = np.allclose(np.asarray(vm_out[0]), np.asarray(seq_out), rtol=1e-5, atol=1e-6)
    return {
        "points": points,
        "steps": steps,
        "seconds": t,
        "compile_seconds": {"vmapped": compile_vmapped, "single": compile_single},
        "results_agree": bool(same),
    }


# ---------------------------------------------------------------------------------------


def state_bytes(params):
    """Optimizer-state bytes per parameter of each configuration, from its ``init``."""
    n = sum(x.size for x in jax.tree.leaves(params))

    def nbytes(tree):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    flat_p, _ = ravel(params)
    configs = {
        "adamjax adam (float32 state)": adamjax.adam(1e-3).init(params),
        "adamjax adam (bfloat16 state)": adamjax.adam(1e-3, state_dtype=jnp.bfloat16).init(params),
        "adamjax adam layout=flat": adamjax.adam(1e-3, layout="flat").init(params),
        "adamjax adam on flat params": adamjax.adam(1e-3).init(flat_p),
        "adamjax adamax (bfloat16 state)": adamjax.adamax(state_dtype=jnp.bfloat16).init(params),
        "adamjax adam (int8 state)": adamjax.adam(1e-3, state_dtype="int8").init(params),
        "adamjax adamw (int8 state)": adamjax.adamw(1e-3, state_dtype="int8").init(params),
        "optax adam": optax.adam(1e-3).init(params),
    }
    out = {name: nbytes(st) / n for name, st in configs.items()}
    try:
        import torch

        p = torch.nn.Parameter(torch.zeros(1000))
        p.grad = torch.zeros(1000)
        opt = torch.optim.Adam([p])
        opt.step()
        st = opt.state[p]
        out["torch adam"] = (
            sum(v.numel() * v.element_size() for v in st.values() if hasattr(v, "numel")) / 1000
        )
    except ImportError:
        pass
    return {"params": int(n), "bytes_per_param": out}
