"""experiments.config: every shipped config loads; bad keys, types and ranges are rejected."""

import pytest

from experiments import cli
from experiments.config import ConfigError, available, from_dict, load_config, only_variants

BASE = {"model": "logreg", "epochs": 2, "optimizers": {"adam": {"learning_rate": [1e-3, 1e-2]}}}


@pytest.mark.parametrize("name", ["fig1_logreg", "fig2_mlp", "fig3_cnn", "fig4_bias_correction"])
@pytest.mark.parametrize("quick", [False, True])
def test_shipped_configs_load(name, quick):
    cfg = load_config(name, quick=quick)
    assert cfg.name == name and cfg.optimizers
    assert name in available()


def test_quick_overrides_and_fig4_grid():
    full, quick = (
        load_config("fig4_bias_correction"),
        load_config("fig4_bias_correction", quick=True),
    )
    assert full.epochs == 100 and full.report_epochs == (10, 100) and quick.epochs < full.epochs
    adam = full.optimizers["adam"]
    assert adam["bias_correction"] == [True, False] and adam["b2"] == [0.99, 0.999, 0.9999]
    # the paper's log10(alpha) in [-5, -1], in half-decade steps
    half_decades = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    assert adam["learning_rate"] == pytest.approx(half_decades)
    fig2 = load_config("fig2_mlp")
    assert [name for name, _ in fig2.variant_configs()] == ["dropout", "deterministic"]
    assert set(fig2.optimizers) == {"adam", "adagrad", "rmsprop", "sgd_nesterov", "adadelta"}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"epochz": 3}, "unknown key 'epochz'"),
        ({"epochs": "3"}, "'epochs' must be of type int"),
        ({"epochs": 0}, "'epochs' = 0 must be >= 1"),
        ({"dropout": 1.5}, "'dropout' = 1.5 must be in"),
        ({"model": "resnet"}, "'model' = 'resnet' must be one of"),
        ({"optimizers": {"adam": {"lr": 0.1}}}, "unknown key 'optimizers.adam.lr'"),
        ({"optimizers": {"adam": {"b1": [0.9, 1.0]}}}, "optimizers.adam.b1: 1.0 out of range"),
        (
            {"optimizers": {"adam": {"learning_rate": -1.0}}},
            "optimizers.adam.learning_rate: -1.0 out of range",
        ),
        (
            {"optimizers": {"adam": {"bias_correction": 1}}},
            "optimizers.adam.bias_correction: expected true/false",
        ),
        ({"optimizers": {"lion": {}}}, "unknown optimizer 'lion'"),
        ({"quick": {"epochs": -1}}, "'epochs' = -1 must be >= 1"),
        ({"variants": {"a": {"plot": "curves"}}}, "unknown key 'plot'"),
    ],
)
def test_bad_values_are_named(patch, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        from_dict("t", {**BASE, **patch})


def test_cli_help_lists_experiments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in (
        "fig1_logreg",
        "fig2_mlp",
        "fig3_cnn",
        "fig4_bias_correction",
        "--quick",
        "--resume",
    ):
        assert name in out


def test_cli_reports_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "logreg"\nepochz = 1\n[optimizers.adam]\nlearning_rate = 0.1\n')
    assert cli.main([str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "unknown key 'epochz'" in capsys.readouterr().err


def test_a_variant_can_change_an_optimizer_grid():
    raw = {
        "model": "mlp",
        "optimizers": {"adam": {"learning_rate": [1e-3, 1e-2], "b1": 0.9}, "sgd": {}},
        "variants": {"a": {"dropout": 0.5, "optimizers": {"adam": {"learning_rate": [1e-4]}}}},
    }
    ((name, cfg),) = from_dict("x", raw).variant_configs()
    assert name == "a" and cfg.dropout == 0.5
    assert cfg.optimizers == {"adam": {"learning_rate": [1e-4], "b1": 0.9}, "sgd": {}}
    raw["variants"]["a"]["optimizers"] = {"adagrad": {"learning_rate": 0.1}}
    with pytest.raises(ConfigError, match="adagrad"):
        from_dict("x", raw)


def test_one_panel_of_a_figure_runs_alone(tmp_path, capsys):
    fig2 = load_config("fig2_mlp")
    ((name, panel),) = only_variants(fig2, ["deterministic"]).variant_configs()
    assert name == "deterministic" and panel.weight_decay == 1e-4 and panel.dropout == 0.0
    both = only_variants(fig2, ["deterministic", "dropout"])
    assert [n for n, _ in both.variant_configs()] == ["dropout", "deterministic"]
    with pytest.raises(ConfigError, match="no such variant; its variants are dropout, determin"):
        only_variants(fig2, ["dropout", "drop"])
    with pytest.raises(ConfigError, match="'fig1_logreg' has no variants"):
        only_variants(load_config("fig1_logreg"), ["dropout"])
    assert cli.main(["fig2_mlp", "--variant", "drop", "--out", str(tmp_path / "r")]) == 2
    assert "--variant drop: experiment 'fig2_mlp' has no such variant" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
