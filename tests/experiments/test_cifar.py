"""CIFAR-10 binary version from tiny synthetic files: layout, lookup, errors, fig3_cnn run."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import data
from experiments.cli import main
from experiments.config import ConfigError, load_config, with_dataset

N = 20  # records per synthetic file (the official files hold 10000)


def record_bytes(labels: np.ndarray, chw: np.ndarray) -> bytes:
    """Binary-version records: one label byte, then 3x32x32 channel-major pixels."""
    table = np.concatenate([labels[:, None], chw.reshape(len(labels), -1)], axis=1)
    return table.astype(np.uint8).tobytes()


def write_cifar(folder, n=N, seed=0):
    """Six synthetic batch files in ``folder``; returns ``{split: (chw images, labels)}``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, files in data.CIFAR10_FILES.items():
        xs, ys = [], []
        for name in files:
            x = rng.integers(0, 256, (n, 3, 32, 32))
            y = rng.integers(0, 10, n)
            (folder / name).write_bytes(record_bytes(y, x))
            xs.append(x)
            ys.append(y)
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


@pytest.fixture
def isolated(isolated, monkeypatch):
    """conftest's isolated folder, with 20-record files accepted as complete."""
    monkeypatch.setattr(data, "CIFAR10_RECORDS_PER_FILE", N)
    return isolated


def test_reads_official_layout_nhwc(isolated):
    written = write_cifar(isolated / "d" / "cifar10" / "cifar-10-batches-bin")
    for split, n in (("train", 5 * N), ("test", N)):
        x, y = data.load("cifar10", split, isolated / "d")
        chw, labels = written[split]
        assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.uint8
        np.testing.assert_array_equal(y, labels)
        np.testing.assert_array_equal(x, chw.transpose(0, 2, 3, 1))  # channel-major -> NHWC
        # pixel (row 3, column 5) of channel 2 of image 7: byte 1 + 2*1024 + 3*32 + 5 of record 7
        assert x[7, 3, 5, 2] == chw[7, 2, 3, 5]


def test_files_directly_in_folder_and_env_var(isolated, monkeypatch):
    write_cifar(isolated / "env" / "cifar10")
    monkeypatch.setenv("ADAMJAX_DATA_DIR", str(isolated / "env"))
    assert data.search_dirs("cifar10")[0] == isolated / "env" / "cifar10"
    x, _ = data.load("cifar10", "test")
    assert x.shape == (N, 32, 32, 3)


def test_float_inputs_in_unit_range_and_cnn_shapes(isolated):
    import jax
    import jax.numpy as jnp

    from experiments import batching
    from experiments.tasks import make_task
    from experiments.train import _to_float as to_float  # what training feeds the model

    write_cifar(isolated / "cifar10")
    (xtr, ytr), (xte, yte) = (data.load("cifar10", s, isolated) for s in ("train", "test"))
    dev = batching.from_arrays(xtr[:8], ytr[:8], xte[:8], yte[:8], eval_batch_size=8)
    assert dev.x_train.shape == (8, 32 * 32 * 3)
    x = to_float(dev.x_train)
    assert x.dtype == jnp.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
    np.testing.assert_allclose(np.asarray(x).reshape(8, 32, 32, 3), xtr[:8] / 255.0, rtol=1e-6)
    task = make_task("cnn", image_shape=data.image_shape("cifar10"))
    params = task.init(jax.random.key(0))
    assert params["conv0"]["kernel"].shape == (5, 5, 3, 64)  # 3 input channels
    assert params["fc"]["kernel"].shape == (4 * 4 * 128, 1000)  # 32 -> 16 -> 8 -> 4
    nll, correct = task.evaluate(params, x, dev.y_train)
    assert nll.shape == (8,) and correct.shape == (8,) and bool(jnp.isfinite(nll).all())


@pytest.mark.parametrize("cut", [1, 3073, 100])
def test_truncated_file(isolated, cut):
    folder = isolated / "cifar10" / "cifar-10-batches-bin"
    write_cifar(folder)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(data.CorruptFileError, match=r"data_batch_3\.bin: truncated"):
        data.load("cifar10", "train", isolated)


def test_official_record_count_is_required(isolated, monkeypatch):
    write_cifar(isolated / "cifar10")
    monkeypatch.setattr(data, "CIFAR10_RECORDS_PER_FILE", 10000)
    with pytest.raises(data.CorruptFileError, match=r"test_batch\.bin: truncated.*10000 records"):
        data.load("cifar10", "test", isolated)


def test_bad_label(isolated):
    folder = isolated / "cifar10"
    write_cifar(folder)
    raw = bytearray((folder / "test_batch.bin").read_bytes())
    raw[3073] = 10
    (folder / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(data.CorruptFileError, match=r"test_batch\.bin: label byte 10"):
        data.load("cifar10", "test", isolated)


def test_missing_files_say_where_and_how(isolated):
    write_cifar(isolated / "d" / "cifar10")
    (isolated / "d" / "cifar10" / "data_batch_5.bin").unlink()
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("cifar10", "train", isolated / "d")
    msg = str(e.value)
    assert "data_batch_5.bin" in msg and str(isolated / "d" / "cifar10") in msg
    assert str(isolated / "cache" / "adamjax" / "cifar10") in msg
    assert "cifar-10-binary.tar.gz" in msg and data.CIFAR10_ARCHIVE_MD5 in msg
    assert "ADAMJAX_DATA_DIR" in msg and "--data-dir" in msg


def test_cli_fig3_cnn_cifar10_without_files(isolated, capsys):
    argv = ["fig3_cnn", "--quick", "--dataset", "cifar10", "--data-dir", str(isolated / "none")]
    assert main([*argv, "--out", str(isolated / "run")]) == 2
    err = capsys.readouterr().err
    assert "data_batch_1.bin not found" in err and "cifar-10-binary.tar.gz" in err


def test_other_experiments_reject_cifar10(capsys):
    for name in ("fig1_logreg", "fig2_mlp", "fig4_bias_correction"):
        with pytest.raises(ConfigError, match=f"{name}.*'cifar10'"):
            with_dataset(load_config(name, quick=True), "cifar10")
        assert main([name, "--quick", "--dataset", "cifar10"]) == 2
        err = capsys.readouterr().err
        assert name in err and "cifar10" in err
    cfg = with_dataset(load_config("fig3_cnn", quick=True), "cifar10")
    assert cfg.dataset == "cifar10" and cfg.model == "cnn"


def test_fig3_cnn_end_to_end_on_cifar(isolated, tmp_path):
    from experiments.runner import run_experiment

    write_cifar(isolated / "d" / "cifar10" / "cifar-10-batches-bin")
    cfg = with_dataset(load_config("fig3_cnn", quick=True), "cifar10")
    cfg = dataclasses.replace(  # fig3_cnn's CNN, one optimizer, 1 epoch of 16 images
        cfg,
        epochs=1,
        batch_size=8,
        train_subset=16,
        test_subset=16,
        eval_batch_size=16,
        optimizers={"adam": {"learning_rate": [1e-3]}},
    )
    out = tmp_path / "run"
    run_experiment(cfg, out, data_dir=isolated / "d", log=lambda *_: None)
    report = json.loads((out / "results.json").read_text())
    assert report["experiment"] == "fig3_cnn" and report["config"]["dataset"] == "cifar10"
    (point,) = report["variants"]["main"]["adam"]["grid"]
    assert len(point["epoch_train_loss"]) == 1 and np.isfinite(point["test_loss"])
    assert 0 <= point["test_accuracy"] <= 1
