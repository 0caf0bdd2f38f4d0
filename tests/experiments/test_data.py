"""experiments.data: IDX files the tests write (good, truncated, wrong magic/checksum, missing)."""

import gzip
import hashlib
import struct

import numpy as np
import pytest

from experiments import data


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_dataset(root, n_train=6, n_test=4, gz=True):
    """A tiny dataset in root/mnist/; returns the MD5s of its uncompressed files."""
    rng = np.random.default_rng(0)
    folder = root / "mnist"
    folder.mkdir(parents=True)
    md5 = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = data.DATASETS["mnist"].files[split]
        for name, arr in (
            (images, rng.integers(0, 256, (n, 28, 28))),
            (labels, rng.integers(0, 10, n)),
        ):
            raw = idx_bytes(arr)
            md5[name] = hashlib.md5(raw).hexdigest()
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
    return md5


@pytest.mark.parametrize("gz", [True, False])
def test_reads_good_files_gz_or_raw(isolated, monkeypatch, gz):
    md5 = write_dataset(isolated / "d", gz=gz)
    spec = data.DATASETS["mnist"]
    monkeypatch.setitem(data.DATASETS, "mnist", data.DatasetSpec(spec.folder, spec.files, md5))
    x, y = data.load("mnist", "train", isolated / "d")
    assert x.shape == (6, 28, 28) and x.dtype == np.uint8 and y.shape == (6,)
    assert data.load("mnist", "test", isolated / "d")[0].shape == (4, 28, 28)


def test_env_var_is_searched(isolated, monkeypatch):
    write_dataset(isolated / "env")
    monkeypatch.setenv("ADAMJAX_DATA_DIR", str(isolated / "env"))
    assert data.search_dirs("mnist")[0] == isolated / "env" / "mnist"
    x, _ = data.load("mnist", "test", verify=False)
    assert x.shape == (4, 28, 28)


def test_fashion_mnist_searches_debian_dir(isolated):
    assert data.search_dirs("fashion_mnist")[-1].as_posix() == "/usr/share/datasets/fashion-mnist"


def test_truncated_file(isolated):
    write_dataset(isolated)
    path = isolated / "mnist" / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(
        data.CorruptFileError, match="truncated.*train-images|train-images.*truncated"
    ):
        data.load("mnist", "train", isolated, verify=False)


def test_truncated_gzip_stream(isolated):
    write_dataset(isolated)
    path = isolated / "mnist" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(data.CorruptFileError, match="train-labels-idx1-ubyte.gz"):
        data.load("mnist", "train", isolated, verify=False)


def test_wrong_magic(isolated):
    write_dataset(isolated, gz=False)
    path = isolated / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\x1f\x8b\x00\x00" + path.read_bytes()[4:])
    with pytest.raises(data.CorruptFileError, match="wrong magic"):
        data.load("mnist", "test", isolated, verify=False)


def test_wrong_checksum(isolated):
    write_dataset(isolated)
    with pytest.raises(
        data.ChecksumError,
        match="t10k-images-idx3-ubyte.gz.*expected 2646ac647ad5339dbf082846283269ea",
    ):
        data.load("mnist", "test", isolated)


def test_missing_files_say_where_we_looked(isolated):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("mnist", "train", isolated / "nowhere")
    msg = str(info.value)
    assert (
        str(isolated / "nowhere" / "mnist") in msg
        and str(isolated / "cache" / "adamjax" / "mnist") in msg
    )
    assert "ADAMJAX_DATA_DIR" in msg and "train-images-idx3-ubyte" in msg


def test_real_mnist_passes_official_checksums(mnist_arrays):
    (xtr, ytr), (xte, yte) = mnist_arrays
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert set(np.unique(ytr)) == set(range(10)) and yte.shape == (10000,)


# ---------------------------------------------------------------------------------------
# The download path, against a real HTTP server on localhost (no network needed): a dead
# mirror is skipped, the files land in the cache, the checksum is verified after download.


@pytest.fixture
def mirror(tmp_path):
    """Serve tmp_path/served over HTTP on 127.0.0.1; yields (base URL, served dir, log)."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    log: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            log.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served, log
    finally:
        server.shutdown()
        server.server_close()


def _serve_dataset(tmp_path, served):
    md5 = write_dataset(tmp_path / "src")
    for f in (tmp_path / "src" / "mnist").iterdir():
        (served / f.name).write_bytes(f.read_bytes())
    return md5


def test_download_from_second_mirror_into_cache(isolated, monkeypatch, mirror):
    url, served, log = mirror
    md5 = _serve_dataset(isolated, served)
    spec = data.DATASETS["mnist"]
    dead = url + "nothing-here/"  # answers 404
    monkeypatch.setitem(
        data.DATASETS, "mnist", data.DatasetSpec(spec.folder, spec.files, md5, (dead, url))
    )
    monkeypatch.setenv("ADAMJAX_NO_DOWNLOAD", "0")
    x, y = data.load("mnist", "test", isolated / "empty")
    expected = np.frombuffer(
        gzip.decompress((served / "t10k-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8
    )
    assert x.shape == (4, 28, 28) and np.array_equal(x.reshape(-1), expected)
    cached = isolated / "cache" / "adamjax" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert "/nothing-here/t10k-images-idx3-ubyte.gz" in log  # the dead mirror was tried first
    n_requests = len(log)
    data.load("mnist", "test", isolated / "empty")  # second time: from the cache
    assert len(log) == n_requests


def test_downloaded_file_with_wrong_checksum_is_refused(isolated, monkeypatch, mirror):
    url, served, _ = mirror
    md5 = _serve_dataset(isolated, served)
    md5["t10k-labels-idx1-ubyte"] = "0" * 32
    spec = data.DATASETS["mnist"]
    monkeypatch.setitem(
        data.DATASETS, "mnist", data.DatasetSpec(spec.folder, spec.files, md5, (url,))
    )
    monkeypatch.setenv("ADAMJAX_NO_DOWNLOAD", "0")
    with pytest.raises(data.ChecksumError, match="t10k-labels-idx1-ubyte.*expected 0{32}"):
        data.load("mnist", "test", isolated / "empty")


def test_failed_download_names_every_url(isolated, monkeypatch, mirror):
    url, _, _ = mirror  # serves an empty folder: every file is a 404
    spec = data.DATASETS["mnist"]
    monkeypatch.setitem(
        data.DATASETS, "mnist", data.DatasetSpec(spec.folder, spec.files, spec.md5, (url,))
    )
    monkeypatch.setenv("ADAMJAX_NO_DOWNLOAD", "0")
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load("mnist", "train", isolated / "empty")
    msg = str(info.value)
    assert "the download failed" in msg and url + "train-images-idx3-ubyte.gz" in msg
    assert "404" in msg
    assert not list((isolated / "cache" / "adamjax" / "mnist").glob("*.part"))
