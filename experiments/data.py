"""MNIST and Fashion-MNIST from the official IDX files, checked, found, or downloaded.

Files are looked up, in order, in: an explicit ``data_dir`` argument, ``$ADAMJAX_DATA_DIR``,
the user cache dir (``$XDG_CACHE_HOME/adamjax`` or ``~/.cache/adamjax``) - each holding one
folder per dataset (``<dir>/mnist/``, ``<dir>/fashion_mnist/``) - and, for Fashion-MNIST,
Debian's ``/usr/share/datasets/fashion-mnist``. Each file may be gzip-compressed (``.gz``) or
raw. Its uncompressed content is checked against the official MD5. Missing files are
downloaded into the cache dir when the network allows; otherwise :class:`DatasetNotFoundError`
says where we looked and how to provide the files.
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
    "load",
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


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adamjax"


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for dataset ``name``, in lookup order."""
    spec = _spec(name)
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    env = os.environ.get("ADAMJAX_DATA_DIR")
    if env:
        roots.append(Path(env))
    roots.append(_cache_dir())
    return [r / spec.folder for r in roots] + [Path(d) for d in spec.extra_dirs]


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

    ``images`` has shape ``(N, 28, 28)``, ``labels`` shape ``(N,)``. ``verify=False`` skips
    the MD5 check (the structural checks always run).
    """
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
