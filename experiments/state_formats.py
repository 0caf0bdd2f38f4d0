"""Optimizer-state and parameter formats on the paper's MNIST MLP (Figure 2's two panels).

``python -m experiments.state_formats [--quick] [--out DIR] [--data-dir DIR]`` trains the
784-1000-1000-10 ReLU network with Adam six ways, from the same initialisation and the
same minibatches, and draws the training cost of each in one figure per panel:

* ``float32``: float32 parameters and moments (8 bytes of state per parameter);
* ``bfloat16 state``: moments stored in bfloat16 (4 B/param), math in float32;
* ``int8 state``: 8-bit block-wise moments (Dettmers et al., ICLR 2022; about 2 B/param);
* ``bf16 params``: bfloat16 parameters, updates added with round-to-nearest;
* ``bf16 params + SR``: bfloat16 parameters with stochastic rounding
  (:func:`adamjax.rounding.stochastic_rounding`);
* ``bf16 params + Kahan``: bfloat16 parameters with a bfloat16 compensation buffer
  (:func:`adamjax.kahan_summation`; 2 more bytes of state per parameter).

The run directory gets ``results.json`` (per format and panel: the per-epoch training cost,
the final cost, the state's bytes per parameter and the relative gap to float32),
``curves.csv`` and ``state_formats.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import adamjax
from adamjax.rounding import stochastic_rounding
from experiments import data as data_lib
from experiments.tasks import make_task

__all__ = ["FORMATS", "PANELS", "main", "run"]

FORMATS = (
    "float32",
    "bfloat16 state",
    "int8 state",
    "bf16 params",
    "bf16 params + SR",
    "bf16 params + Kahan",
)
PANELS = {
    "dropout": dict(input_dropout=0.2, dropout=0.5),  # Figure 2(a)
    "deterministic": dict(weight_decay=1e-4),  # Figure 2(b)
}


def _optimizer(fmt: str, lr: float, seed: int) -> optax.GradientTransformation:
    if fmt == "bfloat16 state":
        return adamjax.adam(lr, state_dtype=jnp.bfloat16)
    if fmt == "int8 state":
        return adamjax.adam(lr, state_dtype="int8")
    if fmt == "bf16 params + SR":
        return stochastic_rounding(adamjax.adam(lr), seed)
    if fmt == "bf16 params + Kahan":
        return adamjax.kahan_summation(adamjax.adam(lr))
    return adamjax.adam(lr)


def _state_bytes_per_param(state: Any, params: Any) -> float:
    n = sum(int(np.prod(jnp.shape(p))) for p in jax.tree.leaves(params))
    return sum(x.nbytes for x in jax.tree.leaves(state) if jnp.ndim(x) > 0) / n


def train_one(fmt: str, panel: str, x, y, *, epochs: int, lr: float, seed: int = 0) -> dict:
    """Train one format on one panel; the per-epoch training cost over the training set."""
    task = make_task("mlp", **PANELS[panel])
    params = task.init(jax.random.key(seed))
    if fmt.startswith("bf16 params"):
        params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    opt = _optimizer(fmt, lr, seed)
    state = opt.init(params)
    batch = 128
    steps = len(x) // batch
    rng = np.random.default_rng(seed)

    @jax.jit
    def epoch(params, state, order, key):
        def body(carry, idx):
            p, s, k = carry
            k, sub = jax.random.split(k)
            g = jax.grad(task.cost)(p, x[idx], y[idx], sub, True)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s, k), None

        (p, s, _), _ = jax.lax.scan(body, (params, state, key), order)
        return p, s

    @jax.jit
    def full_cost(params):
        p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
        nll, _ = task.evaluate(p32, x, y)
        return nll.mean() + task.penalty(p32)

    curve = [float(full_cost(params))]
    key = jax.random.key(seed + 1)
    for _ in range(epochs):
        order = rng.permutation(len(x))[: steps * batch].reshape(steps, batch)
        key, sub = jax.random.split(key)
        params, state = epoch(params, state, jnp.asarray(order), sub)
        curve.append(float(full_cost(params)))
    return {
        "format": fmt,
        "panel": panel,
        "learning_rate": lr,
        "epoch_cost": curve,
        "final_cost": curve[-1],
        "state_bytes_per_param": _state_bytes_per_param(state, params),
    }


def run(out: Path, *, quick: bool, data_dir: Path | None, lr: float, epochs: int | None) -> dict:
    """Train every format on both panels and write results.json, curves.csv, the figure."""
    xtr, ytr = data_lib.load("mnist", "train", data_dir)
    n = 6400 if quick else len(xtr)
    epochs = epochs or (10 if quick else 50)
    x = jnp.asarray(xtr[:n].reshape(n, -1).astype(np.float32) / 255)
    y = jnp.asarray(ytr[:n].astype(np.int32))
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    jobs = [(p, f) for p in PANELS for f in FORMATS]
    t0 = time.perf_counter()
    for panel, fmt in tqdm(jobs, desc="state formats", unit="run"):
        results.append(train_one(fmt, panel, x, y, epochs=epochs, lr=lr))
    for r in results:
        ref = next(q for q in results if q["panel"] == r["panel"] and q["format"] == "float32")
        r["relative_to_float32"] = r["final_cost"] / ref["final_cost"] - 1
    report = {
        "command": f"python -m experiments.state_formats{' --quick' if quick else ''}",
        "train_examples": n,
        "epochs": epochs,
        "batch_size": 128,
        "optimizer": f"adam(lr={lr})",
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "runs": results,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["panel", "format", "epoch", "train_cost"])
        for r in results:
            for e, c in enumerate(r["epoch_cost"]):
                w.writerow([r["panel"], r["format"], e, f"{c:.6g}"])
    _plot(report, out / "state_formats.png")
    return report


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    titles = {"dropout": "(a) MLP with dropout", "deterministic": "(b) deterministic, L2"}
    for ax, panel in zip(axes, PANELS, strict=True):
        for r in (q for q in report["runs"] if q["panel"] == panel):
            label = f"{r['format']} ({r['state_bytes_per_param']:.1f} B/param state)"
            ax.plot(r["epoch_cost"], label=label, lw=1.5)
        ax.set_yscale("log")
        ax.set_xlabel("epochs")
        ax.set_ylabel("training cost")
        ax.set_title(titles[panel])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Adam state and parameter formats, MNIST MLP 784-1000-1000-10 "
        f"({report['train_examples']} images, {report['optimizer']})"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.state_formats",
        description="Adam with float32 / bfloat16 / 8-bit state and bf16 parameters "
        "(round-to-nearest vs stochastic rounding vs Kahan summation) on the Figure-2 MLP.",
    )
    p.add_argument("--quick", action="store_true", help="6,400 images, 10 epochs")
    p.add_argument("--out", type=Path, default=Path("runs/state_formats"))
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding mnist/")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--epochs", type=int, default=None)
    args = p.parse_args(argv)
    try:
        report = run(
            args.out, quick=args.quick, data_dir=args.data_dir, lr=args.lr, epochs=args.epochs
        )
    except data_lib.DataError as e:
        print(f"error: {e}")
        return 2
    for r in report["runs"]:
        print(
            f"{r['panel']:13s} {r['format']:19s} final cost {r['final_cost']:.4f} "
            f"({100 * r['relative_to_float32']:+.1f}% vs float32), "
            f"state {r['state_bytes_per_param']:.2f} B/param"
        )
    print(f"results in {args.out}/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
