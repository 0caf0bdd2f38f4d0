"""experiments.parallel: data-parallel MNIST MLP and device-spread grids, 8 simulated devices.

As in ``tests/test_sharding.py``, each multi-device case (``_case_*``) runs in a child Python
process started with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (JAX fixes its
device count at start-up), or here when this process already has 8 devices.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adamjax
from adamjax import sharding
from experiments import parallel
from tests import mnist, multidevice

N = 8
BATCH = 128
HIDDEN = 128
STEPS = 12


def on_devices(case: str, devices: int = N, *args: str) -> str:
    """Run ``case(*args)`` from this file with ``devices`` CPU devices; return its output."""
    return multidevice.run_case(__file__, globals(), case, devices, *args)


# --------------------------------------------------------------------------------------
# An MNIST MLP epoch (784-128-128-10 with dropout, batch 128), single device vs 8.
# --------------------------------------------------------------------------------------


def uniform_noise_digits(n: int):
    """Synthetic stand-in for MNIST: uniform noise pixels, the label the brightest of the
    first ten. Every pixel varies, so unlike MNIST's border no gradient is exactly zero."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
    return x.astype(np.float32) / 255.0, x[:, :10].argmax(axis=1).astype(np.int32)


def mnist_subset(n: int):
    """``n`` MNIST training images as float32 ``[n, 784]`` and labels, or the synthetic
    stand-in where MNIST is not available (not under ``ADAMJAX_REQUIRE_DATA=1``)."""
    x, y, source = mnist.train_subset(n, uniform_noise_digits)
    print(f"data: {source}")
    return x, y


def mlp_task():
    from experiments.models import MLP

    model = MLP(hidden=HIDDEN, dropout=0.2)
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]

    def loss_fn(params, x, y, rng):
        logits = model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, loss_fn


def make_step(opt, loss_fn):
    """The pure train step the experiments use: ``(state, batch, rng) -> (state, metrics)``."""

    def step(state, batch, rng):
        params, opt_state = state
        x, y = batch
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, rng)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (adamjax.apply_updates(params, updates), opt_state), {"loss": loss}

    return step


def run_epoch(step, state, x, y, key, place=lambda b: b):
    losses = []
    for i in range(STEPS):
        batch = place((x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]))
        state, metrics = step(state, batch, jax.random.fold_in(key, i))
        losses.append(float(metrics["loss"]))
    return state, np.asarray(losses)


U32 = 2.0**-24  # float32 unit roundoff


def reorder_tolerance(steps: int, terms: int) -> float:
    """Relative difference two runs may show when they only sum in a different order.

    Derivation (float32, unit roundoff ``u = 2^-24``):

    - A sum of ``n`` terms, in any order, is within ``gamma_n ~ n u`` of the exact sum,
      relative to the sum of the terms' magnitudes (Higham, *Accuracy and Stability of
      Numerical Algorithms*, 2nd ed., Sec. 4.2). A gradient that is a mean over ``n``
      examples (split over devices or not) is therefore known to ``n u`` relative.
    - Adam's step ``m_hat / (sqrt(v_hat) + eps)`` turns a relative error ``e`` of the
      gradient into at most ``e + e/2`` (``m`` is linear in ``g``, ``sqrt(v)`` goes as
      ``|g|``); ``v`` itself (squares) carries ``2 e``. So a factor 2 covers the moments and
      the step.
    - Earlier steps' errors stay in the parameters and moments (carried with weight <= 1),
      so after ``K`` steps the bound is ``K`` times one step's.

    Gives ``2 K n u``. Entries whose gradient nearly cancels (``sum |terms| >> |sum|``: pixels
    that are almost never on) have a larger *relative* error, but Adam's normalisation caps
    their step at the step size, and a norm over all entries weighs them by their size, so
    the norm-wise comparison below is held to this bound on any data set.
    """
    return 2.0 * steps * terms * U32


def relative_difference(got, want, start=None) -> float:
    """``||got - want|| / ||want - start||`` over all leaves (``start`` 0 if not given)."""
    flat = lambda t: np.concatenate(
        [np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(t)]
    )
    g, w = flat(got), flat(want)
    s = np.zeros_like(w) if start is None else flat(start)
    return float(np.linalg.norm(g - w) / np.linalg.norm(w - s))


def assert_same_training(start, got, want, what, steps=STEPS, terms=BATCH):
    """``got`` and ``want`` (``(params, opt_state)`` after ``steps`` steps from ``start``
    params, gradients summed over ``terms`` examples in different orders) agree to
    :func:`reorder_tolerance`: the parameters' change over the run, and the moments."""
    tol = reorder_tolerance(steps, terms)
    rel_params = relative_difference(got[0], want[0], start)
    rel_state = relative_difference(got[1], want[1])
    print(f"{what}: relative difference: params' change {rel_params:.2e}, ", end="")
    print(f"optimizer state {rel_state:.2e}; tolerance {tol:.2e}")
    assert rel_params < tol, (what, rel_params, tol)
    assert rel_state < tol, (what, rel_state, tol)


def assert_same_losses(got, want, what, steps=STEPS, terms=BATCH):
    """Per-step losses (a mean over ``terms`` examples, at parameters that differ by
    :func:`reorder_tolerance`) agree to that same relative bound."""
    tol = reorder_tolerance(steps, terms)
    rel = np.max(np.abs(np.asarray(got) - np.asarray(want)) / np.abs(np.asarray(want)))
    print(f"{what}: largest relative difference of a loss {rel:.2e}; tolerance {tol:.2e}")
    assert rel < tol, (what, rel, tol)


def _case_data_parallel_epoch():
    x, y = mnist_subset(STEPS * BATCH)
    params, loss_fn = mlp_task()
    opt = adamjax.adam(1e-3)
    step = make_step(opt, loss_fn)
    key = jax.random.key(42)

    # Single device: the step jitted on device 0.
    single_state, single_losses = run_epoch(jax.jit(step), (params, opt.init(params)), x, y, key)

    # 8 devices: batch split 16 examples a device, state replicated.
    mesh = parallel.make_mesh(N)
    dp_step = parallel.data_parallel(step, mesh)
    state = parallel.replicate((params, opt.init(params)), mesh)
    shard = lambda b: parallel.shard_batch(b, mesh)
    first = shard((x[:BATCH], y[:BATCH]))
    assert first[0].addressable_shards[0].data.shape == (BATCH // N, 784)
    dp_state, dp_losses = run_epoch(dp_step, state, x, y, key, shard)

    for leaf in jax.tree.leaves(dp_state):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == N
    assert_same_losses(dp_losses, single_losses, "data parallel")
    assert_same_training(params, dp_state, single_state, "data parallel")
    assert dp_losses[-1] < dp_losses[0]  # it trains

    # The same epoch with ZeRO-1 optimizer state (moments split 8 ways).
    zopt = sharding.zero1(opt, mesh)
    zstep = parallel.data_parallel(make_step(zopt, loss_fn), mesh)
    zstate = (parallel.replicate(params, mesh), zopt.init(parallel.replicate(params, mesh)))
    z_final, z_losses = run_epoch(zstep, zstate, x, y, key, shard)
    assert_same_losses(z_losses, single_losses, "data parallel + ZeRO-1")
    assert_same_training(params, z_final, single_state, "data parallel + ZeRO-1")
    kernel_moments = [a for a in jax.tree.leaves(z_final[1]) if a.shape == (784, HIDDEN)]
    assert kernel_moments
    for a in kernel_moments:  # still split after the epoch
        assert a.addressable_shards[0].data.shape == (784 // N, HIDDEN)


def test_data_parallel_mlp_epoch_matches_single_device():
    print(on_devices("_case_data_parallel_epoch"))


def _case_scanned_epoch_on_device_data():
    """The experiments' layout: dataset on device, batches drawn by index inside one jit."""
    x, y = mnist_subset(STEPS * BATCH)
    params, loss_fn = mlp_task()
    opt = adamjax.adam(1e-3)
    step = make_step(opt, loss_fn)
    mesh = parallel.make_mesh(N)

    def epoch(state, x, y, key, mesh=None):
        perm = jax.random.permutation(key, x.shape[0]).reshape(STEPS, BATCH)

        def body(state, idx):
            batch = (x[idx], y[idx])
            if mesh is not None:
                batch = parallel.shard_batch(batch, mesh)
            return step(state, batch, jax.random.fold_in(key, idx[0]))

        return jax.lax.scan(body, state, perm)

    key = jax.random.key(3)
    ref_state, ref_losses = jax.jit(epoch)((params, opt.init(params)), x, y, key)
    dp = jax.jit(lambda s, x, y, k: epoch(s, x, y, k, mesh))
    state, xs, ys = parallel.replicate(((params, opt.init(params)), x, y), mesh)
    out_state, losses = dp(state, xs, ys, key)
    hlo = dp.lower(state, xs, ys, key).compile().as_text()
    assert re.search(r"\ball-reduce(?:-start)?\(", hlo)  # gradients are summed over devices
    assert_same_losses(losses["loss"], ref_losses["loss"], "scanned epoch")
    assert_same_training(params, out_state, ref_state, "scanned epoch")


def test_scanned_epoch_with_on_device_dataset_matches_single_device():
    print(on_devices("_case_scanned_epoch_on_device_data"))


# --------------------------------------------------------------------------------------
# A vmapped Adam grid with its config axis over 8 devices.
# --------------------------------------------------------------------------------------


def grid_train(hp, x, y):
    """Logistic regression trained by Adam with this config's ``lr``, ``b1`` for 20 steps."""
    params = {"w": jnp.zeros((x.shape[1], 10)), "b": jnp.zeros(10)}
    opt = adamjax.adam(hp["lr"], hp["b1"])

    def loss_fn(p):
        logits = x @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def body(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = opt.update(g, s, p)
        return (adamjax.apply_updates(p, u), s), loss

    (p, _), losses = jax.lax.scan(body, (params, opt.init(params)), None, length=20)
    return {"losses": losses, "w": p["w"]}


def _case_grid_over_devices():
    x, y = mnist_subset(256)
    mesh = parallel.make_mesh(N)
    # The reordering bound (reorder_tolerance) holds for training that is not chaotic. Adam's
    # first steps are about lr * sign(g) per weight, so one step can move a logit by up to
    # lr * ||x||_1; much above 1 per step, logistic regression oscillates and float32
    # differences grow exponentially, past any bound (seen: 3% apart at lr 0.037 on inputs
    # with ||x||_1 ~ 390). The grid spans three decades up to lr = 1 / max ||x||_1.
    lr_max = 1.0 / float(np.abs(x).sum(axis=1).max())
    for g in (8, 12):
        lr = np.geomspace(lr_max / 1000, lr_max, g).astype(np.float32)
        b1 = np.where(np.arange(g) % 2 == 0, 0.0, 0.9).astype(np.float32)
        hp, real = parallel.pad_configs({"lr": lr, "b1": b1}, N)
        assert real == g and hp["lr"].shape[0] % N == 0
        spread = parallel.grid_over_devices(grid_train, mesh, in_axes=(0, None, None))
        out = spread(parallel.shard_configs(hp, mesh), x, y)
        per_device = hp["lr"].shape[0] // N
        assert out["losses"].addressable_shards[0].data.shape == (per_device, 20)
        assert len(out["losses"].sharding.device_set) == N
        # Unsharded reference: the same grid on one device, vmapped a chunk of
        # `per_device` configs at a time (the shape each device of the mesh computes; a
        # whole-grid vmap lets XLA pick other kernels, with other float32 rounding).
        one = jax.jit(jax.vmap(grid_train, in_axes=(0, None, None)))  # numpy in: device 0
        host_hp = jax.tree.map(np.asarray, hp)
        k = per_device
        chunks = [
            one({name: v[i : i + k] for name, v in host_hp.items()}, x, y)
            for i in range(0, len(host_hp["lr"]), k)
        ]
        ref = {name: np.concatenate([c[name] for c in chunks])[:real] for name in chunks[0]}
        got = {name: np.asarray(v)[:real] for name, v in out.items()}
        # Each config: 20 Adam steps, gradients summed over the 256 examples; the weights'
        # change from 0 and the loss curves within the reordering bound.
        tol = reorder_tolerance(20, x.shape[0])
        for i in range(real):
            rel_w = relative_difference(got["w"][i], ref["w"][i])
            rel_loss = np.max(np.abs(got["losses"][i] - ref["losses"][i]) / ref["losses"][i])
            print(f"grid {g} config {i}: relative difference w {rel_w:.2e}, loss {rel_loss:.2e}")
            assert rel_w < tol and rel_loss < tol, (i, rel_w, rel_loss, tol)
    # The configs are independent: the compiled grid communicates nothing.
    hlo = (
        jax.jit(
            jax.vmap(grid_train, in_axes=(0, None, None)),
            in_shardings=(
                NamedSharding(mesh, P("data")),
                NamedSharding(mesh, P()),
                NamedSharding(mesh, P()),
            ),
        )
        .lower({"lr": lr[:8], "b1": b1[:8]}, x, y)
        .compile()
        .as_text()
    )
    assert not re.search(r"\ball-(reduce|gather|to-all)(?:-start)?\(", hlo)


def test_grid_over_devices_equals_unsharded_vmap():
    print(on_devices("_case_grid_over_devices"))


# --------------------------------------------------------------------------------------
# In-process checks (one device).
# --------------------------------------------------------------------------------------


def test_make_mesh_explains_missing_devices():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        parallel.make_mesh(jax.device_count() + 1)
    mesh = parallel.make_mesh(0)
    assert mesh.shape["data"] == jax.device_count()


def test_shard_batch_rejects_indivisible_batch():
    mesh = jax.make_mesh((1,), ("data",))
    assert parallel.shard_batch(np.ones((3, 2)), mesh)[0].shape == (2,)

    class Fake:
        shape = {"data": 8}

    with pytest.raises(ValueError, match="divisible by 8"):
        parallel.shard_batch(np.ones((12, 2)), Fake())  # type: ignore[arg-type]


def test_pad_configs_repeats_the_last_config():
    padded, g = parallel.pad_configs({"lr": np.arange(5.0)}, 4)
    assert g == 5
    np.testing.assert_array_equal(np.asarray(padded["lr"]), [0, 1, 2, 3, 4, 4, 4, 4])
    same, g = parallel.pad_configs({"lr": np.arange(8.0)}, 4)
    assert g == 8 and same["lr"].shape == (8,)


def test_devices_flag():
    parser = parallel.add_device_arguments(argparse.ArgumentParser())
    assert parser.parse_args(["--devices", "8"]).devices == 8
    assert parser.parse_args([]).devices == 1


# --------------------------------------------------------------------------------------
# The experiments CLI with --devices 4 (data parallel) vs --devices 1, on real MNIST.
# --------------------------------------------------------------------------------------

TINY_FIG1 = """
description = "fig1_logreg, tiny: data-parallel check"
model = "logreg"
dataset = "mnist"
epochs = 2
batch_size = 128
schedule = "inverse_sqrt"
weight_decay = 1e-4
train_subset = 1024
test_subset = 512
eval_batch_size = 256
seed = 0

[optimizers.adam]
learning_rate = [1e-3, 1e-2]

[optimizers.sgd_nesterov]
learning_rate = 0.1
"""


def _case_cli_devices_4_matches_1(data_dir: str):
    import json
    import tempfile

    from experiments import cli

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "tiny_fig1.toml"
        cfg.write_text(TINY_FIG1)
        runs = {}
        for d in (1, 4):
            out = Path(tmp) / f"d{d}"
            argv = [str(cfg), "--out", str(out), "--devices", str(d), "--data-dir", data_dir]
            assert cli.main(argv) == 0
            runs[d] = json.loads((out / "results.json").read_text())
    assert runs[1]["devices"] == 1 and runs[4]["devices"] == 4
    for opt, entry in runs[1]["variants"]["main"].items():
        other = runs[4]["variants"]["main"][opt]
        for p1, p4 in zip(entry["grid"], other["grid"], strict=True):
            assert p1["hparams"] == p4["hparams"]
            print(opt, p1["hparams"], p1["epoch_train_loss"], p4["epoch_train_loss"])
            # 2 epochs of 1024 // 128 = 8 steps, each gradient a mean over 128 examples.
            tol = reorder_tolerance(2 * 8, 128)
            np.testing.assert_allclose(p4["epoch_train_loss"], p1["epoch_train_loss"], rtol=tol)
            np.testing.assert_allclose(p4["final_train_loss"], p1["final_train_loss"], rtol=tol)
            assert abs(p4["test_accuracy"] - p1["test_accuracy"]) <= 2 / 512


def test_cli_devices_4_gives_the_single_device_training_loss(data_dir):
    print(on_devices("_case_cli_devices_4_matches_1", 4, str(data_dir)))


def test_parallel_quick_run_equals_a_plain_optax_loop(data_dir):
    """``python -m experiments.parallel`` (adamjax.flax.TrainState, one device) gives the
    per-epoch mean training loss of a plain loop written here with ``optax.adam`` and the
    same model, initialization and shuffles, exactly: the forward and backward passes are the
    same operations, and the fused Adam step equals update + apply_updates bit for bit on
    leaves of two elements or more (here all: the biases have ``hidden`` and 10)."""
    from experiments import data, models

    examples, hidden, epochs, bs = 512, 32, 2, 128
    argv = ["--examples", str(examples), "--hidden", str(hidden), "--epochs", str(epochs)]
    out = parallel.main([*argv, "--data-dir", str(data_dir)])

    images, labels = data.load("mnist", "train", str(data_dir))
    x = jnp.asarray(images[:examples].reshape(examples, -1))
    y = jnp.asarray(labels[:examples].astype(np.int32))
    model = models.MLP(hidden=hidden)
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    opt = optax.adam(1e-3)
    state = (params, opt.init(params))

    def loss_fn(p, xb, yb):
        logits = model.apply({"params": p}, xb.astype(jnp.float32) / 255.0)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def epoch(state, key):
        def body(state, idx):
            p, s = state
            loss, g = jax.value_and_grad(loss_fn)(p, x[idx], y[idx])
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        perm = jax.random.permutation(key, examples).reshape(-1, bs)
        return jax.lax.scan(body, state, perm)

    for e in range(epochs):
        state, losses = epoch(state, jax.random.key(e))
        assert out[f"epoch{e + 1}_loss"] == float(jnp.mean(losses))
