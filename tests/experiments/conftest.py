"""Fixtures: the real MNIST (found, downloaded, or the test skipped: tests/mnist.py), tiny
device datasets, an isolated data dir."""

from pathlib import Path

import pytest

from tests import mnist

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def isolated(monkeypatch, tmp_path) -> Path:
    """A tmp folder with no env data dir, an empty cache dir and downloads switched off."""
    monkeypatch.delenv("ADAMJAX_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ADAMJAX_NO_DOWNLOAD", "1")
    return tmp_path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding mnist/; skips (or under ADAMJAX_REQUIRE_DATA=1 fails) without it."""
    return mnist.data_dir()


@pytest.fixture(scope="session")
def mnist_arrays(data_dir):
    from experiments import data

    return data.load("mnist", "train", data_dir), data.load("mnist", "test", data_dir)


@pytest.fixture(scope="session")
def tiny_data(mnist_arrays):
    """512 training and 256 test examples of the real MNIST, on the device."""
    from experiments import batching

    (xtr, ytr), (xte, yte) = mnist_arrays
    return batching.from_arrays(xtr[:512], ytr[:512], xte[:256], yte[:256], eval_batch_size=256)
