"""MNIST and Fashion-MNIST from the official IDX files, checked, found, or downloaded;
CIFAR-10 from the official binary-version files, checked and found (never downloaded).

Files are looked up, in order, in: an explicit ``data_dir`` argument, ``$ADAMJAX_DATA_DIR``,
the user cache dir (``$XDG_CACHE_HOME/adamjax`` or ``~/.cache/adamjax``) - each holding one
folder per dataset (``<dir>/mnist/``, ``<dir>/fashion_mnist/``) - and, for Fashion-MNIST,
Debian's ``/usr/share/datasets/fashion-mnist``. Each file may be gzip-compressed (``.gz``) or
raw. Its uncompressed content is checked against the official MD5. Missing files are
downloaded into the cache dir when the network allows; otherwise :class:`DatasetNotFoundError`
says where we looked and how to provide the files.

CIFAR-10 (``cifar10``) is looked up in the same places, in ``<dir>/cifar10/cifar-10-batches-bin/``
(the layout of the extracted official ``cifar-10-binary.tar.gz``) or directly in
``<dir>/cifar10/``: ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin``, each
10000 records of one label byte and 3072 image bytes (3x32x32, channel-major). Each file's size
is checked; images come back NHWC, ``uint8 [N, 32, 32, 3]``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetNotFoundError",
    "CorruptFileError",
    "ChecksumError",
    "DatasetSpec",
    "CIFAR10_FILES",
    "image_shape",
    "load",
    "read_cifar_batch",
    "read_idx",
    "search_dirs",
]

SPLITS = ("train", "test")


class DataError(Exception):
    """Base class of the dataset errors: the message always says what to do."""


class DatasetNotFoundError(DataError):
    """A dataset file is in none of the searched places and could not be downloaded."""


class CorruptFileError(DataError):
    """A file is truncated, not gzip, not IDX, or has the wrong shape."""


class ChecksumError(DataError):
    """A file's uncompressed content does not match the official MD5."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives: its folder name, file names, MD5s and mirrors."""

    folder: str
    files: dict[str, tuple[str, str]]  # split -> (images file, labels file), names without .gz
    md5: dict[str, str]  # file name -> MD5 of the uncompressed content
    mirrors: tuple[str, ...] = ()
    extra_dirs: tuple[str, ...] = ()
    shape: tuple[int, int] = (28, 28)
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 60000, "test": 10000})


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        folder="mnist",
        files=_IDX_FILES,
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
    ),
    # MD5s of the uncompressed files, computed from Debian's dataset-fashion-mnist package
    # (0.0~git20200523). Debian recompressed the .gz files, so their own MD5s differ from the
    # ones in the zalandoresearch/fashion-mnist README (which lists MD5s of the .gz files).
    "fashion_mnist": DatasetSpec(
        folder="fashion_mnist",
        files=_IDX_FILES,
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        extra_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


# CIFAR-10, binary version: https://www.cs.toronto.edu/~kriz/cifar.html
CIFAR10 = "cifar10"
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
CIFAR10_SUBDIR = "cifar-10-batches-bin"
CIFAR10_ARCHIVE = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # listed on the CIFAR page
CIFAR10_RECORD = 1 + 3 * 32 * 32
CIFAR10_RECORDS_PER_FILE = 10000  # the official files; tests lower it for tiny files

# IMDB's "images" are flat 10,000-word bag-of-words vectors (see experiments/imdb.py).
_IMAGE_SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    CIFAR10: (32, 32, 3),
    "imdb": (10_000, 1, 1),
}


def image_shape(name: str) -> tuple[int, int, int]:
    """``(H, W, C)`` of one image of dataset ``name``."""
    if name not in _IMAGE_SHAPES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(_IMAGE_SHAPES)}")
    return _IMAGE_SHAPES[name]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adamjax"


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for dataset ``name``, in lookup order."""
    extra: tuple[str, ...]
    if name in (CIFAR10, "imdb"):
        folder, extra = name, ()
    else:
        spec = _spec(name)
        folder, extra = spec.folder, spec.extra_dirs
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    env = os.environ.get("ADAMJAX_DATA_DIR")
    if env:
        roots.append(Path(env))
    roots.append(_cache_dir())
    return [r / folder for r in roots] + [Path(d) for d in extra]


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def _find(filename: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / filename, d / (filename + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise CorruptFileError(
            f"{path}: cannot be decompressed ({type(e).__name__}: {e}); the file is truncated or "
            "corrupt - delete it and download it again."
        ) from e


def read_idx(path: str | os.PathLike, md5: str | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes (``.gz`` or raw) into a ``uint8`` array.

    Checks the magic number, that the size matches the header, and (when ``md5`` is given)
    the MD5 of the uncompressed content. Raises :class:`CorruptFileError` or
    :class:`ChecksumError`, naming the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    fix = "delete it and download it again (or copy the official file in its place)."
    if len(raw) < 4:
        raise CorruptFileError(f"{path}: only {len(raw)} bytes, not an IDX file; {fix}")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise CorruptFileError(
            f"{path}: wrong magic number 0x{raw[:4].hex()} (expected 0x000008NN, an IDX file of "
            f"unsigned bytes); this is not an MNIST IDX file - {fix}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(f"{path}: truncated inside the IDX header; {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise CorruptFileError(
            f"{path}: {what} ({len(raw)} bytes, header of shape {dims} needs {expected}); {fix}"
        )
    if md5 is not None:
        got = hashlib.md5(raw).hexdigest()
        if got != md5:
            raise ChecksumError(
                f"{path}: MD5 of the uncompressed content is {got}, expected {md5}; the file is "
                f"corrupt or is not the official one - {fix}"
            )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _download(spec: DatasetSpec, filename: str, dest_dir: Path) -> Path:
    """Fetch ``filename.gz`` from the first mirror that answers; raises OSError if none."""
    from tqdm.auto import tqdm

    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / (filename + ".gz")
    errors = []
    for mirror in spec.mirrors:
        url = mirror + filename + ".gz"
        tmp = dest.with_suffix(".gz.part")
        try:
            with urllib.request.urlopen(url, timeout=15) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with (
                    open(tmp, "wb") as out,
                    tqdm(total=total, unit="B", unit_scale=True, desc=filename) as bar,
                ):
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
            os.replace(tmp, dest)
            return dest
        except OSError as e:
            errors.append(f"{url}: {e}")
            tmp.unlink(missing_ok=True)
    raise OSError("; ".join(errors) or "no mirrors")


def _locate(name: str, filename: str, data_dir, download: bool) -> Path:
    spec = _spec(name)
    dirs = search_dirs(name, data_dir)
    found = _find(filename, dirs)
    if found is not None:
        return found
    why = "downloading is switched off"
    if download and os.environ.get("ADAMJAX_NO_DOWNLOAD", "") in ("", "0"):
        try:
            return _download(spec, filename, _cache_dir() / spec.folder)
        except OSError as e:
            why = f"the download failed ({e})"
    looked = "\n".join(f"  - {d}" for d in dirs)
    raise DatasetNotFoundError(
        f"{name}: {filename}[.gz] not found; looked in:\n{looked}\nand {why}. Put the four "
        f"official IDX files (.gz or raw) in <dir>/{spec.folder}/ and pass --data-dir <dir> or "
        f"set ADAMJAX_DATA_DIR=<dir>, or copy them into {_cache_dir() / spec.folder}."
    )


def load(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` of ``split`` ('train' or 'test') as ``uint8`` arrays.

    ``images`` has shape ``(N, 28, 28)`` (CIFAR-10: ``(N, 32, 32, 3)``, NHWC), ``labels``
    shape ``(N,)``. ``verify=False`` skips
    the MD5 check (the structural checks always run).
    """
    if name == CIFAR10:
        return _load_cifar10(split, data_dir)
    if name == "imdb":
        from experiments.imdb import load_imdb

        return load_imdb(split, data_dir)
    spec = _spec(name)
    if split not in spec.files:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(spec.files)}")
    image_file, label_file = spec.files[split]
    arrays = []
    for filename in (image_file, label_file):
        path = _locate(name, filename, data_dir, download)
        arrays.append(read_idx(path, spec.md5[filename] if verify else None))
    images, labels = arrays
    if images.ndim != 3 or images.shape[1:] != spec.shape:
        raise CorruptFileError(
            f"{name} {split}: images have shape {images.shape}, expected (N, *{spec.shape})"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise CorruptFileError(
            f"{name} {split}: {labels.shape[0]} labels for {images.shape[0]} images"
        )
    return images, labels


def read_cifar_batch(
    path: str | os.PathLike, records: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary-version file into ``(uint8 [N, 32, 32, 3], uint8 [N])``.

    Checks that the size is a whole number of 3073-byte records, ``records`` of them
    (default :data:`CIFAR10_RECORDS_PER_FILE`), and that the labels are 0-9; raises
    :class:`CorruptFileError` naming the file.
    """
    path = Path(path)
    records = CIFAR10_RECORDS_PER_FILE if records is None else records
    fix = (
        f"delete it and extract it again from the official {CIFAR10_ARCHIVE} "
        f"(MD5 {CIFAR10_ARCHIVE_MD5})."
    )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorruptFileError(f"{path}: cannot be read ({e}); {fix}") from e
    expected = records * CIFAR10_RECORD
    if len(raw) != expected:
        if len(raw) % CIFAR10_RECORD:
            what = f"not a whole number of {CIFAR10_RECORD}-byte records"
        else:
            what = f"{len(raw) // CIFAR10_RECORD} records"
        kind = "truncated" if len(raw) < expected else "too long"
        raise CorruptFileError(
            f"{path}: {kind}, {len(raw)} bytes ({what}); a CIFAR-10 binary batch holds "
            f"{records} records of {CIFAR10_RECORD} bytes = {expected} bytes; {fix}"
        )
    table = np.frombuffer(raw, np.uint8).reshape(records, CIFAR10_RECORD)
    labels = table[:, 0].copy()
    if labels.size and labels.max() > 9:
        raise CorruptFileError(
            f"{path}: label byte {int(labels.max())} is not a CIFAR-10 class (0-9); {fix}"
        )
    images = table[:, 1:].reshape(records, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _find_cifar(filename: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / CIFAR10_SUBDIR / filename, d / filename):
            if candidate.is_file():
                return candidate
    return None


def _load_cifar10(split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    if split not in CIFAR10_FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(CIFAR10_FILES)}")
    dirs = search_dirs(CIFAR10, data_dir)
    images, labels = [], []
    for filename in CIFAR10_FILES[split]:
        path = _find_cifar(filename, dirs)
        if path is None:
            looked = "\n".join(f"  - {d / CIFAR10_SUBDIR} and {d}" for d in dirs)
            raise DatasetNotFoundError(
                f"{CIFAR10}: {filename} not found; looked in:\n{looked}\nCIFAR-10 is not "
                f"downloaded automatically. Download the binary version, {CIFAR10_ARCHIVE} "
                f"(MD5 {CIFAR10_ARCHIVE_MD5}), extract it into <dir>/{CIFAR10}/ (giving "
                f"<dir>/{CIFAR10}/{CIFAR10_SUBDIR}/data_batch_1.bin ... test_batch.bin) and "
                f"pass --data-dir <dir> or set ADAMJAX_DATA_DIR=<dir>, or extract it into "
                f"{_cache_dir() / CIFAR10}."
            )
        x, y = read_cifar_batch(path)
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)
