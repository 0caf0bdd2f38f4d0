"""IMDB bag-of-words reader (Figure 1b) on small labeledBow.feat files the tests write.

The real Large Movie Review Dataset is not on the test machine: these files follow its
svmlight layout (``rating idx:count ...``), with random words and ratings.
"""

import dataclasses
import json

import numpy as np
import pytest

from experiments import data, imdb
from experiments.config import ConfigError, from_dict, load_config
from experiments.runner import run_experiment


def write_bow(path, n, seed, vocab_seen=12_000, words=30):
    """A labeledBow.feat of ``n`` reviews; returns the dense counts [n, vocab_seen], ratings."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n, vocab_seen), np.int64)
    ratings = rng.choice([1, 2, 3, 4, 7, 8, 9, 10], n)
    lines = []
    for i in range(n):
        idx = np.sort(rng.choice(vocab_seen, words, replace=False))
        c = rng.integers(1, 4, words)
        counts[i, idx] = c
        lines.append(
            " ".join([str(ratings[i])] + [f"{j}:{k}" for j, k in zip(idx, c, strict=True)])
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return counts, ratings


def test_reader_keeps_the_10000_most_frequent_words_as_binary_features(tmp_path):
    counts, ratings = write_bow(tmp_path / "labeledBow.feat", 40, seed=0)
    x, y = imdb.read_labeled_bow(tmp_path / "labeledBow.feat")
    assert x.shape == (40, 10_000) and x.dtype == np.uint8
    # independent reference: words with index < 10000 and a positive count, as 0/255
    expected = np.where(counts[:, :10_000] > 0, 255, 0)
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(y, (ratings >= 7).astype(np.int32))
    assert 0 < y.sum() < 40  # both classes present


def test_reader_names_file_and_line_of_a_bad_record(tmp_path):
    bad = tmp_path / "labeledBow.feat"
    bad.write_text("9 0:1 5:2\n8 3-1\n")
    with pytest.raises(data.CorruptFileError, match=r"labeledBow\.feat, line 2: not 'rating"):
        imdb.read_labeled_bow(bad)
    bad.write_text("9 0:1\n5 3:1\n")
    with pytest.raises(data.CorruptFileError, match=r"line 2: rating 5 is neither negative"):
        imdb.read_labeled_bow(bad)


def test_lookup_through_the_data_dir_and_the_env_variable(isolated, monkeypatch):
    root = isolated / "d"
    counts, _ = write_bow(root / "imdb" / "aclImdb" / "train" / "labeledBow.feat", 8, seed=1)
    write_bow(root / "imdb" / "aclImdb" / "test" / "labeledBow.feat", 6, seed=2)
    x, y = data.load("imdb", "train", root)
    assert x.shape == (8, 10_000)
    np.testing.assert_array_equal(x > 0, counts[:, :10_000] > 0)
    monkeypatch.setenv("ADAMJAX_DATA_DIR", str(root))
    assert data.load("imdb", "test")[0].shape == (6, 10_000)


def test_missing_files_name_the_archive_to_fetch(isolated):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("imdb", "train", isolated / "nowhere")
    message = str(e.value)
    assert "aclImdb_v1.tar.gz" in message and "ADAMJAX_DATA_DIR" in message
    assert str(isolated / "nowhere" / "imdb" / "aclImdb" / "train" / "labeledBow.feat") in message


def test_only_the_bag_of_words_model_runs_on_imdb():
    base = {"epochs": 1, "optimizers": {"adam": {"learning_rate": 1e-3}}}
    with pytest.raises(ConfigError, match="cannot run on dataset 'imdb'"):
        from_dict("t", {**base, "model": "mlp", "dataset": "imdb"})
    with pytest.raises(ConfigError, match="runs on imdb only, not on 'mnist'"):
        from_dict("t", {**base, "model": "bow_logreg", "dataset": "mnist"})


@pytest.mark.slow
def test_fig1b_runs_end_to_end_on_synthetic_files(isolated):
    root = isolated / "d"
    for split, n, seed in (("train", 256, 3), ("test", 128, 4)):
        write_bow(root / "imdb" / "aclImdb" / split / "labeledBow.feat", n, seed)
    cfg = load_config("fig1b_imdb", quick=True)
    two_lrs = {k: {**v, "learning_rate": v["learning_rate"][:2]} for k, v in cfg.optimizers.items()}
    cfg = dataclasses.replace(
        cfg, epochs=2, train_subset=0, test_subset=0, eval_batch_size=128, optimizers=two_lrs
    )
    run_experiment(cfg, isolated / "run", data_dir=root, log=lambda *_: None)
    saved = json.loads((isolated / "run" / "results.json").read_text())
    per_opt = saved["variants"]["main"]
    assert set(per_opt) == {"adam", "adagrad", "rmsprop", "sgd_nesterov"}
    for entry in per_opt.values():
        assert entry["iterations_per_epoch"] == 2 and entry["best"] is not None
        # two classes: a trained model's cost sits near or below log 2, far from 10 classes'
        assert entry["best"]["epoch_train_loss"][-1] < 1.5
    assert {c["id"] for c in saved["claims"]} == {
        "fig1b_adam_as_fast_as_adagrad",
        "fig1b_adagrad_beats_nesterov",
    }
    assert (isolated / "run" / "fig1b_imdb.png").is_file()
