"""Run one experiment: every variant x optimizer as a vmapped grid, in memory-sized chunks.

Layout of a run directory::

    config.json              the resolved config (checked on --resume)
    results.json             per variant / optimizer / grid point: hyperparameters, curves, finals
    curves/*.csv             per-epoch and per-iteration curves
    ckpt/<variant>/<opt>/chunk<k>/   orbax checkpoints of the chunk in progress
    done/<variant>/<opt>/chunk<k>.npz  curves of finished chunks
    *.png                    the figure(s)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from adamjax import grid as gridlib
from experiments import batching, parallel, results
from experiments.checkpoint import Checkpointer
from experiments.config import ExperimentConfig
from experiments.data import image_shape
from experiments.optimizers import OPTIMIZERS
from experiments.tasks import make_task
from experiments.train import Job, bytes_per_config, train_chunk

__all__ = ["run_experiment", "optimizer_grid", "RunInterrupted"]


class RunInterrupted(Exception):
    """Raised when ``stop_after`` ends a run early (tests use it to simulate a crash)."""


def optimizer_grid(name: str, hps: dict[str, Any]) -> gridlib.Grid:
    """The grid of optimizer ``name``: every hyperparameter, defaults filled in, lists swept."""
    spec = OPTIMIZERS[name].hparams
    return gridlib.expand({k: hps.get(k, p.default) for k, p in spec.items()})


def _job(cfg: ExperimentConfig, optimizer: str) -> Job:
    task = make_task(
        cfg.model,
        weight_decay=cfg.weight_decay,
        dropout=cfg.dropout,
        input_dropout=cfg.input_dropout,
        image_shape=image_shape(cfg.dataset),
    )
    return Job(
        task, optimizer, cfg.schedule, cfg.batch_size, cfg.epochs, cfg.seed, cfg.checkpoint_every
    )


def _load_data(cfg: ExperimentConfig, data_dir, cache: dict) -> batching.DeviceData:
    key = (
        cfg.dataset, cfg.train_subset, cfg.test_subset, cfg.eval_batch_size, cfg.whiten,
        cfg.zca_epsilon,
    )  # fmt: skip
    if key not in cache:
        cache[key] = batching.load_device_data(
            cfg.dataset,
            train_subset=cfg.train_subset,
            test_subset=cfg.test_subset,
            eval_batch_size=cfg.eval_batch_size,
            data_dir=data_dir,
            whiten=cfg.whiten,
            zca_epsilon=cfg.zca_epsilon,
        )
    return cache[key]


def _replicate_data(data: batching.DeviceData, mesh) -> batching.DeviceData:
    arrays = {
        f.name: getattr(data, f.name)
        for f in dataclasses.fields(data)
        if isinstance(getattr(data, f.name), jax.Array)
    }
    return dataclasses.replace(data, **parallel.replicate(arrays, mesh))


def _check_resume(out: Path, cfg: ExperimentConfig, resume: bool) -> None:
    saved = out / "config.json"
    if resume and saved.is_file():
        previous = json.loads(saved.read_text())
        if previous != json.loads(json.dumps(cfg.to_dict())):
            raise ValueError(
                f"{saved} was written by a different config; resume with the same settings "
                "(same --quick/--dataset) or use another --out"
            )
    if not resume:
        for stale in ("ckpt", "done"):
            shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(cfg.to_dict(), indent=2))


def run_experiment(
    cfg: ExperimentConfig,
    out: str | Path,
    *,
    resume: bool = False,
    data_dir: str | Path | None = None,
    stop_after: int | None = None,
    plot: bool = True,
    log=print,
    devices: int = 1,
) -> dict[str, Any]:
    """Train every variant and optimizer grid of ``cfg``; write results, CSVs and plots to ``out``.

    ``resume`` continues finished chunks and checkpoints already in ``out``. ``stop_after``
    stops after that many epochs of the first unfinished chunk (raising
    :class:`RunInterrupted`), as if the process had been killed. ``devices`` > 1 (0: all
    visible) trains data-parallel on a 1-D mesh, each minibatch split over the devices
    (:mod:`experiments.parallel`); 1 is the plain single-device path.
    """
    out = Path(out)
    mesh = parallel.make_mesh(devices) if devices != 1 else None
    if mesh is not None and mesh.shape[parallel.DATA] == 1:
        mesh = None
    n_devices = 1 if mesh is None else mesh.shape[parallel.DATA]
    if cfg.batch_size % n_devices:
        raise ValueError(
            f"batch size {cfg.batch_size} cannot be split over {n_devices} devices; "
            f"use --devices with a divisor of {cfg.batch_size}"
        )
    _check_resume(out, cfg, resume)
    data_cache: dict = {}
    report: dict[str, Any] = {
        "experiment": cfg.name,
        "config": cfg.to_dict(),
        "devices": n_devices,
        "variants": {},
    }
    t_start = time.perf_counter()
    for variant, vcfg in cfg.variant_configs():
        data = _load_data(vcfg, data_dir, data_cache)
        if mesh is not None:
            data = _replicate_data(data, mesh)
        per_opt = {}
        for opt_name, hps in vcfg.optimizers.items():
            g = optimizer_grid(opt_name, hps)
            job = _job(vcfg, opt_name)
            budget = vcfg.memory_budget_mb * 2**20
            n_seeds = vcfg.seeds
            flat = len(g) * n_seeds  # seed-major: flat index s * len(g) + grid index
            size = gridlib.chunk_size(
                flat, bytes_per_config(job, job.task.activation_floats), budget
            )
            if job.task.name == "cnn" and jax.default_backend() == "cpu":
                size = 1  # vmapped convolutions are grouped ones, ~3x slower a config on CPU
            t0 = time.perf_counter()
            curves = []
            n_chunks = -(-flat // size)
            for k, start in enumerate(range(0, flat, size)):
                ids = np.arange(start, min(start + size, flat))
                done_file = out / "done" / variant / opt_name / f"chunk{k}.npz"
                if resume and done_file.is_file():
                    with np.load(done_file) as f:
                        curves.append(dict(f))
                    continue
                ckpt = Checkpointer(out / "ckpt" / variant / opt_name / f"chunk{k}")
                try:
                    desc = f"{variant}/{opt_name}" + (
                        f" [{k + 1}/{n_chunks}]" if n_chunks > 1 else ""
                    )
                    res = train_chunk(
                        job, data, g.arrays((ids % len(g)).tolist()), ids, ckpt,
                        resume=resume, stop_after=stop_after, desc=desc, mesh=mesh,
                        init_seeds=None if n_seeds == 1 else vcfg.seed + ids // len(g),
                    )  # fmt: skip
                finally:
                    ckpt.close()
                if res is None:
                    raise RunInterrupted(
                        f"stopped after epoch {stop_after} of {variant}/{opt_name}"
                    )
                done_file.parent.mkdir(parents=True, exist_ok=True)
                # allow_pickle=True is numpy's default, named so that mypy knows **res
                # (curve arrays only) cannot fill that keyword.
                np.savez(done_file, allow_pickle=True, **res)
                curves.append(res)
            merged = {key: np.concatenate([c[key] for c in curves]) for key in curves[0]}
            merged = results.over_seeds(merged, n_seeds)
            per_opt[opt_name] = results.summarize(opt_name, g, merged, vcfg, data.n_train)
            per_opt[opt_name]["wall_time_s"] = round(time.perf_counter() - t0, 2)
            best = per_opt[opt_name]["best"]
            log(
                f"{variant}/{opt_name}: {len(g)} configs in {len(curves)} chunk(s), "
                f"{per_opt[opt_name]['wall_time_s']:.1f}s; "
                f"best {best['hparams'] if best else None} "
                f"train loss {best['final_train_loss'] if best else float('nan'):.4g}"
            )
        report["variants"][variant] = per_opt
    report["wall_time_s"] = round(time.perf_counter() - t_start, 2)
    results.annotate(report)
    results.write(out, report)
    if plot:
        from experiments import plots

        for path in plots.plot_report(report, out):
            log(f"wrote {path}")
    shutil.rmtree(out / "ckpt", ignore_errors=True)
    results.print_verdicts(report, log)
    return report
