"""The step-size search: a staged protocol and grids that bracket their own optimum.

The paper picks each method's step size by a dense grid search, trained to the end. At the
paper's scale (200 epochs of Figure 2) that is most of the compute, spent on step sizes that
are clearly worse after a few epochs. The runner (:mod:`experiments.runner`) can instead

1. **bracket**: train the grid for the *selection budget* (``select_epochs``; the whole run
   when there is no staging) and, wherever a slice's best ``learning_rate`` is the lowest or
   highest value of its grid, add the next value beyond it (the edge value times, or divided
   by, the ratio between the two outermost values), train the new points for the same
   budget, and repeat until every best lies inside its grid or ``grid_extensions`` rounds
   are spent (:func:`extension_values`);
2. **select**: keep each slice's best point after ``select_epochs`` (lowest final-epoch
   training cost, diverged points excluded, as :func:`experiments.results.best_index`),
   optionally with its neighbours along ``learning_rate`` (:func:`select`);
3. **continue** only the kept points from their ``select_epochs`` state to ``epochs``, in
   the same run directory. The pruned points keep their curves up to the cut.

A *slice* is one setting of every swept axis except ``learning_rate`` (Figure 4's panel
curves: one ``b1``, ``b2`` and bias-correction setting each); a grid that sweeps only
``learning_rate`` (Figures 1-3) is one slice. Everything the search did is recorded in
``results.json`` under each optimizer's ``search`` entry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["AXIS", "slices", "stage_best", "select", "extension_values"]

AXIS = "learning_rate"
Point = dict[str, Any]


def _key(point: Point, axes: Sequence[str]) -> tuple:
    return tuple(point[a] for a in axes)


def slices(points: Sequence[Point], swept: Sequence[str]) -> dict[tuple, list[int]]:
    """``{slice key: indices of its points, sorted by learning rate}``.

    ``swept`` are the grid's swept axes; every one but :data:`AXIS` splits the points.
    """
    others = [a for a in swept if a != AXIS]
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(points):
        groups.setdefault(_key(p, others), []).append(i)
    return {k: sorted(v, key=lambda i: points[i][AXIS]) for k, v in groups.items()}


def _cost(epoch_loss: np.ndarray, diverged: np.ndarray, i: int) -> float:
    last = float(epoch_loss[i, -1])
    return math.inf if bool(diverged[i]) or not math.isfinite(last) else last


def stage_best(
    points: Sequence[Point], swept: Sequence[str], epoch_loss: np.ndarray, diverged: np.ndarray
) -> dict[tuple, int | None]:
    """Each slice's best point: the lowest last-epoch cost of ``epoch_loss[i, :]``.

    ``None`` for a slice whose every point diverged. Ties go to the smaller step size.
    """
    out: dict[tuple, int | None] = {}
    for key, members in slices(points, swept).items():
        costs = [_cost(epoch_loss, diverged, i) for i in members]
        best = min(costs)
        out[key] = members[costs.index(best)] if math.isfinite(best) else None
    return out


def select(
    points: Sequence[Point],
    swept: Sequence[str],
    epoch_loss: np.ndarray,
    diverged: np.ndarray,
    neighbours: bool = False,
) -> list[int]:
    r"""The points the staged protocol continues: each slice's best after the selection budget.

    With ``neighbours`` the best's next smaller and next larger step sizes in its slice are
    kept too (those that did not diverge). A slice whose every point diverged keeps nothing.
    Returns sorted indices into ``points``.
    """
    kept: set[int] = set()
    groups = slices(points, swept)
    for key, best in stage_best(points, swept, epoch_loss, diverged).items():
        if best is None:
            continue
        kept.add(best)
        if neighbours:
            members = groups[key]
            at = members.index(best)
            for j in (at - 1, at + 1):
                if 0 <= j < len(members) and math.isfinite(_cost(epoch_loss, diverged, members[j])):
                    kept.add(members[j])
    return sorted(kept)


def extension_values(
    points: Sequence[Point], swept: Sequence[str], epoch_loss: np.ndarray, diverged: np.ndarray
) -> list[dict[str, Any]]:
    """The step sizes to add because a slice's best sits at an edge of its grid.

    For each slice whose best ``learning_rate`` is its smallest (largest) value, the new value
    is that edge divided (multiplied) by the factor between the two outermost values on that
    side (``values[1] / values[0]``, or ``values[-1] / values[-2]``), rounded to 6 significant
    digits. Returns one record per distinct new value: ``{"value", "edge": "low" | "high",
    "from": edge value, "factor", "slices": [slice keys as lists]}``. Nothing for an axis
    with fewer than two values.
    """
    if AXIS not in swept:
        return []
    groups = slices(points, swept)
    records: dict[float, dict[str, Any]] = {}
    for key, best in stage_best(points, swept, epoch_loss, diverged).items():
        if best is None:
            continue
        values = [points[i][AXIS] for i in groups[key]]
        if len(values) < 2:
            continue
        v = points[best][AXIS]
        if v == values[0]:
            edge, factor = "low", values[1] / values[0]
            new = values[0] / factor
        elif v == values[-1]:
            edge, factor = "high", values[-1] / values[-2]
            new = values[-1] * factor
        else:
            continue
        new = float(f"{new:.6g}")
        rec = records.setdefault(
            new, {"value": new, "edge": edge, "from": v, "factor": factor, "slices": []}
        )
        rec["slices"].append(list(key))
    return list(records.values())
