"""Where the tests get the real MNIST, and what they do when it is not there.

The files are found the way ``python -m experiments`` finds them (``experiments.data``):
``$ADAMJAX_DATA_DIR/mnist/``, then the user cache dir, and otherwise downloaded into the cache
when the network allows (``ADAMJAX_NO_DOWNLOAD=1`` switches the download off). When they
cannot be had, a test that needs them is skipped with the reason and how to provide them, or
fails when ``ADAMJAX_REQUIRE_DATA=1`` (CI sets it, so that CI never passes without the data).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest

HOW_TO = (
    "set ADAMJAX_DATA_DIR to a folder holding mnist/ with the four official IDX files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz), or let the tests download them (needs network access and "
    "ADAMJAX_NO_DOWNLOAD unset)"
)


def data_required() -> bool:
    """``ADAMJAX_REQUIRE_DATA=1``: a missing data set fails the test instead of skipping it."""
    return os.environ.get("ADAMJAX_REQUIRE_DATA", "") not in ("", "0")


def missing(why: str) -> NoReturn:
    """Skip (or, under ``ADAMJAX_REQUIRE_DATA=1``, fail) a test that needs the real MNIST."""
    pattern = r"\band (downloading is switched off|the download failed .*?)\. Put"
    reason = re.search(pattern, why, re.S)
    why = why.splitlines()[0].removesuffix("; looked in:")
    why += f" ({reason.group(1)})" if reason else ""
    message = f"real MNIST not available: {why}. To run this test: {HOW_TO}."
    if data_required():
        pytest.fail(message + " (ADAMJAX_REQUIRE_DATA=1: failing instead of skipping)", False)
    pytest.skip(message)


@functools.cache
def _locate(download: bool) -> tuple[Path | None, str]:
    """``(folder holding mnist/, "")`` or ``(None, why not)``; downloads at most once."""
    from experiments import data

    try:
        for split in data.SPLITS:  # reads, checks (MD5) and, if allowed, downloads each file
            data.load("mnist", split, download=download)
    except data.DataError as e:
        return None, str(e)
    spec = data.DATASETS["mnist"]
    for folder in data.search_dirs("mnist"):
        if all(any((folder / n).is_file() for n in (f, f + ".gz")) for f in spec.md5):
            return folder.parent, ""
    return None, "the files were read but not found again in one folder"  # pragma: no cover


def data_dir(download: bool = True) -> Path:
    """The folder holding ``mnist/``; skips or fails the calling test when there is none."""
    found, why = _locate(download)
    if found is None:
        missing(why)
    return found


def train_subset(
    n: int, fallback: Callable[[int], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(x, y, source)``: ``n`` MNIST training images as float32 ``[n, 784]`` in [0, 1].

    Falls back to ``fallback(n)`` (synthetic data, ``source == "synthetic"``) when MNIST is
    not available, except under ``ADAMJAX_REQUIRE_DATA=1``. Never downloads (child
    processes call it); the session's data-dir fixture downloads, if anything does.
    """
    from experiments import data

    found, why = _locate(False)
    if found is not None:
        x, y = data.load("mnist", "train", found, download=False)
        return x[:n].reshape(n, -1).astype(np.float32) / 255.0, y[:n].astype(np.int32), "mnist"
    if data_required():
        missing(why)
    x, y = fallback(n)
    return x, y, "synthetic"
