"""Training: vmapped grid == separate runs, NaN isolation, diverged configs leave the program,
bit-exact resume, killed checkpoint."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import train
from experiments.checkpoint import Checkpointer
from experiments.config import from_dict
from experiments.runner import RunInterrupted, run_experiment
from experiments.tasks import make_task
from experiments.train import Job, still_training, train_chunk

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "model": "logreg",
    "epochs": 3,
    "batch_size": 128,
    "train_subset": 512,
    "test_subset": 256,
    "eval_batch_size": 256,
    "weight_decay": 1e-4,
    "schedule": "inverse_sqrt",
    "optimizers": {"adam": {"learning_rate": [1e-3, 1e-2]}, "sgd_nesterov": {"learning_rate": 0.1}},
}


@pytest.fixture(scope="module")
def job():
    return Job(make_task("logreg", weight_decay=1e-4), "adam", "inverse_sqrt", 128, 2, 0)


def test_vmapped_grid_equals_separate_runs_and_isolates_nan(job, tiny_data):
    lrs = np.array([1e-3, 1e-2, 1e30], np.float32)  # the last one diverges
    hp = {"learning_rate": lrs, "b1": np.full(3, 0.9, np.float32)}
    ids = np.arange(3)
    together = train_chunk(job, tiny_data, hp, ids)
    assert together["diverged"].tolist() == [False, False, True]
    assert np.isfinite(together["iter_loss"][:2]).all()
    for i in range(2):
        alone = train_chunk(
            job, tiny_data, {k: v[i : i + 1] for k, v in hp.items()}, ids[i : i + 1]
        )
        np.testing.assert_allclose(
            together["iter_loss"][i], alone["iter_loss"][0], rtol=2e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            together["final_test_acc"][i], alone["final_test_acc"][0], atol=1e-6
        )
    # training helps: the loss goes down from ln(10)
    assert together["epoch_loss"][1, -1] < together["epoch_loss"][1, 0] < 2.3


def test_each_config_has_its_own_rng_stream(job, tiny_data):
    hp = {"learning_rate": np.full(2, 1e-2, np.float32)}
    out = train_chunk(job, tiny_data, hp, np.array([0, 1]))
    assert not np.array_equal(out["iter_loss"][0], out["iter_loss"][1])  # different shuffles


def test_still_training_drops_diverged_configs_once_they_are_an_eighth():
    losses = np.ones((16, 4), np.float32)
    alive = np.ones(16, bool)
    losses[3, 2] = np.nan
    np.testing.assert_array_equal(still_training(alive, losses), alive)  # 1 of 16: kept
    losses[5, 0] = np.inf
    expected = alive.copy()
    expected[[3, 5]] = False
    np.testing.assert_array_equal(still_training(alive, losses), expected)  # 2 of 16: dropped
    np.testing.assert_array_equal(still_training(expected, losses), expected)  # stays dropped
    small = np.array([[1.0, np.nan], [1.0, 1.0]], np.float32)
    np.testing.assert_array_equal(still_training(np.ones(2, bool), small), [False, True])


def _spy_widths(monkeypatch) -> list[int]:
    """The config count of every epoch program train_chunk runs."""
    widths: list[int] = []
    make = train.make_epoch_fn

    def spying(*args, **kwargs):
        fn = make(*args, **kwargs)
        return lambda state, keys, *rest: (widths.append(len(keys)), fn(state, keys, *rest))[1]

    monkeypatch.setattr(train, "make_epoch_fn", spying)
    return widths


DIVERGING = {"learning_rate": np.array([1e-3, 1e30, 1e-2], np.float32)}  # the middle one diverges


def test_a_diverged_config_leaves_the_program_and_the_rest_train_on(job, tiny_data, monkeypatch):
    job = dataclasses.replace(job, epochs=3)
    ids = np.arange(3)
    widths = _spy_widths(monkeypatch)
    pruned = train_chunk(job, tiny_data, DIVERGING, ids)
    assert widths == [3, 2, 2]  # the NaN config trains its first epoch only
    assert pruned["diverged"].tolist() == [False, True, False]
    assert np.isnan(pruned["iter_loss"][1, 4:]).all() and np.isnan(pruned["final_train_loss"][1])
    monkeypatch.setattr(train, "still_training", lambda alive, _: alive)  # nobody leaves
    widths.clear()
    full = train_chunk(job, tiny_data, DIVERGING, ids)
    assert widths == [3, 3, 3]
    for key in ("iter_loss", "test_loss", "test_acc", "final_train_loss", "final_test_acc"):
        np.testing.assert_allclose(pruned[key][[0, 2]], full[key][[0, 2]], rtol=2e-5, atol=1e-6)


def test_resume_after_a_config_left_is_bit_exact(job, tiny_data, tmp_path, monkeypatch):
    job = dataclasses.replace(job, epochs=3)
    ids = np.arange(3)
    widths = _spy_widths(monkeypatch)
    whole = train_chunk(job, tiny_data, DIVERGING, ids)
    ckpt = Checkpointer(tmp_path / "ckpt")
    assert train_chunk(job, tiny_data, DIVERGING, ids, ckpt, stop_after=2) is None
    widths.clear()
    resumed = train_chunk(job, tiny_data, DIVERGING, ids, ckpt, resume=True)
    assert widths == [2]  # the diverged config stays out after the restart
    for key, value in whole.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)


def _curves(out: Path) -> dict:
    report = json.loads((out / "results.json").read_text())
    return {
        (v, o): [
            (p["epoch_train_loss"], p["final_train_loss"], p["test_loss"], p["test_accuracy"])
            for p in e["grid"]
        ]
        for v, per in report["variants"].items()
        for o, e in per.items()
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("full")
    report = run_experiment(
        from_dict("tiny", TINY), out, data_dir=data_dir, plot=False, log=lambda *_: None
    )
    return out, report


def test_results_json_and_csvs(uninterrupted):
    out, report = uninterrupted
    adam = report["variants"]["main"]["adam"]
    assert adam["swept"] == ["learning_rate"] and len(adam["grid"]) == 2
    best = adam["best"]
    # "best" is the grid point with the lowest final-epoch training loss (none diverged here).
    finals = [p["epoch_train_loss"][-1] for p in adam["grid"]]
    assert finals[0] != finals[1]  # otherwise any index would pass
    assert best["index"] == int(np.argmin(finals))
    assert best["hparams"] == adam["grid"][best["index"]]["hparams"]
    assert best["final_train_loss"] == adam["grid"][best["index"]]["final_train_loss"]
    assert len(best["epoch_train_loss"]) == 3 and len(best["iter_train_loss"]) == 3 * 4
    assert 0.5 < best["test_accuracy"] <= 1 and best["diverged"] is False
    lines = (out / "curves" / "main_adam_epochs.csv").read_text().splitlines()
    assert (
        lines[0].startswith("grid_index,learning_rate,epoch,train_loss") and len(lines) == 1 + 2 * 3
    )


def test_resume_is_bit_exact(uninterrupted, tmp_path, data_dir):
    cfg = from_dict("tiny", TINY)
    with pytest.raises(RunInterrupted):
        run_experiment(
            cfg, tmp_path, data_dir=data_dir, plot=False, stop_after=1, log=lambda *_: None
        )
    assert not (tmp_path / "results.json").exists()
    run_experiment(cfg, tmp_path, data_dir=data_dir, plot=False, resume=True, log=lambda *_: None)
    assert _curves(tmp_path) == _curves(uninterrupted[0])


def test_resume_rejects_a_different_config(uninterrupted, tmp_path, data_dir):
    cfg = from_dict("tiny", TINY)
    with pytest.raises(RunInterrupted):
        run_experiment(
            cfg, tmp_path, data_dir=data_dir, plot=False, stop_after=1, log=lambda *_: None
        )
    with pytest.raises(ValueError, match="different config"):
        run_experiment(
            dataclasses.replace(cfg, seed=1), tmp_path, data_dir=data_dir, resume=True, plot=False
        )


KILL_SCRIPT = """
import os, sys
from orbax.checkpoint._src.path import atomicity
from experiments.config import from_dict
from experiments.runner import run_experiment

original = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self, *args, **kwargs):
    if self.get().name.startswith("2.orbax-checkpoint-tmp"):
        os._exit(137)  # epoch 2's checkpoint: fully written to its temporary dir, never renamed
    return await original(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
run_experiment(from_dict("tiny", eval(sys.argv[2])), sys.argv[1], plot=False)
"""


def test_killed_while_checkpointing_resumes_from_last_complete(uninterrupted, tmp_path, data_dir):
    env = {**os.environ, "ADAMJAX_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path), repr(TINY)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 137, proc.stderr[-2000:]
    ckpt = tmp_path / "ckpt" / "main" / "adam" / "chunk0"
    names = sorted(p.name for p in ckpt.iterdir())
    assert "1" in names and "2" not in names and any("tmp" in n for n in names), names
    run_experiment(
        from_dict("tiny", TINY),
        tmp_path,
        data_dir=data_dir,
        plot=False,
        resume=True,
        log=lambda *_: None,
    )
    assert _curves(tmp_path) == _curves(uninterrupted[0])
