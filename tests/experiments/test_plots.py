"""Figure 4's panels: which points a curve shows at a reported epoch."""

from __future__ import annotations

import numpy as np

from experiments.plots import panel_points


def _point(lr, loss, diverged=False):
    return {"hparams": {"learning_rate": lr}, "train_loss_epoch_100": loss, "diverged": diverged}


def test_points_the_staged_search_stopped_are_left_out_not_drawn_as_diverged():
    points = [
        _point(1e-4, None),  # pruned after the selection epochs: not trained to epoch 100
        _point(1e-3, 101.5),
        _point(1e-2, None, diverged=True),
        _point(1e-1, 900.0),  # finite but above the ceiling
    ]
    x, y, bad = panel_points(points, "train_loss_epoch_100", ceiling=130.0)
    np.testing.assert_allclose(x, [-3.0, -2.0, -1.0])
    np.testing.assert_allclose(y, [101.5, 130.0, 130.0])
    assert bad.tolist() == [False, True, True]


def test_a_curve_without_trained_points_is_empty():
    x, y, bad = panel_points([_point(1e-4, None)], "train_loss_epoch_100", ceiling=1.0)
    assert x.size == y.size == bad.size == 0
