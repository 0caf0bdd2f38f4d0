"""ZCA whitening (Figure 3's CIFAR-10 pre-processing) on synthetic data.

The tolerance comes from the regulariser: the whitened covariance is
``U diag(lambda / (lambda + eps)) U^T``, so its eigenvalues lie in
``[lambda_min / (lambda_min + eps), lambda_max / (lambda_max + eps)]`` and its distance to
the identity is ``eps / (lambda_min + eps)``, plus float64 rounding.
"""

import dataclasses
import json

import numpy as np
import pytest

from experiments import batching, data
from experiments.config import load_config
from experiments.runner import run_experiment
from experiments.whitening import fit_zca

ROUNDING = 1e-9  # float64 eigen-decomposition of a well-conditioned 12x12 matrix


def correlated(n=4000, d=12, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(0.05, 1.0, d)  # a spread of variances
    return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d)


def cov(x):
    c = x - x.mean(0)
    return c.T @ c / len(x)


@pytest.mark.parametrize("eps", [1e-1, 1e-3])
def test_whitened_training_covariance_is_identity_up_to_the_regulariser(eps):
    x = correlated()
    lam = np.linalg.eigvalsh(cov(x))  # independent float64 reference
    zca = fit_zca(x, eps)
    white = np.asarray(zca(x), np.float64)
    got = np.linalg.eigvalsh(cov(white))
    float32_storage = 1e-6  # the whitened data is stored as float32
    assert np.all(np.abs(got - 1) <= eps / (lam.min() + eps) + float32_storage)
    # and the regulariser's shrinkage is really there: eigenvalues lambda / (lambda + eps)
    np.testing.assert_allclose(np.sort(got), np.sort(lam / (lam + eps)), atol=float32_storage)
    np.testing.assert_allclose(white.mean(0), 0, atol=1e-5)


def test_zca_is_the_symmetric_inverse_square_root_of_the_regularised_covariance():
    x = correlated(seed=1)
    eps = 1e-2
    zca = fit_zca(x, eps, chunk=333)  # chunked covariance: same result as one block
    c = cov(x)
    np.testing.assert_allclose(zca.matrix, zca.matrix.T, atol=ROUNDING)
    reference = np.linalg.inv(c + eps * np.eye(len(c)))
    np.testing.assert_allclose(zca.matrix @ zca.matrix, reference, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(zca.mean, x.mean(0), rtol=1e-12)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="eps must be > 0"):
        fit_zca(correlated(), 0.0)
    zca = fit_zca(correlated(), 0.1)
    with pytest.raises(ValueError, match="ZCA fitted on 12 features, got inputs of 5"):
        zca(np.zeros((3, 5)))


N = 24  # records per synthetic CIFAR-10 file


def write_cifar(folder, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for files in data.CIFAR10_FILES.values():
        for name in files:
            labels = rng.integers(0, 10, N)
            # smooth images (neighbouring pixels correlated), as whitening is meant for
            base = rng.integers(0, 200, (N, 3, 1, 1)) + rng.integers(0, 56, (N, 3, 32, 32))
            table = np.concatenate([labels[:, None], base.reshape(N, -1)], axis=1)
            (folder / name).write_bytes(table.astype(np.uint8).tobytes())


def test_device_data_is_whitened_with_the_training_fit(isolated, monkeypatch):
    monkeypatch.setattr(data, "CIFAR10_RECORDS_PER_FILE", N)
    write_cifar(isolated / "cifar10")
    dev = batching.load_device_data(
        "cifar10", data_dir=isolated, eval_batch_size=N, whiten="zca", zca_epsilon=0.05
    )
    (xtr, _), (xte, _) = (data.load("cifar10", s, isolated) for s in ("train", "test"))
    scale = lambda x: x.reshape(len(x), -1).astype(np.float64) / 255  # noqa: E731
    zca = fit_zca(scale(xtr), 0.05)
    assert dev.x_train.dtype == np.float32 and dev.x_train.shape == (5 * N, 3072)
    np.testing.assert_allclose(np.asarray(dev.x_test), zca(scale(xte)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dev.x_train), zca(scale(xtr)), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fig3_cifar10_runs_whitened_with_dropout_variants(isolated, monkeypatch):
    monkeypatch.setattr(data, "CIFAR10_RECORDS_PER_FILE", N)
    write_cifar(isolated / "d" / "cifar10")
    cfg = load_config("fig3_cifar10", quick=True)
    assert cfg.whiten == "zca" and {v: c.dropout for v, c in cfg.variant_configs()} == {
        "plain": 0.0,
        "dropout": 0.5,
    }
    one_lr = {k: {**v, "learning_rate": v["learning_rate"][1]} for k, v in cfg.optimizers.items()}
    cfg = dataclasses.replace(
        cfg, epochs=1, train_subset=0, test_subset=0, eval_batch_size=N, batch_size=N,
        optimizers={"adam": one_lr["adam"]}, variants=cfg.variants,
    )  # fmt: skip
    run_experiment(cfg, isolated / "run", data_dir=isolated / "d", log=lambda *_: None)
    saved = json.loads((isolated / "run" / "results.json").read_text())
    assert set(saved["variants"]) == {"plain", "dropout"}
    assert saved["config"]["whiten"] == "zca"
    assert (isolated / "run" / "fig3_cifar10.png").is_file()
