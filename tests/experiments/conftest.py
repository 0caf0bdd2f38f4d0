"""Fixtures: the real MNIST from $ADAMJAX_DATA_DIR (or ../shared/data), tiny device datasets."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def real_data_dir() -> Path:
    env = os.environ.get("ADAMJAX_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / "mnist").is_dir():
        pytest.fail(
            f"real MNIST not found in {path / 'mnist'}: set ADAMJAX_DATA_DIR to a folder holding "
            "mnist/ with the four official IDX files (CI uses ../shared/data)",
            pytrace=False,
        )
    return path


@pytest.fixture
def isolated(monkeypatch, tmp_path) -> Path:
    """A tmp folder with no env data dir, an empty cache dir and downloads switched off."""
    monkeypatch.delenv("ADAMJAX_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ADAMJAX_NO_DOWNLOAD", "1")
    return tmp_path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return real_data_dir()


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
