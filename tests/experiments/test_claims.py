"""The paper's claims and the grid-edge flags, on small synthetic results (no training)."""

import math

import pytest

from experiments import claims, edges, results


def _point(i, hparams, last, diverged=False, **extra):
    losses = [None if last is None else last * 2, last]
    return {
        "index": i,
        "hparams": hparams,
        "epoch_train_loss": losses,
        "diverged": diverged,
        **extra,
    }


def _entry(lrs, costs, swept=("learning_rate",), diverged=()):
    grid = [
        _point(i, {"learning_rate": lr, "b1": 0.9}, c, i in diverged)
        for i, (lr, c) in enumerate(zip(lrs, costs, strict=True))
    ]
    finite = [(c, i) for i, c in enumerate(costs) if i not in diverged and c is not None]
    best = grid[min(finite)[1]] if finite else None
    return {"label": "x", "swept": list(swept), "grid": grid, "best": best}


def _report(model, variants, **cfg):
    return {"config": {"model": model, "epochs": 2, "plot": "curves", **cfg}, "variants": variants}


LRS = [1e-3, 3e-3, 1e-2, 3e-2]


# ---- grid edges ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "costs, edge, value",
    [
        ([4.0, 3.0, 2.0, 1.0], "high", 3e-2),
        ([1.0, 2.0, 3.0, 4.0], "low", 1e-3),
        ([3.0, 1.0, 2.0, 4.0], None, None),
    ],
)
def test_edge_flag_marks_a_best_at_either_end(costs, edge, value):
    flags = edges.grid_edges(_entry(LRS, costs))
    if edge is None:
        assert flags == []
    else:
        assert [(f["axis"], f["edge"], f["value"]) for f in flags] == [
            ("learning_rate", edge, value)
        ]
        assert flags[0]["grid"] == LRS and flags[0]["cost"] == min(costs)


def test_edge_flag_ignores_diverged_points_when_finding_the_best():
    # the largest lr "diverged" with a NaN-free but meaningless low loss: the best is inside
    flags = edges.grid_edges(_entry(LRS, [3.0, 1.0, 2.0, 0.1], diverged=(3,)))
    assert flags == []
    # and a best next to a diverged top value is still flagged only if it is itself an edge
    flags = edges.grid_edges(_entry(LRS, [3.0, 2.0, 1.0, None]))
    assert flags == []


def test_single_value_axis_is_not_swept_and_never_flagged():
    assert edges.grid_edges(_entry([1e-3], [1.0])) == []


def test_edges_are_per_slice_when_only_the_learning_rate_is_checked():
    # Figure 4 layout: b1 splits the grid; b1=0 has its best inside, b1=0.9 at the top.
    grid = []
    for b1, costs in ((0.0, [3.0, 1.0, 2.0]), (0.9, [3.0, 2.0, 0.5])):
        for lr, c in zip(LRS[:3], costs, strict=True):
            grid.append(_point(len(grid), {"learning_rate": lr, "b1": b1}, c))
    entry = {"swept": ["learning_rate", "b1"], "grid": grid, "best": None}
    flags = edges.grid_edges(entry, check=("learning_rate",))
    assert [(f["slice"], f["edge"], f["value"]) for f in flags] == [({"b1": 0.9}, "high", 1e-2)]
    # checking every numeric axis over the whole grid instead flags b1 as well
    whole = edges.grid_edges(entry)
    assert {f["axis"] for f in whole} == {"learning_rate", "b1"}


def test_annotate_puts_flags_and_warnings_in_the_report():
    report = _report(
        "logreg",
        {
            "main": {
                "adam": _entry(LRS, [4.0, 3.0, 2.0, 1.0]),
                "sgd_nesterov": _entry(LRS, [4.0, 1.0, 2.0, 3.0]),
                "adagrad": _entry(LRS, [4.0, 3.0, 2.5, 2.6]),
            }
        },
    )
    results.annotate(report)
    assert report["variants"]["main"]["sgd_nesterov"]["grid_edges"] == []
    assert report["variants"]["main"]["adam"]["grid_edges"][0]["edge"] == "high"
    (warning,) = report["grid_edge_warnings"]
    assert warning.startswith("main/adam: best learning_rate=0.03 is the largest")
    printed = []
    results.print_verdicts(report, printed.append)
    assert printed[0].startswith("WARNING grid edge: main/adam")


# ---- claims --------------------------------------------------------------------------------


def _by_id(report):
    return {c["id"]: c for c in claims.evaluate_claims(report)}


def _fig1(adam, nesterov, adagrad):
    return _report(
        "logreg",
        {
            "main": {
                "adam": _entry([1e-2], [adam]),
                "sgd_nesterov": _entry([1e-1], [nesterov]),
                "adagrad": _entry([1e-1], [adagrad]),
            }
        },
    )


def test_fig1_adam_within_three_percent_of_nesterov():
    just_inside = _by_id(_fig1(0.2 * (1 + claims.FIG1_REL_TOL) * 0.999, 0.2, 0.3))
    just_outside = _by_id(_fig1(0.2 * (1 + claims.FIG1_REL_TOL) * 1.001, 0.2, 0.3))
    assert just_inside["fig1_adam_close_to_nesterov"]["passed"] is True
    assert just_outside["fig1_adam_close_to_nesterov"]["passed"] is False
    ratio = just_inside["fig1_adam_close_to_nesterov"]["numbers"]["ratio"]
    assert ratio == pytest.approx((1 + claims.FIG1_REL_TOL) * 0.999)


def test_fig1_adam_below_adagrad():
    assert _by_id(_fig1(0.26, 0.26, 0.31))["fig1_adam_below_adagrad"]["passed"] is True
    assert _by_id(_fig1(0.32, 0.26, 0.31))["fig1_adam_below_adagrad"]["passed"] is False


def test_claim_is_not_evaluated_when_an_optimizer_is_missing_or_diverged():
    report = _fig1(0.26, 0.26, 0.31)
    del report["variants"]["main"]["adagrad"]
    got = _by_id(report)
    assert got["fig1_adam_below_adagrad"]["passed"] is None
    assert "adagrad" in got["fig1_adam_below_adagrad"]["detail"]
    report["variants"]["main"]["sgd_nesterov"] = _entry([1e-1], [0.2], diverged=(0,))
    assert _by_id(report)["fig1_adam_close_to_nesterov"]["passed"] is None


def test_fig2_adam_lowest_in_each_panel():
    def panel(adam):
        return {
            "adam": _entry([1e-3], [adam]),
            "adagrad": _entry([1e-2], [0.2]),
            "rmsprop": _entry([1e-3], [0.25]),
        }

    got = _by_id(_report("mlp", {"dropout": panel(0.1), "deterministic": panel(0.21)}))
    assert got["fig2_adam_lowest_dropout"]["passed"] is True
    assert got["fig2_adam_lowest_deterministic"]["passed"] is False
    assert got["fig2_adam_lowest_deterministic"]["numbers"]["adagrad"] == 0.2


@pytest.mark.parametrize(
    "adam, nesterov, expected", [(0.3, 0.6, True), (1.1, 0.6, False), (0.3, 1.1, False)]
)
def test_fig3_adam_and_nesterov_ahead_of_adagrad(adam, nesterov, expected):
    report = _report(
        "cnn",
        {
            "main": {
                "adam": _entry([1e-3], [adam]),
                "sgd_nesterov": _entry([1e-2], [nesterov]),
                "adagrad": _entry([1e-2], [1.0]),
            }
        },
    )
    assert _by_id(report)["fig3_adam_nesterov_ahead_of_adagrad"]["passed"] is expected


def _fig4(loss):
    """A Figure 4 grid whose loss after epoch e is ``loss(b1, b2, bc, lr, e)`` (inf: diverged)."""
    grid = []
    for bc in (True, False):
        for b1 in (0.0, 0.9):
            for b2 in (0.99, 0.9999):
                for lr in (1e-4, 1e-3, 1e-2):
                    values = {e: loss(b1, b2, bc, lr, e) for e in (1, 4)}
                    diverged = any(math.isinf(v) for v in values.values())
                    grid.append(
                        _point(
                            len(grid),
                            {"learning_rate": lr, "b1": b1, "b2": b2, "bias_correction": bc},
                            None if diverged else values[4],
                            diverged,
                            **{f"train_loss_epoch_{e}": (None if diverged else v)
                               for e, v in values.items()},
                        )
                    )  # fmt: skip
    entry = {"swept": ["learning_rate", "b1", "b2", "bias_correction"], "grid": grid}
    return _report(
        "vae", {"main": {"adam": entry}}, epochs=4, report_epochs=[1, 4], plot="bias_correction"
    )


def _paper_like(b1, b2, bc, lr, e):
    base = {1e-4: 130.0, 1e-3: 110.0, 1e-2: 120.0}[lr] / e**0.1
    if not bc and b2 == 0.9999 and lr >= 1e-3:
        return math.inf if lr == 1e-2 else base * 1.2
    return base if bc else base * 1.002


def test_fig4_paper_like_grid_passes_both_claims():
    got = _by_id(_fig4(_paper_like))
    assert got["fig4_no_correction_unstable_at_b2_max"]["passed"] is True
    assert got["fig4_correction_never_worse"]["passed"] is True
    nums = got["fig4_no_correction_unstable_at_b2_max"]["numbers"]["b1=0.9"]
    assert nums["lagging_or_diverged_lrs"] == [1e-3, 1e-2]


def test_fig4_unstable_claim_fails_when_uncorrected_keeps_up_at_large_steps():
    def mild(b1, b2, bc, lr, e):
        v = _paper_like(b1, b2, True, lr, e)
        # uncorrected only lags by less than the 5 % margin, at b1 = 0.9
        return (
            v * (1 + 0.9 * claims.FIG4_LAG)
            if not bc and b1 == 0.9
            else _paper_like(b1, b2, bc, lr, e)
        )

    got = _by_id(_fig4(mild))
    assert got["fig4_no_correction_unstable_at_b2_max"]["passed"] is False


def test_fig4_never_worse_claim_fails_when_uncorrected_is_better_somewhere():
    def better_off(b1, b2, bc, lr, e):
        v = _paper_like(b1, b2, bc, lr, e)
        if not bc and b1 == 0.0 and b2 == 0.99 and e == 4:
            return _paper_like(b1, b2, True, lr, e) / (1 + 2 * claims.FIG4_TIE)
        return v

    got = _by_id(_fig4(better_off))
    claim = got["fig4_correction_never_worse"]
    assert claim["passed"] is False
    assert claim["detail"].endswith("fails at epoch=4 b1=0 b2=0.99")


def test_format_claims_prints_pass_fail_and_numbers():
    lines = claims.format_claims(claims.evaluate_claims(_fig1(0.26, 0.2, 0.31)))
    assert lines[0].startswith("FAIL Fig 1:") and "0.2600" in lines[0] and "0.2000" in lines[0]
    assert lines[1].startswith("PASS Fig 1:") and "0.3100" in lines[1]
