"""Results of a run: ``results.json`` (per grid point and best per optimizer) and CSV curves."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from adamjax.grid import Grid
from experiments.optimizers import OPTIMIZERS

__all__ = ["summarize", "write", "best_index", "annotate", "print_verdicts", "over_seeds"]

_SPREAD = ("iter_loss", "epoch_loss", "final_train_loss", "final_test_acc")


def _num(x: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become ``None``."""
    x = float(x)
    return x if math.isfinite(x) else None


def best_index(epoch_loss: np.ndarray, diverged: np.ndarray) -> int | None:
    """The config with the lowest final-epoch training loss among those that did not diverge."""
    last = np.where(diverged, np.inf, epoch_loss[:, -1])
    last = np.where(np.isfinite(last), last, np.inf)
    return None if not np.isfinite(last).any() else int(np.argmin(last))


def over_seeds(curves: dict[str, np.ndarray], n_seeds: int) -> dict[str, np.ndarray]:
    """Average seed-major curves ``[n_seeds * G, ...]`` into ``[G, ...]`` per grid point.

    Each curve becomes its mean over the seeds; ``diverged`` is true if any seed diverged;
    for the curves in ``_SPREAD`` a ``<name>_std`` entry holds the sample standard deviation
    over the seeds (``ddof=1``). With one seed the curves are returned unchanged.
    """
    if n_seeds == 1:
        return curves
    out: dict[str, np.ndarray] = {}
    for key, value in curves.items():
        if value.shape[0] % n_seeds:
            raise ValueError(
                f"curve {key!r} has {value.shape[0]} rows, not a multiple of {n_seeds} seeds"
            )
        per_seed = value.reshape(n_seeds, -1, *value.shape[1:])
        if key == "diverged":
            out[key] = np.asarray(per_seed.any(axis=0))
            continue
        out[key] = per_seed.mean(axis=0)
        if key in _SPREAD:
            out[f"{key}_std"] = per_seed.std(axis=0, ddof=1)
    out["n_seeds"] = np.asarray(n_seeds)
    return out


def summarize(
    name: str, grid: Grid, curves: dict[str, np.ndarray], cfg, n_train: int
) -> dict[str, Any]:
    """The JSON entry of one optimizer: every grid point plus the best one (by training loss)."""
    points = []
    for i, hp in enumerate(grid.configs()):
        point = {
            "index": i,
            "hparams": hp,
            "epoch_train_loss": [_num(v) for v in curves["epoch_loss"][i]],
            "epoch_test_loss": [_num(v) for v in curves["test_loss"][i]],
            "epoch_test_acc": [_num(v) for v in curves["test_acc"][i]],
            "final_train_loss": _num(curves["final_train_loss"][i]),
            "final_train_nll": _num(curves["final_train_nll"][i]),
            "test_loss": _num(curves["final_test_loss"][i]),
            "test_accuracy": _num(curves["final_test_acc"][i]) if cfg.model != "vae" else None,
            "diverged": bool(curves["diverged"][i]),
        }
        for e in cfg.report_epochs:
            if e <= cfg.epochs:
                point[f"train_loss_epoch_{e}"] = _num(curves["epoch_loss"][i, e - 1])
        if "epoch_loss_std" in curves:
            point["epoch_train_loss_std"] = [_num(v) for v in curves["epoch_loss_std"][i]]
            point["final_train_loss_std"] = _num(curves["final_train_loss_std"][i])
            if cfg.model != "vae":
                point["test_accuracy_std"] = _num(curves["final_test_acc_std"][i])
        points.append(point)
    best = best_index(curves["epoch_loss"], curves["diverged"])
    best_entry = None
    if best is not None:
        best_entry = {
            **points[best],
            "iter_train_loss": [_num(v) for v in curves["iter_loss"][best]],
        }
        if "iter_loss_std" in curves:
            best_entry["iter_train_loss_std"] = [_num(v) for v in curves["iter_loss_std"][best]]
    return {
        "label": OPTIMIZERS[name].label,
        "swept": list(grid.swept),
        "seeds": int(curves.get("n_seeds", 1)),
        "iterations_per_epoch": n_train // cfg.batch_size,
        "best": best_entry,
        "grid": points,
    }


def annotate(report: dict[str, Any]) -> dict[str, Any]:
    """Add the grid-edge flags and the paper's claims to ``report`` (in place; returned).

    Each optimizer entry gets ``grid_edges`` (:func:`experiments.edges.grid_edges`; for the
    Figure 4 layout only ``learning_rate`` is checked, per panel curve), the report gets
    ``grid_edge_warnings`` (one line per flag) and ``claims``
    (:func:`experiments.claims.evaluate_claims`). Works on a ``results.json`` written by an
    older run too, since both read only the per-point curves.
    """
    from experiments import claims, edges

    check = ("learning_rate",) if report["config"].get("plot") == "bias_correction" else None
    for per_opt in report["variants"].values():
        for entry in per_opt.values():
            entry["grid_edges"] = edges.grid_edges(entry, check)
    report["grid_edge_warnings"] = edges.edge_warnings(report)
    report["claims"] = claims.evaluate_claims(report)
    return report


def print_verdicts(report: dict[str, Any], log=print) -> None:
    """Print the grid-edge warnings and each claim's PASS/FAIL line of an annotated report."""
    from experiments import claims

    for line in report.get("grid_edge_warnings", []):
        log(f"WARNING grid edge: {line}")
    if not report.get("grid_edge_warnings"):
        log("grid edges: every best setting lies inside its grid")
    for line in claims.format_claims(report.get("claims", [])):
        log(line)


def write(out: Path, report: dict[str, Any]) -> None:
    """Write ``results.json`` and ``curves/<variant>_<optimizer>_{epochs,iters}.csv``."""
    (out / "results.json").write_text(json.dumps(report, indent=1))
    curves_dir = out / "curves"
    curves_dir.mkdir(exist_ok=True)
    for variant, per_opt in report["variants"].items():
        for opt, entry in per_opt.items():
            with open(curves_dir / f"{variant}_{opt}_epochs.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(
                    [
                        "grid_index",
                        *entry["swept"],
                        "epoch",
                        "train_loss",
                        "test_loss",
                        "test_acc",
                        "best",
                    ]
                )
                best = entry["best"]["index"] if entry["best"] else -1
                for p in entry["grid"]:
                    swept = [p["hparams"][k] for k in entry["swept"]]
                    for e, (tr, te, acc) in enumerate(
                        zip(
                            p["epoch_train_loss"],
                            p["epoch_test_loss"],
                            p["epoch_test_acc"],
                            strict=True,
                        )
                    ):
                        w.writerow(
                            [p["index"], *swept, e + 1, tr, te, acc, int(p["index"] == best)]
                        )
            if entry["best"]:
                with open(curves_dir / f"{variant}_{opt}_iters.csv", "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["iteration", "train_loss"])
                    for it, loss in enumerate(entry["best"]["iter_train_loss"]):
                        w.writerow([it + 1, loss])
