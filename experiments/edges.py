"""Did the grid search bracket the optimum? Flag every best setting that sits at a grid edge.

A grid search finds the best of the values it tried. When the best learning rate is the
largest (or smallest) one in the grid, the true optimum may lie beyond it, and the comparison
between optimizers is not a fair one until the grid is widened. For each optimizer of a run,
:func:`grid_edges` finds the best grid point (lowest final-epoch training cost, diverged runs
excluded, as :func:`experiments.results.best_index`) within each *slice* of the grid and
reports each checked axis on which that best value is the grid's lowest or highest value.

Slices: for the curve figures (1-3) the whole grid is one slice and every swept numeric axis
is checked. For Figure 4 each panel curve (one ``b1``, ``b2`` and bias-correction setting) is
a slice and only ``learning_rate`` is checked, since ``b1`` and ``b2`` are the panels, not
tuned values.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["grid_edges", "edge_warnings"]


def _final_cost(point: dict[str, Any]) -> float:
    """The last epoch's training cost of a grid point; ``inf`` if it diverged or is missing."""
    losses = point.get("epoch_train_loss") or []
    last = losses[-1] if losses else None
    if point.get("diverged") or last is None or not math.isfinite(last):
        return math.inf
    return float(last)


def grid_edges(entry: dict[str, Any], check: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """The edge flags of one optimizer's results entry (``results.json`` ``variants.*.*``).

    ``check`` names the axes to check; the other swept axes split the grid into slices, each
    with its own best. ``None`` checks every swept axis with numeric values (one slice).
    Returns one dict per flag: ``{"slice": {axis: value}, "axis", "value", "edge": "low" |
    "high", "grid": [sorted values], "cost"}``. An axis with a single value is not swept and
    never flagged; a slice whose every point diverged has no best and is not flagged.
    """
    points = entry["grid"]
    swept = list(entry["swept"])
    numeric = [
        a
        for a in swept
        if all(
            isinstance(p["hparams"][a], int | float) and not isinstance(p["hparams"][a], bool)
            for p in points
        )
    ]
    axes = numeric if check is None else [a for a in check if a in numeric]
    slice_axes = [a for a in swept if a not in axes]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault(tuple(p["hparams"][a] for a in slice_axes), []).append(p)
    flags = []
    for key, members in groups.items():
        costs = [_final_cost(p) for p in members]
        best_cost = min(costs)
        if not math.isfinite(best_cost):
            continue
        best = members[costs.index(best_cost)]
        for axis in axes:
            values = sorted({p["hparams"][axis] for p in members})
            if len(values) < 2:
                continue
            v = best["hparams"][axis]
            edge = "low" if v == values[0] else "high" if v == values[-1] else None
            if edge:
                flags.append(
                    {
                        "slice": dict(zip(slice_axes, key, strict=True)),
                        "axis": axis,
                        "value": v,
                        "edge": edge,
                        "grid": values,
                        "cost": best_cost,
                    }
                )
    return flags


def edge_warnings(report: dict[str, Any]) -> list[str]:
    """One line per edge flag stored in ``report`` (see :func:`experiments.results.annotate`)."""
    lines = []
    for variant, per_opt in report["variants"].items():
        for opt, entry in per_opt.items():
            for f in entry.get("grid_edges", []):
                where = ", ".join(f"{k}={v}" for k, v in f["slice"].items())
                lines.append(
                    f"{variant}/{opt}{f' [{where}]' if where else ''}: best {f['axis']}="
                    f"{f['value']:g} is the {'largest' if f['edge'] == 'high' else 'smallest'} "
                    f"value of its grid {[float(f'{v:g}') for v in f['grid']]} (cost "
                    f"{f['cost']:.4g}); widen the grid past it in the config"
                )
    return lines
