"""Time a learning-rate grid trained as one vmapped program against the same runs one by one.

``python -m experiments.grid_timing [--points 16] [--model logreg] [--epochs 2] [--train 6400]``

Both paths run in this process on the same data for the same steps, after a warm-up that
compiles them, so the numbers compare execution, not compilation (compile times are printed
too). Also prints the largest difference between the vmapped and the separate curves.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from adamjax import grid as gridlib
from experiments import batching
from experiments.tasks import make_task
from experiments.train import Job, train_chunk

__all__ = ["time_grid", "main"]


def time_grid(
    model: str = "logreg",
    points: int = 16,
    epochs: int = 2,
    train: int = 6400,
    optimizer: str = "adam",
):
    """Return a dict of wall times (seconds) for the vmapped grid and the sequential runs."""
    data = batching.load_device_data("mnist", train_subset=train, test_subset=1000)
    task = make_task(model, weight_decay=1e-4)
    g = gridlib.expand({"learning_rate": np.logspace(-4, -1, points).tolist()})
    hp = g.arrays()
    ids = np.arange(points)
    job = Job(task, optimizer, "constant", 128, epochs, 0)
    warm = Job(task, optimizer, "constant", 128, 1, 0)

    t = time.perf_counter()
    train_chunk(warm, data, hp, ids, desc="compile vmapped")
    compile_vmapped = time.perf_counter() - t
    t = time.perf_counter()
    train_chunk(warm, data, {k: v[:1] for k, v in hp.items()}, ids[:1], desc="compile single")
    compile_single = time.perf_counter() - t

    t = time.perf_counter()
    together = train_chunk(job, data, hp, ids, desc="vmapped")
    vmapped = time.perf_counter() - t
    t = time.perf_counter()
    separate = [
        train_chunk(
            job, data, {k: v[i : i + 1] for k, v in hp.items()}, ids[i : i + 1], desc=f"run {i}"
        )
        for i in range(points)
    ]
    sequential = time.perf_counter() - t
    diff = max(
        float(np.nanmax(np.abs(together["epoch_loss"][i] - s["epoch_loss"][0])))
        for i, s in enumerate(separate)
    )
    return {
        "model": model,
        "optimizer": optimizer,
        "points": points,
        "epochs": epochs,
        "train_examples": train,
        "steps_per_run": epochs * (train // 128),
        "vmapped_s": round(vmapped, 2),
        "sequential_s": round(sequential, 2),
        "speedup": round(sequential / vmapped, 2),
        "compile_vmapped_s": round(compile_vmapped, 2),
        "compile_single_s": round(compile_single, 2),
        "max_abs_epoch_loss_diff": diff,
    }


def main(argv=None) -> int:
    """Command-line entry point; prints the timings as JSON."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.grid_timing", description=__doc__.split("\n")[0]
    )
    p.add_argument("--points", type=int, default=16)
    p.add_argument("--model", default="logreg", choices=("logreg", "mlp", "vae"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train", type=int, default=6400, help="training examples")
    args = p.parse_args(argv)
    print(json.dumps(time_grid(args.model, args.points, args.epochs, args.train), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
