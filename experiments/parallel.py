"""Data-parallel training and device-spread grids on a ``jax.sharding`` mesh.

Two ways to use ``N`` devices, both with JAX's own SPMD machinery (``jax.jit`` with
shardings; XLA's partitioner inserts the collectives):

* **Data parallel** (:func:`data_parallel`): parameters and optimizer state replicated
  (or, with :func:`adamjax.sharding.zero1`, the state split ``N`` ways), each minibatch
  split along its batch dimension. The loss is a mean over the *global* batch, so the
  gradient is ``g = (1/B) sum_i grad l_i = (1/N) sum_d g_d`` where ``g_d`` is device ``d``'s
  partial sum: XLA computes ``g_d`` locally and all-reduces it. Everything else is
  the single-device computation, so results match it to float32 rounding (the sum is
  taken in a different order). Random numbers match too: ``jax.random`` is
  partitionable (``jax_threefry_partitionable``), a key draws the same bits however the
  array it fills is sharded.
* **Grid over devices** (:func:`shard_configs`, :func:`grid_over_devices`): a
  hyperparameter grid is one ``jax.vmap`` over a leading config axis; sharding that axis
  puts ``G/N`` configs on each device. Configs are independent, so no communication is
  needed: ``N`` configs train at a time on ``N`` devices.

Meshes built here have ``Auto`` axes (classic GSPMD: shardings on inputs and outputs,
propagation in between).

Typical use::

    mesh = make_mesh(args.devices)                       # --devices N (0: all)
    step = data_parallel(train_step, mesh)               # (state, batch, rng, *rest)
    state = replicate(state, mesh)
    for batch in batches:
        state, metrics = step(state, shard_batch(batch, mesh), rng)
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from adamjax.sharding import constrain

__all__ = [
    "DATA",
    "add_device_arguments",
    "data_parallel",
    "grid_over_devices",
    "make_mesh",
    "pad_configs",
    "replicate",
    "shard_batch",
    "shard_configs",
]

DATA = "data"
PyTree = Any


# --------------------------------------------------------------------------------------
# Meshes.
# --------------------------------------------------------------------------------------


def make_mesh(devices: int | None = None, axis: str = DATA) -> Mesh:
    """A 1-D mesh over the first ``devices`` visible devices (``None`` or ``0``: all).

    In a multi-host run (after ``jax.distributed.initialize()``), ``jax.devices()`` lists
    every process's devices and the mesh spans them all. The axis is ``Auto``.
    """
    available = jax.devices()
    n = len(available) if not devices else int(devices)
    if n < 1 or n > len(available):
        raise ValueError(
            f"asked for {n} devices but {len(available)} are visible "
            f"({available[0].platform}). On CPU, simulate more with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} (set before JAX starts)."
        )
    return jax.make_mesh((n,), (axis,), axis_types=(AxisType.Auto,), devices=available[:n])


def add_device_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--devices N`` (0 = all visible devices) to an experiments CLI parser."""
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="devices to run on: the batch (or the config grid) is split over N devices "
        "of a 1-D 'data' mesh; 0 = all visible devices (default: 1)",
    )
    return parser


def _sharding(mesh: Mesh, spec: PartitionSpec) -> NamedSharding:
    return NamedSharding(mesh, spec)


def _spec_at(dim: int, axis: str) -> PartitionSpec:
    return PartitionSpec(*([None] * dim), axis)


# --------------------------------------------------------------------------------------
# Placing data.
# --------------------------------------------------------------------------------------


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Put a full copy of every leaf of ``tree`` on every device of ``mesh``.

    The copies are new buffers, so donating the result to a step (:func:`data_parallel`
    donates the state) never invalidates ``tree`` itself. (``jax.device_put`` alone reuses
    the source buffer for the source device's copy, even with ``may_alias=False``.)
    """
    fresh = jax.tree.map(lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x, tree)
    return jax.device_put(fresh, _sharding(mesh, PartitionSpec()))


def shard_batch(batch: PyTree, mesh: Mesh, axis: str = DATA, *, batch_dim: int = 0) -> PyTree:
    """Split every leaf of ``batch`` along ``batch_dim`` over the mesh axis ``axis``.

    Works on host arrays (a ``jax.device_put``: each device receives its ``B / N``
    examples) and inside ``jax.jit`` (a sharding constraint: a batch gathered from a
    replicated on-device dataset is then sliced locally, without communication).
    ``batch_dim=1`` suits a stack of minibatches ``[steps, batch, ...]`` scanned over.
    ``B`` must be divisible by ``N``.
    """
    n = mesh.shape[axis]

    def one(x: Any) -> jax.Array:
        size = np.shape(x)[batch_dim]
        if size % n:
            raise ValueError(
                f"a batch dimension of {size} cannot be split over {n} devices; use a batch "
                f"size divisible by {n} (e.g. {math.ceil(size / n) * n})."
            )
        return constrain(x, _sharding(mesh, _spec_at(batch_dim, axis)))

    return jax.tree.map(one, batch)


def shard_configs(tree: PyTree, mesh: Mesh, axis: str = DATA) -> PyTree:
    """Split the leading (config) axis of every leaf over ``axis``: ``G/N`` configs a device.

    ``G`` must be divisible by ``N``; :func:`pad_configs` pads a grid to that.
    """
    return shard_batch(tree, mesh, axis, batch_dim=0)


def pad_configs(tree: PyTree, multiple: int) -> tuple[PyTree, int]:
    """Pad the leading axis of every leaf to a multiple of ``multiple`` by repeating the last
    config; returns ``(padded, G)`` where ``G`` is the real count (slice results ``[:G]``)."""
    sizes = {np.shape(x)[0] for x in jax.tree.leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"config arrays disagree on the number of configs: {sorted(sizes)}")
    (g,) = sizes
    extra = -g % multiple
    if extra == 0:
        return tree, g

    def pad(x: Any) -> Any:
        x = jnp.asarray(x)
        return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)], axis=0)

    return jax.tree.map(pad, tree), g


# --------------------------------------------------------------------------------------
# Wrapping steps.
# --------------------------------------------------------------------------------------


def data_parallel(
    step: Callable[..., tuple[PyTree, PyTree]],
    mesh: Mesh,
    axis: str = DATA,
    *,
    state_sharding: PyTree | None = None,
    batch_dim: int = 0,
    donate_state: bool = True,
) -> Callable[..., tuple[PyTree, PyTree]]:
    """Jit a pure ``step(state, batch, rng, *rest) -> (state, metrics)`` data-parallel.

    ``batch`` is split along ``batch_dim`` over ``axis``; ``rng``, ``rest`` and the metrics
    are replicated. The state keeps the layout it arrives with (read from the first call's
    arrays: leaves already on ``mesh`` keep their ``NamedSharding``, e.g. ZeRO-1 moments
    from ``adamjax.sharding.zero1(...).init``; anything else is replicated), or
    ``state_sharding`` if given. ``step`` must average its loss over the whole
    batch it is given (it sees the global batch; XLA does the splitting), so its gradients
    are the single-device ones, all-reduced.

    The state argument is donated (its buffers reused for the output) unless
    ``donate_state=False``.
    """
    replicated = _sharding(mesh, PartitionSpec())
    batch_sharding = _sharding(mesh, _spec_at(batch_dim, axis))
    compiled: dict[int, Callable[..., Any]] = {}

    def layout_of(state: PyTree) -> PyTree:
        if state_sharding is not None:
            return state_sharding

        def one(x: Any) -> NamedSharding:
            sh = getattr(x, "sharding", None)
            if isinstance(sh, NamedSharding) and sh.mesh == mesh:
                return sh
            return replicated

        return jax.tree.map(one, state)

    def run(state: PyTree, batch: PyTree, rng: Any, *rest: Any) -> tuple[PyTree, PyTree]:
        fn = compiled.get(len(rest))
        if fn is None:
            state_sh = layout_of(state)
            fn = jax.jit(
                step,
                in_shardings=(state_sh, batch_sharding, replicated) + (replicated,) * len(rest),
                out_shardings=(state_sh, replicated),
                donate_argnums=(0,) if donate_state else (),
            )
            compiled[len(rest)] = fn
        return fn(state, batch, rng, *rest)

    run.__doc__ = step.__doc__
    run.__wrapped__ = step  # type: ignore[attr-defined]
    return run


def grid_over_devices(
    fn: Callable[..., Any],
    mesh: Mesh,
    axis: str = DATA,
    *,
    in_axes: Sequence[int | None] | int | None = 0,
) -> Callable[..., Any]:
    """``jax.vmap(fn, in_axes)`` under ``jax.jit``, the config axis split over ``axis``.

    Arguments mapped by ``in_axes`` (0: a leading config axis) are sharded over the mesh,
    the others (``None``: the dataset, shared settings) replicated; outputs keep the config
    axis sharded. With ``G`` configs on ``N`` devices each device runs ``G/N`` of them and
    there is no communication. ``G`` must be divisible by ``N`` (see :func:`pad_configs`).
    """
    config_sharding = _sharding(mesh, PartitionSpec(axis))
    replicated = _sharding(mesh, PartitionSpec())
    mapped = jax.vmap(fn, in_axes=in_axes)
    compiled: dict[int, Callable[..., Any]] = {}

    def run(*args: Any) -> Any:
        fn_jit = compiled.get(len(args))
        if fn_jit is None:
            axes = in_axes if isinstance(in_axes, Sequence) else (in_axes,) * len(args)
            if len(axes) != len(args):
                raise TypeError(f"in_axes has {len(axes)} entries for {len(args)} arguments")
            shardings = []
            for a in axes:
                if a is None:
                    shardings.append(replicated)
                elif a == 0:
                    shardings.append(config_sharding)
                else:
                    raise ValueError("grid_over_devices maps configs along axis 0 (or None)")
            fn_jit = jax.jit(mapped, in_shardings=tuple(shardings), out_shardings=config_sharding)
            compiled[len(args)] = fn_jit
        return fn_jit(*args)

    return run


# --------------------------------------------------------------------------------------
# A data-parallel quick run: python -m experiments.parallel --devices 8
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train the paper's MNIST MLP (784-1000-1000-10, Adam, batch 128) data-parallel.

    Prints the wall time of each epoch (the first includes compilation) and the mean
    training loss; ``--zero1`` shards Adam's moments over the devices. Returns the figures.
    """
    import time

    import optax

    import adamjax
    import adamjax.flax
    from adamjax import sharding
    from experiments import data, models

    parser = argparse.ArgumentParser(
        prog="python -m experiments.parallel", description=main.__doc__
    )
    add_device_arguments(parser)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--examples", type=int, default=60000, help="training examples used")
    parser.add_argument("--zero1", action="store_true", help="shard Adam's moments (ZeRO-1)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host: TPU pod slice, GPU cluster)",
    )
    args = parser.parse_args(argv)

    if args.distributed:
        jax.distributed.initialize()
    mesh = make_mesh(args.devices)
    images, labels = data.load("mnist", "train", args.data_dir)
    n = min(args.examples, len(images)) // args.batch_size * args.batch_size
    x = replicate(jnp.asarray(images[:n].reshape(n, -1)), mesh)
    y = replicate(jnp.asarray(labels[:n].astype(np.int32)), mesh)
    model = models.MLP(hidden=args.hidden)
    params = replicate(model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"], mesh)
    opt = adamjax.adam(1e-3)
    if args.zero1:
        opt = sharding.zero1(opt, mesh)
    # adamjax's Flax TrainState: its apply_gradients runs Adam as one fused pass on the CPU
    # (plain update + apply_updates for the ZeRO-1 wrapper), with the same results.
    state = adamjax.flax.TrainState.create(apply_fn=model.apply, params=params, tx=opt)
    steps = n // args.batch_size

    def loss_fn(p, xb, yb):
        logits = model.apply({"params": p}, xb.astype(jnp.float32) / 255.0)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def train_step(state, batch, rng):
        del rng
        loss, g = jax.value_and_grad(loss_fn)(state.params, *batch)
        return state.apply_gradients(grads=g), loss

    # The state is donated (updated in place): each call's input is the previous output,
    # and ``params`` (fresh copies from ``replicate``) is not used after ``init``.
    @functools.partial(jax.jit, donate_argnums=0)
    def epoch(state, key):
        perm = jax.random.permutation(key, n)[: steps * args.batch_size]

        def body(state, idx):
            batch = shard_batch((x[idx], y[idx]), mesh)  # this device's examples only
            return train_step(state, batch, None)

        return jax.lax.scan(body, state, perm.reshape(steps, args.batch_size))

    print(f"{mesh.shape['data']} device(s) ({jax.devices()[0].platform}), {steps} steps/epoch")
    out: dict[str, float] = {}
    for e in range(args.epochs):
        start = time.perf_counter()
        state, losses = epoch(state, jax.random.key(e))
        loss = float(jnp.mean(losses))
        seconds = time.perf_counter() - start
        out[f"epoch{e + 1}_seconds"], out[f"epoch{e + 1}_loss"] = seconds, loss
        print(f"epoch {e + 1}: {seconds:.2f}s, mean train loss {loss:.4f}")
    state_bytes = sharding.bytes_per_device(state.opt_state)
    print(f"optimizer state per device: {max(state_bytes.values()) / 2**20:.2f} MiB")
    return out


if __name__ == "__main__":
    main()
