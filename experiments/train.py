"""Training: a pure train step, an epoch as one ``lax.scan``, the grid as one ``jax.vmap``.

``train_step(state, batch, rng, hp)`` is a pure function of arrays (sharding-ready). An epoch
shuffles the on-device dataset with its own permutation per config and scans the train step
over the minibatches; :func:`make_epoch_fn` vmaps that over the configs of a grid chunk and
jit-compiles it with the train state donated. :func:`train_chunk` runs the epochs with
checkpoints and returns the curves.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

import adamjax
from experiments import optimizers, parallel
from experiments.batching import DeviceData
from experiments.checkpoint import Checkpointer
from experiments.tasks import Task

__all__ = ["TrainState", "Job", "make_train_step", "make_epoch_fn", "make_eval_fn", "train_chunk"]

_SHUFFLE, _NOISE = 0, 1


class TrainState(NamedTuple):
    """What changes during training, for one config (leading config axis when vmapped)."""

    params: Any
    opt_state: Any
    step: jax.Array


@dataclass(frozen=True)
class Job:
    """Static settings of one training job (one optimizer on one task): the jit cache key."""

    task: Task
    optimizer: str
    schedule: str
    batch_size: int
    epochs: int
    seed: int
    checkpoint_every: int = 1


def make_train_step(task: Task, optimizer: str, schedule: str) -> Callable:
    """``train_step(state, batch, rng, hp) -> (state, loss)``: one optimizer update."""

    def train_step(state: TrainState, batch, rng, hp):
        x, y = batch
        loss, grads = jax.value_and_grad(task.cost)(state.params, x, y, rng, True)
        tx = optimizers.build(optimizer, hp, schedule)
        # update + apply_updates, or the fused native CPU kernel where it applies (same result):
        # the step adamjax.flax.TrainState takes. That class is not used here because ``tx``
        # is rebuilt inside the vmapped step from each config's traced hyperparameters, while
        # a Flax TrainState holds ``tx`` as a static field fixed outside jit and vmap.
        params, opt_state = adamjax.apply_gradients(tx, grads, state.opt_state, state.params)
        return TrainState(params, opt_state, state.step + 1), loss

    return train_step


def init_state(task: Task, optimizer: str, schedule: str, params: Any, hp) -> TrainState:
    """The initial state of one config (vmap it over ``hp`` for a grid)."""
    tx = optimizers.build(optimizer, hp, schedule)
    return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


def _to_float(x: jax.Array) -> jax.Array:
    """``uint8`` pixels to [0, 1]; float inputs (already pre-processed, e.g. whitened) as is."""
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x


def _single(fn, n_vmapped_args: int):
    """``fn`` on a config axis of length one without vmap (vmapped convolutions become slow
    grouped convolutions on CPU): squeeze the axis, call, add it back."""

    def wrapped(*args):
        squeezed = [jax.tree.map(lambda a: a[0], a) for a in args[:n_vmapped_args]]
        return jax.tree.map(lambda a: a[None], fn(*squeezed, *args[n_vmapped_args:]))

    return wrapped


@functools.lru_cache(maxsize=32)
def make_epoch_fn(
    task: Task,
    optimizer: str,
    schedule: str,
    batch_size: int,
    n_train: int,
    single: bool = False,
    mesh: Mesh | None = None,
):
    """Vmapped, jitted ``epoch(states, keys, hp, epoch, x, y) -> (states, losses[N, steps])``.

    ``keys[i]`` is config ``i``'s RNG stream: the epoch's shuffle and every step's dropout or
    latent noise are derived from it by ``fold_in``. ``states`` is donated.

    With a ``mesh`` (data parallel, see :mod:`experiments.parallel`) every minibatch drawn
    from the (replicated) on-device dataset is split over the mesh's data axis; the
    arguments must be replicated on ``mesh``. XLA all-reduces the gradients, so the result
    is the single-device one up to float32 rounding.

    The epoch is one ``lax.scan`` in one jitted program, except for convolutional models on
    the CPU (see ``_UNROLLED_BLOCK``): there it runs as jitted blocks of unrolled steps.
    """
    train_step = make_train_step(task, optimizer, schedule)
    steps = n_train // batch_size
    in_axes = (0, 0, 0, None, None, None, None)

    def run_steps(state, key, hp, epoch_idx, x, y, start, length, unroll):
        perm = jax.random.permutation(
            jax.random.fold_in(jax.random.fold_in(key, _SHUFFLE), epoch_idx), n_train
        )
        batches = perm[: steps * batch_size].reshape(steps, batch_size)
        batches = jax.lax.dynamic_slice_in_dim(batches, start, length)
        noise_key = jax.random.fold_in(key, _NOISE)

        def body(state, idx):
            rng = jax.random.fold_in(noise_key, state.step)
            batch = (x[idx], y[idx])
            if mesh is not None:
                batch = parallel.shard_batch(batch, mesh)  # this device's examples only
            return train_step(state, (_to_float(batch[0]), batch[1]), rng, hp)

        return jax.lax.scan(body, state, batches, unroll=unroll)

    @functools.cache
    def block_fn(length: int, unroll: bool):
        fn = functools.partial(run_steps, length=length, unroll=unroll)
        mapped = _single(fn, 3) if single else jax.vmap(fn, in_axes=in_axes)
        return jax.jit(mapped, donate_argnums=0)

    if not _loops_are_slow(task):
        whole = block_fn(steps, False)  # the whole epoch: one lax.scan, one program
        return lambda state, keys, hp, epoch_idx, x, y: whole(
            state, keys, hp, epoch_idx, x, y, jnp.int32(0)
        )

    def epoch_in_blocks(state, keys, hp, epoch_idx, x, y):
        losses = []
        for start in range(0, steps, _UNROLLED_BLOCK):
            length = min(_UNROLLED_BLOCK, steps - start)
            state, loss = block_fn(length, True)(state, keys, hp, epoch_idx, x, y, start)
            losses.append(loss)
        return state, jnp.concatenate(losses, axis=1)

    return epoch_in_blocks


# XLA:CPU runs a convolution inside a while loop (lax.scan) ~50x slower than outside one
# (measured: 2 steps of the CNN on 128 images, 60 s scanned vs 1.2 s unrolled). There the
# epoch runs as blocks of this many fully unrolled steps, one jitted call per block.
_UNROLLED_BLOCK = 8


def _loops_are_slow(task: Task) -> bool:
    return task.name == "cnn" and jax.default_backend() == "cpu"


@functools.lru_cache(maxsize=32)
def make_eval_fn(task: Task, eval_batch_size: int, single: bool = False, mesh: Mesh | None = None):
    """Jitted, vmapped ``evaluate(params, x, y, w) -> (mean loss[N], accuracy[N], penalty[N])``.

    ``x, y, w`` are padded to a multiple of ``eval_batch_size``; ``w`` is 1 on real examples.
    With a ``mesh`` each evaluation batch is split over its data axis.
    """

    def evaluate(params, x, y, w):
        k = x.shape[0] // eval_batch_size

        def body(carry, inp):
            xb, yb, wb = inp
            if mesh is not None and eval_batch_size % mesh.shape[parallel.DATA] == 0:
                xb, yb, wb = parallel.shard_batch((xb, yb, wb), mesh)
            loss, correct = task.evaluate(params, _to_float(xb), yb)
            return (carry[0] + jnp.sum(loss * wb), carry[1] + jnp.sum(correct * wb)), None

        split = lambda a: a.reshape(k, eval_batch_size, *a.shape[1:])
        zero = jnp.zeros((), jnp.float32)
        unroll = k if _loops_are_slow(task) else 1  # see _UNROLLED_BLOCK
        (loss, correct), _ = jax.lax.scan(
            body, (zero, zero), (split(x), split(y), split(w)), unroll=unroll
        )
        n = jnp.sum(w)
        return loss / n, correct / n, task.penalty(params)

    mapped = _single(evaluate, 1) if single else jax.vmap(evaluate, in_axes=(0, None, None, None))
    return jax.jit(mapped)


def config_keys(seed: int, config_ids) -> jax.Array:
    """Per-config RNG streams: ``fold_in(PRNGKey(seed), global config index)``."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(config_ids, jnp.uint32))


def initial_states(
    job: Job, hp: Mapping[str, jax.Array | np.ndarray], n: int, init_seeds=None
) -> TrainState:
    """Same initial parameters for every config (``init(PRNGKey(seed))``), own optimizer states.

    ``init_seeds`` (one integer per config) gives config ``i`` the parameters
    ``init(PRNGKey(init_seeds[i]))`` instead, for runs over several seeds.
    """
    if init_seeds is None:
        params = job.task.init(jax.random.PRNGKey(job.seed))
        stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (n, *p.shape)), params)
    else:
        seeds = jnp.asarray(init_seeds, jnp.uint32)
        stacked = jax.vmap(lambda s: job.task.init(jax.random.PRNGKey(s)))(seeds)
    init = functools.partial(init_state, job.task, job.optimizer, job.schedule)
    return jax.jit(jax.vmap(init))(stacked, hp)


# Only ``stop_after`` can make train_chunk return None: without it, callers get the curves.
@overload
def train_chunk(
    job: Job,
    data: DeviceData,
    hp: dict[str, np.ndarray],
    config_ids: np.ndarray,
    checkpointer: Checkpointer | None = ...,
    *,
    resume: bool = ...,
    stop_after: None = ...,
    desc: str = ...,
    mesh: Mesh | None = ...,
    init_seeds: np.ndarray | None = ...,
    on_epoch: Callable[[int, float], None] | None = ...,
) -> dict[str, np.ndarray]: ...


@overload
def train_chunk(
    job: Job,
    data: DeviceData,
    hp: dict[str, np.ndarray],
    config_ids: np.ndarray,
    checkpointer: Checkpointer | None = ...,
    *,
    resume: bool = ...,
    stop_after: int | None,
    desc: str = ...,
    mesh: Mesh | None = ...,
    init_seeds: np.ndarray | None = ...,
    on_epoch: Callable[[int, float], None] | None = ...,
) -> dict[str, np.ndarray] | None: ...


def train_chunk(
    job: Job,
    data: DeviceData,
    hp: dict[str, np.ndarray],
    config_ids: np.ndarray,
    checkpointer: Checkpointer | None = None,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    desc: str = "",
    mesh: Mesh | None = None,
    init_seeds: np.ndarray | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict[str, np.ndarray] | None:
    """Train the configs ``hp`` (arrays of equal length N) together; return their curves.

    Returns ``{'iter_loss': [N, epochs*steps], 'epoch_loss': [N, epochs], 'test_loss',
    'test_acc': [N, epochs], 'final_train_nll', 'final_train_loss', 'final_test_loss',
    'final_test_acc': [N], 'diverged': [N] bool}``. With ``resume`` it continues from the
    checkpointer's latest complete checkpoint. ``stop_after`` ends early after that epoch
    (returning ``None``), as if the run had been interrupted. ``mesh`` (data parallel):
    ``data`` must be replicated on it (:func:`experiments.parallel.replicate`); each
    minibatch is split over its devices. ``None``: one device, no sharding at all.
    ``init_seeds``: per-config parameter-init seeds (see :func:`initial_states`).
    ``on_epoch(epoch, seconds)`` is called after each finished epoch (1-based, its checkpoint
    started; it is written while the next epoch trains) with its wall time: training, test
    evaluation and the checkpoint's host copy (:mod:`experiments.ledger`).

    A config whose loss went non-finite has diverged for good (``diverged``); once such
    configs are an eighth of those still training (:func:`still_training`), they leave the
    vmapped program at the epoch's end, and their curves stay NaN from there on. The others
    train on unchanged, in a narrower program.
    """
    n = len(config_ids)
    hparams: dict[str, jax.Array] = {k: jnp.asarray(v) for k, v in hp.items()}
    single = n == 1
    epoch_fn = make_epoch_fn(
        job.task, job.optimizer, job.schedule, job.batch_size, data.n_train, single, mesh
    )
    eval_fn = make_eval_fn(job.task, data.eval_batch, single, mesh)
    steps = data.n_train // job.batch_size
    if steps < 1:
        raise ValueError(
            f"batch size {job.batch_size} is larger than the {data.n_train} training examples"
        )
    keys = config_keys(job.seed, config_ids)
    state = initial_states(job, hparams, n, init_seeds)
    nan = lambda *shape: np.full(shape, np.nan, np.float32)
    hist: dict[str, np.ndarray] = {
        "iter_loss": nan(n, job.epochs * steps),
        "epoch_loss": nan(n, job.epochs),
        "test_loss": nan(n, job.epochs),
        "test_acc": nan(n, job.epochs),
    }
    start = 0
    alive = np.ones(n, bool)  # the configs still in the program
    if resume and checkpointer is not None and (latest := checkpointer.latest()) is not None:
        restored = checkpointer.restore(latest, {"state": state, "hist": hist})
        state = jax.tree.map(jnp.asarray, restored["state"])
        hist, start = restored["hist"], latest
        for e in range(start):  # the same decisions as the uninterrupted run took
            alive = still_training(alive, hist["iter_loss"][:, : (e + 1) * steps])
    lanes = (state, keys, hparams)
    if not alive.all():
        lanes = _take(lanes, alive)
    if mesh is not None:
        lanes = parallel.replicate(lanes, mesh)
    state, keys, hparams = lanes
    bar = tqdm(
        total=job.epochs, initial=start, desc=desc or job.optimizer, unit="epoch", leave=False
    )
    try:
        for epoch in range(start, job.epochs):
            if not alive.any():
                break  # every config diverged: nothing left to train
            t_epoch = time.perf_counter()
            state, losses = epoch_fn(
                state, keys, hparams, jnp.int32(epoch), data.x_train, data.y_train
            )
            test_loss, test_acc, _ = eval_fn(state.params, data.x_test, data.y_test, data.w_test)
            losses = np.asarray(losses)
            hist["iter_loss"][alive, epoch * steps : (epoch + 1) * steps] = losses
            hist["epoch_loss"][alive, epoch] = losses.mean(axis=1)
            hist["test_loss"][alive, epoch] = np.asarray(test_loss)
            hist["test_acc"][alive, epoch] = np.asarray(test_acc)
            done = epoch + 1
            if checkpointer is not None and (
                done % job.checkpoint_every == 0 or done == job.epochs
            ):
                checkpointer.save(done, {"state": _full_width(state, alive), "hist": hist})
            kept = still_training(alive, hist["iter_loss"][:, : done * steps])
            if not np.array_equal(kept, alive) and kept.any():
                lanes = _take((state, keys, hparams), kept[alive])
                state, keys, hparams = lanes if mesh is None else parallel.replicate(lanes, mesh)
            alive = kept
            if on_epoch is not None:
                on_epoch(done, time.perf_counter() - t_epoch)
            finite = hist["epoch_loss"][:, epoch][np.isfinite(hist["epoch_loss"][:, epoch])]
            bar.set_postfix(best=f"{finite.min():.4g}" if finite.size else "nan")
            bar.update(1)
            if stop_after is not None and done >= stop_after and done < job.epochs:
                return None
    finally:
        bar.close()
    out = dict(hist)
    for key in ("final_train_nll", "final_train_loss", "final_test_loss", "final_test_acc"):
        out[key] = np.full(n, np.nan, np.float32)
    if alive.any():
        train_nll, _, penalty = eval_fn(
            state.params, data.x_train_eval, data.y_train_eval, data.w_train_eval
        )
        test_loss, test_acc, _ = eval_fn(state.params, data.x_test, data.y_test, data.w_test)
        out["final_train_nll"][alive] = np.asarray(train_nll)
        out["final_train_loss"][alive] = np.asarray(train_nll + penalty)
        out["final_test_loss"][alive] = np.asarray(test_loss)
        out["final_test_acc"][alive] = np.asarray(test_acc)
    all_finite = np.isfinite(out["iter_loss"]).all(axis=1) & np.isfinite(out["final_train_loss"])
    out["diverged"] = ~all_finite
    return out


def still_training(alive: np.ndarray, iter_loss: np.ndarray) -> np.ndarray:
    """The configs that train on after an epoch: ``alive`` without those whose loss so far
    (``iter_loss[N, iterations]``) holds a non-finite value, once they are at least an eighth
    of ``alive`` (so that a lone divergence late in a wide chunk costs no recompilation).

    A diverged config can never be a grid's best (:func:`experiments.results.best_index`),
    so the epochs it would spend on NaNs are spent on none.
    """
    dead = alive & ~np.isfinite(iter_loss).all(axis=1)
    return alive & ~dead if dead.sum() >= max(1, alive.sum() // 8) else alive


def _take(tree: Any, keep: np.ndarray) -> Any:
    """The rows ``keep`` (a boolean mask) of every array of ``tree``."""
    idx = jnp.asarray(np.flatnonzero(keep))
    return jax.tree.map(lambda a: jnp.take(jnp.asarray(a), idx, axis=0), tree)


def _full_width(tree: Any, alive: np.ndarray) -> Any:
    """``tree``'s rows (the configs ``alive``) in place among all configs, NaN or 0 elsewhere:
    a checkpoint keeps the chunk's shape whichever configs still train."""
    if alive.all():
        return tree
    idx = np.flatnonzero(alive)

    def widen(a):
        a = np.asarray(a)
        out = np.zeros((alive.size, *a.shape[1:]), a.dtype)
        if np.issubdtype(a.dtype, np.floating):
            out[:] = np.nan
        out[idx] = a
        return out

    return jax.tree.map(widen, tree)


def bytes_per_config(job: Job, activation_floats: int) -> int:
    """Rough memory of one config in a vmapped chunk: state, gradients, and activations."""
    hp: dict[str, jax.Array] = {}
    shapes = jax.eval_shape(
        lambda: init_state(
            job.task, job.optimizer, job.schedule, job.task.init(jax.random.PRNGKey(0)), hp
        )
    )
    state_bytes = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(shapes))
    return 3 * state_bytes + 4 * job.batch_size * activation_floats * 3
