"""What the paper-scale experiments' training step costs next to the network it trains.

Figure 2's multilayer network (784-1000-1000-10, batch 128) trained the way
``experiments`` trains it (``make_epoch_fn``: one jitted ``lax.scan`` over an epoch's
minibatches, one config), against a *bare* step of the same network in the same kind of scan:
forward, backward and a plain SGD update, no optimizer state, no dropout, no bookkeeping. The
ratio is what the experiment's machinery (optimizer, dropout masks, L2, loss history) adds to
the network's own cost, for each of Figure 2's five optimizers in both panels (dropout;
deterministic with L2). A second group times the dropout masks alone: :func:`keep_mask`
(bit fields of one threefry draw) against ``jax.random.bernoulli`` (one 32-bit word per unit,
what ``flax.linen.Dropout`` draws), for the network's three masks.

Inputs are synthetic uint8 images with MNIST's shapes: the time does not depend on the pixels.
``python -m benchmarks.experiment_step`` prints the rows; ``benchmarks/run.py`` includes them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import interleaved

BATCH = 128
N_TRAIN = 6400  # 50 steps an epoch
STEPS = N_TRAIN // BATCH
VAE_GRID = 12  # Figure 4's continued curves: 2 bias corrections x 2 b1 x 3 b2


def _data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (N_TRAIN, 784), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, N_TRAIN).astype(np.int32))
    return x, y


def _bare(task, x, y) -> Callable[[], None]:
    """One epoch of forward + backward + SGD of ``task``'s network, in a jitted scan.

    No dropout (``train=False``); the VAE still draws its one latent sample a step.
    """

    def epoch(params, key, x, y):
        perm = jax.random.permutation(key, N_TRAIN).reshape(STEPS, BATCH)

        def body(p, idx):
            xb, yb = x[idx].astype(jnp.float32) / 255.0, y[idx]
            rng = jax.random.fold_in(key, idx[0])
            loss, g = jax.value_and_grad(task.cost)(p, xb, yb, rng, False)
            return jax.tree.map(lambda a, b: a - 1e-3 * b, p, g), loss

        return jax.lax.scan(body, params, perm)

    # The data are arguments, as in the experiments' epoch: closed over, they would be
    # constants folded into the program, which XLA:CPU gathers from more slowly.
    fn = jax.jit(epoch, donate_argnums=0)
    state = [task.init(jax.random.PRNGKey(0))]

    def run():
        state[0], losses = fn(state[0], jax.random.PRNGKey(1), x, y)
        losses.block_until_ready()

    return run


def _experiment(task, optimizer: str, x, y, configs: int = 1) -> Callable[[], None]:
    """One epoch as the experiment runner trains it: ``configs`` configs, vmapped if > 1.

    Figure 4's configs differ in ``b1``, ``b2`` and bias correction as its grid does.
    """
    from experiments import runner, train

    single = configs == 1
    epoch = train.make_epoch_fn(task, optimizer, "constant", BATCH, N_TRAIN, single, None)
    # Every hyperparameter an array, defaults filled in, as the runner's grids pass them.
    grid = runner.optimizer_grid(optimizer, {"learning_rate": 1e-3})
    hp = {k: jnp.repeat(jnp.asarray(v), configs) for k, v in grid.arrays([0]).items()}
    if task.name == "vae":
        i = np.arange(configs)
        hp["b1"] = jnp.asarray(np.where(i % 2 == 0, 0.9, 0.0))
        hp["b2"] = jnp.asarray(np.array([0.99, 0.999, 0.9999])[i % 3])
        hp["bias_correction"] = jnp.asarray(i % 4 < 2)
    job = train.Job(task, optimizer, "constant", BATCH, 1, 0)
    state = [train.initial_states(job, hp, configs)]
    keys = train.config_keys(0, list(range(configs)))

    def run():
        state[0], losses = epoch(state[0], keys, hp, jnp.int32(0), x, y)
        losses.block_until_ready()

    return run


def _masks(draw) -> Callable[[], None]:
    """The MLP's three dropout masks (input 0.2, two hidden layers 0.5), 50 steps, jitted."""
    shapes = [(0.2, (BATCH, 784)), (0.5, (BATCH, 1000)), (0.5, (BATCH, 1000))]

    @jax.jit
    def fifty(key):
        def body(count, k):
            ks = jax.random.split(k, len(shapes))
            kept = [
                draw(kk, rate, shape).sum() for kk, (rate, shape) in zip(ks, shapes, strict=True)
            ]
            return count + sum(kept), None

        return jax.lax.scan(body, jnp.int32(0), jax.random.split(key, STEPS))[0]

    def run():
        fifty(jax.random.PRNGKey(0)).block_until_ready()

    return run


def run(repeats: int = 7) -> dict:
    """Seconds per epoch of each case (median of ``repeats`` interleaved rounds)."""
    from experiments.config import load_config
    from experiments.models import keep_mask
    from experiments.tasks import make_task

    x, y = _data()
    plain = make_task("mlp")
    dropout = make_task("mlp", dropout=0.5, input_dropout=0.2)
    l2 = make_task("mlp", weight_decay=1e-4)
    step_cases = {"bare fwd+bwd+SGD": _bare(plain, x, y)}
    fig2_optimizers = load_config("fig2_mlp").optimizers  # the five the shipped config trains
    for panel, task in (("(a) dropout", dropout), ("(b) L2", l2)):
        for opt in fig2_optimizers:
            step_cases[f"fig2 {panel}, {opt}"] = _experiment(task, opt, x, y)
    bernoulli = lambda k, rate, shape: jax.random.bernoulli(k, 1.0 - rate, shape)
    mask_cases = {
        "jax.random.bernoulli": _masks(bernoulli),
        "keep_mask": _masks(keep_mask),
    }
    vae = make_task("vae")
    vae_cases = {
        "bare fwd+bwd+SGD": _bare(vae, x, y),
        "fig4 adam, 1 config": _experiment(vae, "adam", x, y),
        f"fig4 adam, {VAE_GRID} configs vmapped": _experiment(vae, "adam", x, y, VAE_GRID),
    }
    return {
        "steps_per_epoch": STEPS,
        "step_seconds": interleaved(step_cases, repeats=repeats, warmup=1),
        "vae_seconds": interleaved(vae_cases, repeats=repeats, warmup=1),
        "mask_seconds": interleaved(mask_cases, repeats=repeats, warmup=1),
    }


def rows(result: dict) -> list[tuple[str, str, float, str, str]]:
    """``(group, case, seconds per step, ratio, what)`` rows of :func:`run`'s result."""
    n = result["steps_per_epoch"]
    st, mt = result["step_seconds"], result["mask_seconds"]
    bare = st["bare fwd+bwd+SGD"]
    out = [
        (
            "experiment step (MLP)",
            case,
            s / n,
            f"{s / bare:4.2f}x the bare step",
            "784-1000-1000-10, batch 128, one config, per step",
        )
        for case, s in st.items()
    ]
    vt = result["vae_seconds"]
    bare_vae = vt["bare fwd+bwd+SGD"]
    for case, s in vt.items():
        per_config = VAE_GRID if case.endswith("vmapped") else 1
        out.append(
            (
                "experiment step (VAE)",
                case,
                s / n / per_config,
                f"{s / per_config / bare_vae:4.2f}x the bare step",
                "784-500-50 VAE, batch 128, per step and config",
            )
        )
    ref = mt["jax.random.bernoulli"]
    out += [
        (
            "dropout masks (MLP)",
            case,
            s / n,
            f"{s / ref:4.2f}x bernoulli's time",
            "masks 128x784 @0.2 + 2 x 128x1000 @0.5, per step",
        )
        for case, s in mt.items()
    ]
    return out


def main() -> None:
    """Print the rows (3 repeats)."""
    for group, case, s, ratio, what in rows(run(repeats=3)):
        print(f"  {group:<24} {case:<32} {1e3 * s:8.3f} ms  {ratio:<24} {what}")


if __name__ == "__main__":
    main()
