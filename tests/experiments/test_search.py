"""The step-size search: staged selection, continuation and self-bracketing grids."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import search
from experiments.config import ConfigError, from_dict, load_config
from experiments.runner import RunInterrupted, _point_arrays, run_experiment


def _points(lrs, **fixed):
    return [{"learning_rate": lr, **fixed} for lr in lrs]


def test_select_keeps_each_slices_lowest_last_epoch_cost_and_its_finite_neighbours():
    points = [
        {"learning_rate": lr, "b1": b1} for b1 in (0.0, 0.9) for lr in (1e-3, 1e-2, 1e-1, 1.0)
    ]
    last = np.array([3.0, 1.0, 2.0, 9.0, 5.0, 4.0, 0.5, np.nan])
    loss = np.stack([np.full_like(last, 7.0), last], axis=1)  # only the last epoch counts
    diverged = np.isnan(last)
    swept = ["learning_rate", "b1"]
    assert search.select(points, swept, loss, diverged) == [1, 6]
    # b1=0.9's best (index 6) has a diverged upper neighbour (7): only 5 joins it
    assert search.select(points, swept, loss, diverged, neighbours=True) == [0, 1, 2, 5, 6]


def test_select_skips_a_slice_whose_every_point_diverged_and_breaks_ties_to_the_smaller_step():
    points = _points([0.3, 0.1, 1.0])  # not sorted: slices sort by learning rate
    loss = np.array([[1.0], [1.0], [np.inf]])
    assert search.select(points, ["learning_rate"], loss, np.zeros(3, bool)) == [1]
    assert search.select(points, ["learning_rate"], loss, np.ones(3, bool)) == []


def test_extension_adds_the_next_value_by_the_edge_factor_on_the_side_of_the_best():
    points = _points([1e-3, 3e-3, 1e-2])
    swept = ["learning_rate"]
    low = np.array([[1.0], [2.0], [3.0]])
    (rec,) = search.extension_values(points, swept, low, np.zeros(3, bool))
    assert rec["edge"] == "low" and rec["from"] == 1e-3
    assert rec["value"] == pytest.approx(1e-3 / 3, rel=1e-6)
    (rec,) = search.extension_values(points, swept, low[::-1], np.zeros(3, bool))
    assert rec["edge"] == "high" and rec["value"] == pytest.approx(1e-2 * 1e-2 / 3e-3, rel=1e-6)
    inside = np.array([[2.0], [1.0], [3.0]])
    assert search.extension_values(points, swept, inside, np.zeros(3, bool)) == []
    # a diverged edge point is not a best: the middle one is, and nothing is added
    assert search.extension_values(points, swept, low, np.array([True, False, False])) == []


def test_extension_merges_slices_that_need_the_same_value():
    points = [{"learning_rate": lr, "b2": b2} for b2 in (0.99, 0.999) for lr in (0.1, 1.0)]
    loss = np.array([[1.0], [2.0], [1.0], [2.0]])
    (rec,) = search.extension_values(points, ["learning_rate", "b2"], loss, np.zeros(4, bool))
    assert rec["value"] == pytest.approx(0.01) and rec["slices"] == [[0.99], [0.999]]


def test_search_keys_are_validated():
    base = {"model": "logreg", "epochs": 4, "optimizers": {"adam": {"learning_rate": [0.1]}}}
    with pytest.raises(ConfigError, match="'select_epochs' = -1 must be >= 0"):
        from_dict("t", {**base, "select_epochs": -1})
    with pytest.raises(ConfigError, match="'keep_neighbours' must be of type bool"):
        from_dict("t", {**base, "keep_neighbours": 1})
    with pytest.raises(ConfigError, match="seeds = 2; set seeds = 1"):
        from_dict("t", {**base, "seeds": 2, "grid_extensions": 1})


def _cfg(**over):
    cfg = load_config("fig1_logreg", quick=True)
    return dataclasses.replace(
        cfg,
        optimizers={"adam": {"learning_rate": [1e-3, 1e-2, 3e-2]}, "sgd": {"learning_rate": [0.1]}},
        train_subset=512,
        test_subset=256,
        eval_batch_size=256,
        epochs=4,
        **over,
    )


def _run(cfg, out, data_dir, **kw):
    return run_experiment(cfg, out, data_dir=data_dir, log=lambda *_: None, plot=False, **kw)


def _curves(report):
    return {
        (opt, p["index"]): (p["epoch_train_loss"], p["final_train_loss"], p["diverged"])
        for opt, entry in report["variants"]["main"].items()
        for p in entry["grid"]
    }


@pytest.mark.slow
def test_staged_run_keeps_the_stage_best_and_continues_it_from_its_selection_state(
    tmp_path, data_dir
):
    full = _run(_cfg(), tmp_path / "full", data_dir)
    staged = _run(_cfg(select_epochs=2), tmp_path / "staged", data_dir)
    entry, ref = staged["variants"]["main"]["adam"], full["variants"]["main"]["adam"]
    rec = entry["search"]
    assert rec["protocol"] == "staged" and rec["pruned_at_epoch"] == 2
    # the selection stage is the full run's first two epochs, bit for bit (same chunk, keys)
    for p, q in zip(entry["grid"], ref["grid"], strict=True):
        assert p["epoch_train_loss"][:2] == q["epoch_train_loss"][:2]
    # the kept point is the lowest training cost after epoch 2, from the curves themselves
    after_two = [p["epoch_train_loss"][1] for p in entry["grid"]]
    best = int(np.argmin(after_two))
    assert rec["kept"] == [entry["grid"][best]["hparams"]]
    for i, p in enumerate(entry["grid"]):
        if i == best:
            assert None not in p["epoch_train_loss"] and p["final_train_loss"] is not None
        else:  # pruned: the curve up to the cut, nothing after it
            assert p["epoch_train_loss"][2:] == [None, None] and p["final_train_loss"] is None
    # continued from its epoch-2 state: the full run's curve (only a vmap width differs)
    np.testing.assert_allclose(
        entry["grid"][best]["epoch_train_loss"], ref["grid"][best]["epoch_train_loss"], rtol=1e-4
    )
    assert entry["best"]["index"] == best
    assert ref["search"]["protocol"] == "full" and ref["search"]["kept"] == [
        p["hparams"] for p in ref["grid"]
    ]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [1, 3], ids=["in-selection", "in-continuation"])
def test_a_staged_run_resumed_mid_stage_equals_the_uninterrupted_one_bit_for_bit(
    tmp_path, data_dir, stop
):
    cfg = _cfg(select_epochs=2, grid_extensions=1)
    whole = _run(cfg, tmp_path / "whole", data_dir)
    with pytest.raises(RunInterrupted):
        _run(cfg, tmp_path / "cut", data_dir, stop_after=stop)
    resumed = _run(cfg, tmp_path / "cut", data_dir, resume=True)
    assert _curves(resumed) == _curves(whole)
    for opt in ("adam", "sgd"):
        assert (
            resumed["variants"]["main"][opt]["search"] == whole["variants"]["main"][opt]["search"]
        )
    with np.load(tmp_path / "whole/done/main/adam/final_chunk0.npz") as a:
        with np.load(tmp_path / "cut/done/main/adam/final_chunk0.npz") as b:
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The ledger of training time: the two sessions together timed each epoch of each chunk
    # once, as the uninterrupted run did, and the report sums them (not only the last session).
    timed = {run: _ledger(tmp_path / run) for run in ("whole", "cut")}
    assert sorted(timed["cut"]) == sorted(timed["whole"])
    chunks = {c for c, _ in timed["whole"]}
    assert {"main/adam/chunk0", "main/adam/final_chunk0", "main/sgd/chunk0"} <= chunks
    for run, report in (("whole", whole), ("cut", resumed)):
        seconds = timed[run].values()
        assert report["train_seconds"] == pytest.approx(sum(seconds), abs=0.1)
        assert all(s > 0 for s in seconds)
        per_opt = report["variants"]["main"]
        assert sum(e["train_seconds"] for e in per_opt.values()) == pytest.approx(
            report["train_seconds"], abs=0.2
        )


def _ledger(run_dir):
    """``{(chunk, epoch): seconds}`` of a run directory's epoch ledger (each pair once)."""
    out = {}
    for line in (run_dir / "epoch_seconds.jsonl").read_text().splitlines():
        e = json.loads(line)
        assert (e["chunk"], e["epoch"]) not in out, e
        out[e["chunk"], e["epoch"]] = e["seconds"]
    return out


@pytest.mark.slow
def test_a_best_at_the_grid_edge_extends_the_grid_until_inside_or_the_limit(tmp_path, data_dir):
    cfg = _cfg(grid_extensions=3)
    cfg = dataclasses.replace(cfg, optimizers={"sgd": {"learning_rate": [0.01, 0.03]}}, epochs=2)
    report = _run(cfg, tmp_path / "ext", data_dir)
    entry = report["variants"]["main"]["sgd"]
    lrs = [p["hparams"]["learning_rate"] for p in entry["grid"]]
    added = [e["value"] for e in entry["search"]["extensions"]]
    # small steps on 2 epochs of logistic regression: the largest step is best each round
    assert added == pytest.approx([0.09, 0.27, 0.81][: len(added)]) and added
    assert lrs == sorted(lrs) and set(added) <= set(lrs) and len(lrs) == 2 + len(added)
    best = entry["best"]["hparams"]["learning_rate"]
    costs = {p["hparams"]["learning_rate"]: p["epoch_train_loss"][-1] for p in entry["grid"]}
    assert costs[best] == min(costs.values())
    if len(added) < 3:  # it stopped because the best came inside
        assert lrs[0] < best < lrs[-1] and entry["search"]["still_at_edge"] == []
        assert entry["grid_edges"] == []
    else:
        assert entry["search"]["still_at_edge"] == ([best] if best == lrs[-1] else [])
    plain = _run(dataclasses.replace(cfg, grid_extensions=0), tmp_path / "plain", data_dir)
    assert plain["variants"]["main"]["sgd"]["grid_edges"], "the plain grid must sit at its edge"
    # the config's own points train as they would without the extension, bit for bit
    ours = {p["hparams"]["learning_rate"]: p["epoch_train_loss"] for p in entry["grid"]}
    for p in plain["variants"]["main"]["sgd"]["grid"]:
        assert ours[p["hparams"]["learning_rate"]] == p["epoch_train_loss"]


def test_point_arrays_keeps_each_column_and_its_dtype():
    # 108 points on 5 axes, as Figure 4's grid: one array per axis, in point order (the
    # columns are typed one axis at a time, never as a product of the columns).
    rng = np.random.default_rng(0)
    points = [
        {
            "bias_correction": bool(i % 2),
            "b1": [0.0, 0.9][i % 3 % 2],
            "b2": float(rng.choice([0.99, 0.999, 0.9999])),
            "learning_rate": float(10.0 ** rng.uniform(-5, -1)),
            "eps": 1e-8,
        }
        for i in range(108)
    ]
    arrays = _point_arrays(points)
    assert arrays["bias_correction"].dtype == np.bool_
    assert {arrays[k].dtype for k in ("b1", "b2", "learning_rate", "eps")} == {np.dtype(np.float32)}
    for k, column in arrays.items():
        np.testing.assert_array_equal(column, np.asarray([p[k] for p in points], column.dtype))
