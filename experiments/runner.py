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
from experiments import batching, parallel, results, search
from experiments.checkpoint import Checkpointer
from experiments.config import ExperimentConfig
from experiments.data import image_shape
from experiments.ledger import EpochLedger
from experiments.optimizers import OPTIMIZERS
from experiments.tasks import make_task
from experiments.train import Job, bytes_per_config, initial_states, train_chunk

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


class _Trainer:
    """Trains lists of grid points of one variant/optimizer in memory-sized, resumable chunks.

    Each call of :meth:`train` is one *batch* of points named by ``tag`` (``""`` for the
    grid, ``ext<r>_`` for the points a bracketing round adds, ``final_`` for the staged
    continuation): its chunks live in ``ckpt/<variant>/<opt>/<tag>chunk<k>`` while they
    train and in ``done/<variant>/<opt>/<tag>chunk<k>.npz`` once finished.
    """

    def __init__(self, out, variant, opt_name, vcfg, data, resume, stop_after, mesh, ledger):
        self.out, self.variant, self.opt_name, self.cfg = out, variant, opt_name, vcfg
        self.data, self.resume, self.stop_after, self.mesh = data, resume, stop_after, mesh
        self.ledger: EpochLedger = ledger
        self.chunks = 0

    def _dirs(self, tag: str, k: int) -> tuple[Path, Path]:
        rel = Path(self.variant) / self.opt_name
        return (
            self.out / "ckpt" / rel / f"{tag}chunk{k}",
            self.out / "done" / rel / f"{tag}chunk{k}.npz",
        )

    def chunk_size(self, job: Job, n: int) -> int:
        budget = self.cfg.memory_budget_mb * 2**20
        size = gridlib.chunk_size(n, bytes_per_config(job, job.task.activation_floats), budget)
        if job.task.name == "cnn" and jax.default_backend() == "cpu":
            size = 1  # vmapped convolutions are grouped ones, ~3x slower a config on CPU
        return size

    def train(
        self,
        points: list[dict[str, Any]],
        ids: np.ndarray,
        epochs: int,
        tag: str = "",
        init_seeds: np.ndarray | None = None,
        start_from: Any = None,
    ) -> dict[str, np.ndarray]:
        """The curves of ``points`` (config ids ``ids``) trained to ``epochs``, chunk by chunk.

        ``start_from(rows, job) -> (state, hist, epoch)`` gives a chunk its starting
        checkpoint (the staged continuation); it is written once, before the chunk trains.
        """
        job = dataclasses.replace(_job(self.cfg, self.opt_name), epochs=epochs)
        size = self.chunk_size(job, len(points))
        curves = []
        n_chunks = -(-len(points) // size)
        for k, start in enumerate(range(0, len(points), size)):
            rows = np.arange(start, min(start + size, len(points)))
            self.chunks += 1
            ckpt_dir, done_file = self._dirs(tag, k)
            if self.resume and done_file.is_file():
                with np.load(done_file) as f:
                    curves.append(dict(f))
                continue
            ckpt = Checkpointer(ckpt_dir)
            try:
                if start_from is not None and ckpt.latest() is None:
                    state, hist, at = start_from(rows, job)
                    ckpt.save(at, {"state": state, "hist": hist})
                desc = f"{self.variant}/{self.opt_name}" + (f" {tag.rstrip('_')}" if tag else "")
                desc += f" [{k + 1}/{n_chunks}]" if n_chunks > 1 else ""
                hp = _point_arrays([points[i] for i in rows])
                res = train_chunk(
                    job, self.data, hp, ids[rows], ckpt,
                    resume=self.resume or start_from is not None, stop_after=self.stop_after,
                    desc=desc, mesh=self.mesh,
                    init_seeds=None if init_seeds is None else init_seeds[rows],
                    on_epoch=self.ledger.recorder(f"{self.variant}/{self.opt_name}/{tag}chunk{k}"),
                )  # fmt: skip
            finally:
                ckpt.close()
            if res is None:
                raise RunInterrupted(
                    f"stopped after epoch {self.stop_after} of {self.variant}/{self.opt_name}"
                )
            done_file.parent.mkdir(parents=True, exist_ok=True)
            # allow_pickle=True is numpy's default, named so that mypy knows **res
            # (curve arrays only) cannot fill that keyword.
            np.savez(done_file, allow_pickle=True, **res)
            curves.append(res)
        return {key: np.concatenate([c[key] for c in curves]) for key in curves[0]}

    def state_at(self, tag: str, job: Job, n_points: int, epochs: int):
        """``gather(indices) -> (state, hist)`` rows of the finished batch ``tag`` (trained to
        ``epochs``, restored from its chunks' last checkpoints), for the continuation."""
        small = dataclasses.replace(job, epochs=epochs)
        size = self.chunk_size(small, n_points)
        cache: dict[int, Any] = {}

        def chunk(k: int):
            if k not in cache:
                n = min(size, n_points - k * size)
                like_state = jax.eval_shape(
                    lambda: initial_states(small, _zero_hp(small.optimizer, n), n)
                )
                steps = self.data.n_train // job.batch_size
                like_hist = _nan_hist(n, epochs, steps)
                ckpt = Checkpointer(self._dirs(tag, k)[0])
                try:
                    at = ckpt.latest()
                    if at != epochs:
                        raise RuntimeError(
                            f"{self._dirs(tag, k)[0]} holds no checkpoint of epoch {epochs} "
                            f"(latest: {at}); rerun without --resume"
                        )
                    cache[k] = ckpt.restore(at, {"state": like_state, "hist": like_hist})
                finally:
                    ckpt.close()
            return cache[k]

        def gather(indices: np.ndarray):
            parts = [(chunk(int(i) // size), int(i) % size) for i in indices]
            take = lambda *rows: np.stack(rows)
            state = jax.tree.map(
                take, *[jax.tree.map(lambda a, r=r: a[r], c["state"]) for c, r in parts]
            )
            hist = {
                key: np.stack([c["hist"][key][r] for c, r in parts]) for key in parts[0][0]["hist"]
            }
            return state, hist

        return gather


def _point_arrays(points: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-hyperparameter arrays of a list of grid points (the dtypes :func:`grid.expand` uses)."""
    out = {}
    for k in points[0]:
        column = [p[k] for p in points]
        # one axis at a time: the product of the columns would be len(points) ** n_axes points
        dtype = gridlib.expand({k: list(dict.fromkeys(column))}).arrays([0])[k].dtype
        out[k] = np.asarray(column, dtype)
    return out


def _zero_hp(optimizer: str, n: int) -> dict[str, np.ndarray]:
    spec = OPTIMIZERS[optimizer].hparams
    return {
        k: np.full((n,), p.default, np.bool_ if p.kind is bool else np.float32)
        for k, p in spec.items()
    }


def _nan_hist(n: int, epochs: int, steps: int) -> dict[str, np.ndarray]:
    nan = lambda *shape: np.full(shape, np.nan, np.float32)
    return {
        "iter_loss": nan(n, epochs * steps),
        "epoch_loss": nan(n, epochs),
        "test_loss": nan(n, epochs),
        "test_acc": nan(n, epochs),
    }


def _search(trainer: _Trainer, grid: gridlib.Grid, cfg: ExperimentConfig):
    """Train one optimizer's grid under the config's search protocol (:mod:`experiments.search`).

    Returns ``(grid, curves, record)``: the final grid (its ``learning_rate`` axis extended
    where bracketing added values), the curves of its every point in that grid's order (a
    pruned point's curves end at the cut, NaN after it; its finals are NaN) and the
    ``search`` record for ``results.json``.
    """
    staged = 0 < cfg.select_epochs < cfg.epochs
    first = cfg.select_epochs if staged else cfg.epochs
    swept = list(grid.swept)
    points = grid.configs()
    n_seeds = cfg.seeds
    if n_seeds != 1 and (staged or cfg.grid_extensions):
        raise ValueError(
            f"the staged search and grid extensions train one seed per point, not {n_seeds}: "
            "run with --seeds 1, or with --epochs at most the config's select_epochs and a "
            "config without grid_extensions"
        )
    if n_seeds == 1:
        ids = np.arange(len(points))
        curves = trainer.train(points, ids, first)
    else:  # seed-major: flat index s * len(grid) + grid index, averaged per point
        flat = np.arange(len(points) * n_seeds)
        seed_points = [points[i % len(points)] for i in flat]
        curves = trainer.train(seed_points, flat, first, init_seeds=cfg.seed + flat // len(points))
        curves = results.over_seeds(curves, n_seeds)
    batches = [("", len(points))]  # (tag, number of points) of each trained batch, in order
    record: dict[str, Any] = {
        "protocol": "staged" if staged else "full",
        "select_epochs": first,
        "epochs": cfg.epochs,
        "extensions": [],
    }
    for r in range(cfg.grid_extensions):
        new = search.extension_values(points, swept, curves["epoch_loss"], curves["diverged"])
        if not new:
            break
        axes = {k: sorted({p[k] for p in points}) for k in grid.names}
        axes[search.AXIS] = sorted(set(axes[search.AXIS]) | {rec["value"] for rec in new})
        added = [p for p in gridlib.expand(axes).configs() if p not in points]
        more = trainer.train(
            added, np.arange(len(points), len(points) + len(added)), first, f"ext{r + 1}_"
        )
        points = points + added
        batches.append((f"ext{r + 1}_", len(added)))
        curves = {k: np.concatenate([curves[k], more[k]]) for k in curves}
        for rec in new:
            record["extensions"].append({"round": r + 1, "axis": search.AXIS, **rec})
    remaining = search.extension_values(points, swept, curves["epoch_loss"], curves["diverged"])
    record["still_at_edge"] = [rec["from"] for rec in remaining]
    if staged:
        kept = search.select(
            points, swept, curves["epoch_loss"], curves["diverged"], cfg.keep_neighbours
        )
        record["kept"] = [points[i] for i in kept]
        record["pruned_at_epoch"] = first
        curves = _continue(trainer, points, curves, batches, kept, first, cfg.epochs)
    else:
        record["kept"] = points
    final_axes = {k: sorted({p[k] for p in points}) for k in grid.names}
    if len(points) == len(grid):
        final = grid  # no extension: the config's own order
    else:
        final = gridlib.expand(final_axes)
    order = [points.index(p) for p in final.configs()]
    return final, {k: v[order] if v.ndim else v for k, v in curves.items()}, record


def _continue(trainer, points, curves, batches, kept, first, epochs):
    """Train the ``kept`` points on from their ``first``-epoch state to ``epochs``; the others
    keep their curves to ``first``, padded with NaN, and NaN finals. ``batches``: the
    ``(tag, size)`` of each batch the points were trained in, in order."""
    job = _job(trainer.cfg, trainer.opt_name)
    steps = trainer.data.n_train // job.batch_size
    kept = np.asarray(kept)
    offsets = np.cumsum([0] + [n for _, n in batches])
    gathers: dict[str, Any] = {}

    def start_from(rows, full_job):
        state_parts, hist_parts = [], []
        for i in kept[rows]:
            b = int(np.searchsorted(offsets, i, side="right")) - 1
            tag, size = batches[b]
            if tag not in gathers:
                gathers[tag] = trainer.state_at(tag, job, size, first)
            s, h = gathers[tag](np.asarray([i - offsets[b]]))
            state_parts.append(s)
            hist_parts.append(h)
        state = jax.tree.map(lambda *a: np.concatenate(a), *state_parts)
        hist = _nan_hist(len(rows), epochs, steps)
        for key in hist:
            src = np.concatenate([h[key] for h in hist_parts])
            hist[key][:, : src.shape[1]] = src
        return state, hist, first

    more = trainer.train([points[i] for i in kept], kept, epochs, "final_", start_from=start_from)
    out = {}
    for key, v in curves.items():
        if key in more and v.ndim == 2:  # per-epoch / per-iteration curves
            padded = np.full((v.shape[0], more[key].shape[1]), np.nan, v.dtype)
            padded[:, : v.shape[1]] = v
            padded[kept] = more[key]
            out[key] = padded
        elif key in more and key != "diverged":
            finals = np.full(v.shape, np.nan, v.dtype)
            finals[kept] = more[key]
            out[key] = finals
        else:
            out[key] = v
    div = curves["diverged"].copy()
    div[kept] = more["diverged"]
    out["diverged"] = div
    return out


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
    ledger = EpochLedger(out, fresh=not resume)
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
            t0 = time.perf_counter()
            trainer = _Trainer(out, variant, opt_name, vcfg, data, resume, stop_after, mesh, ledger)
            g, merged, record = _search(trainer, optimizer_grid(opt_name, hps), vcfg)
            per_opt[opt_name] = results.summarize(opt_name, g, merged, vcfg, data.n_train)
            per_opt[opt_name]["search"] = record
            per_opt[opt_name]["wall_time_s"] = round(time.perf_counter() - t0, 2)
            per_opt[opt_name]["train_seconds"] = ledger.totals().get(f"{variant}/{opt_name}", 0.0)
            best = per_opt[opt_name]["best"]
            log(
                f"{variant}/{opt_name}: {len(g)} configs in {trainer.chunks} chunk(s), "
                f"{per_opt[opt_name]['wall_time_s']:.1f}s; "
                f"best {best['hparams'] if best else None} "
                f"train loss {best['final_train_loss'] if best else float('nan'):.4g}"
            )
        report["variants"][variant] = per_opt
    report["wall_time_s"] = round(time.perf_counter() - t_start, 2)
    # Every session's epochs (wall_time_s is this session's only): experiments/ledger.py.
    report["train_seconds"] = ledger.totals()[""]
    results.annotate(report)
    results.write(out, report)
    if plot:
        from experiments import plots

        for path in plots.plot_report(report, out):
            log(f"wrote {path}")
    shutil.rmtree(out / "ckpt", ignore_errors=True)
    results.print_verdicts(report, log)
    return report
