"""``--seeds N``: every grid point trained with N seeds in the same vmapped program."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments import results
from experiments.config import load_config
from experiments.runner import run_experiment
from experiments.tasks import make_task
from experiments.train import Job, initial_states


def test_over_seeds_is_the_mean_and_sample_std_of_the_seed_major_rows():
    rng = np.random.default_rng(0)
    g, s = 3, 4
    epoch = rng.normal(size=(s * g, 5))
    div = np.zeros(s * g, bool)
    div[2 * g + 1] = True  # seed 2 of grid point 1 diverged
    got = results.over_seeds({"epoch_loss": epoch, "diverged": div}, s)
    for i in range(g):
        rows = epoch[[k * g + i for k in range(s)]]
        np.testing.assert_allclose(got["epoch_loss"][i], rows.mean(0), rtol=1e-12)
        dev = rows - rows.mean(0)
        np.testing.assert_allclose(
            got["epoch_loss_std"][i], np.sqrt((dev**2).sum(0) / (s - 1)), rtol=1e-12
        )
    assert got["diverged"].tolist() == [False, True, False]
    assert int(got["n_seeds"]) == s
    with pytest.raises(ValueError, match="not a multiple of 4 seeds"):
        results.over_seeds({"epoch_loss": epoch[:-1]}, s)


def test_init_seeds_give_each_config_its_own_parameters():
    task = make_task("logreg")
    job = Job(task, "adam", "constant", 128, 1, seed=3)
    hp = {"learning_rate": np.array([1e-3, 1e-3], np.float32)}
    same = initial_states(job, hp, 2)
    seeded = initial_states(job, hp, 2, init_seeds=np.array([3, 4]))
    k_same = np.asarray(same.params["linear"]["kernel"])
    k_seed = np.asarray(seeded.params["linear"]["kernel"])
    np.testing.assert_array_equal(k_same[0], k_same[1])
    np.testing.assert_array_equal(k_seed[0], k_same[0])  # seed 3 = the job's own seed
    assert not np.allclose(k_seed[0], k_seed[1])
    expected = task.init(jax.random.PRNGKey(4))["linear"]["kernel"]
    np.testing.assert_array_equal(k_seed[1], np.asarray(expected))


@pytest.mark.slow
def test_seed_zero_of_a_multi_seed_run_is_the_single_seed_run(tmp_path, data_dir):
    cfg = load_config("fig1_logreg", quick=True)
    cfg = dataclasses.replace(
        cfg,
        optimizers={"adam": {"learning_rate": [1e-3, 1e-2]}},
        train_subset=512,
        test_subset=256,
        eval_batch_size=256,
        epochs=2,
    )
    quiet = dict(data_dir=data_dir, log=lambda *_: None, plot=False)
    one = run_experiment(cfg, tmp_path / "one", **quiet)
    two = run_experiment(dataclasses.replace(cfg, seeds=2), tmp_path / "two", **quiet)
    with np.load(tmp_path / "one/done/main/adam/chunk0.npz") as f:
        single = dict(f)
    with np.load(tmp_path / "two/done/main/adam/chunk0.npz") as f:
        both = dict(f)
    assert both["epoch_loss"].shape == (4, 2)
    # The same streams; only the vmap width differs (4 configs against 2), which may round
    # differently on some CPUs: equal to float32 rounding, as every width comparison here.
    np.testing.assert_allclose(both["epoch_loss"][:2], single["epoch_loss"], rtol=2e-5, atol=1e-6)
    assert not np.allclose(both["epoch_loss"][2:], single["epoch_loss"])
    entry = two["variants"]["main"]["adam"]
    assert entry["seeds"] == 2 and one["variants"]["main"]["adam"]["seeds"] == 1
    for i, point in enumerate(entry["grid"]):
        pair = both["epoch_loss"][[i, 2 + i], -1]
        assert point["epoch_train_loss"][-1] == pytest.approx(pair.mean(), rel=1e-6)
        assert point["epoch_train_loss_std"][-1] == pytest.approx(
            abs(pair[0] - pair[1]) / np.sqrt(2), rel=1e-4
        )
    assert len(entry["best"]["iter_train_loss_std"]) == len(entry["best"]["iter_train_loss"])
