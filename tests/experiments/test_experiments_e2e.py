"""Every shipped experiment end to end on the real MNIST, shrunk to a tiny setting."""

import dataclasses
import itertools
import json
import math

import pytest

from experiments.config import load_config
from experiments.runner import run_experiment

TINY = dict(train_subset=256, test_subset=256, eval_batch_size=256, epochs=2)


def _shrink(cfg):
    """Quick config, tiny data; each learning-rate list cut to its first value (fig4 kept whole)."""
    optimizers = cfg.optimizers
    if cfg.plot != "bias_correction":
        optimizers = {
            name: {k: (v[:1] if isinstance(v, list) else v) for k, v in hps.items()}
            for name, hps in optimizers.items()
        }
    extra = {"report_epochs": (1, 2)} if cfg.report_epochs else {}
    if cfg.model == "cnn":  # slow on CPU: one step of 128 images, one optimizer (compiles)
        extra.update(epochs=1, train_subset=128, test_subset=128, eval_batch_size=128)
        optimizers = {"adam": optimizers["adam"]}
    return dataclasses.replace(cfg, optimizers=optimizers, **{**TINY, **extra})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fig1_logreg", "fig2_mlp", "fig3_cnn", "fig4_bias_correction"])
def test_experiment_end_to_end(name, tmp_path, data_dir):
    cfg = _shrink(load_config(name, quick=True))
    report = run_experiment(cfg, tmp_path, data_dir=data_dir, log=lambda *_: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["experiment"] == name and saved["variants"].keys() == report["variants"].keys()
    for per_opt in saved["variants"].values():
        assert set(per_opt) == set(cfg.optimizers)
        for entry in per_opt.values():
            for point in entry["grid"]:
                assert len(point["epoch_train_loss"]) == cfg.epochs
                assert {
                    "hparams",
                    "final_train_loss",
                    "test_loss",
                    "test_accuracy",
                    "diverged",
                } <= point.keys()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    if name == "fig4_bias_correction":
        adam = saved["variants"]["main"]["adam"]
        # The whole grid of the config (b1: 2, b2: 3, bias correction: 2, and the config's
        # step sizes), each combination exactly once.
        axes = {k: v for k, v in cfg.optimizers["adam"].items() if isinstance(v, list)}
        assert (
            sorted(adam["swept"])
            == sorted(axes)
            == ["b1", "b2", "bias_correction", "learning_rate"]
        )
        n_alpha = len(axes["learning_rate"])
        assert n_alpha >= 5
        assert len(adam["grid"]) == 2 * 3 * 2 * n_alpha == math.prod(len(v) for v in axes.values())
        seen = {tuple(p["hparams"][k] for k in sorted(axes)) for p in adam["grid"]}
        assert seen == set(itertools.product(*(axes[k] for k in sorted(axes))))
        assert all("train_loss_epoch_1" in p for p in adam["grid"])
        assert pngs == [f"{name}_epoch1.png", f"{name}_epoch2.png"]
        # some large-alpha configs must blow up, and they must not spoil the small-alpha ones
        assert any(p["diverged"] for p in adam["grid"])
        assert all(not p["diverged"] for p in adam["grid"] if p["hparams"]["learning_rate"] <= 1e-4)
    else:
        assert pngs == [f"{name}.png"]
        for per_opt in saved["variants"].values():
            for entry in per_opt.values():
                assert entry["best"] is not None and 0 <= entry["best"]["test_accuracy"] <= 1
    assert (tmp_path / "curves").is_dir() and not (tmp_path / "ckpt").exists()
