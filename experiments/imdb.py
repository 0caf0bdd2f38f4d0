"""IMDB movie reviews (Maas et al., 2011) as bag-of-words vectors, for the paper's Figure 1b.

Reads the official Large Movie Review Dataset files, never downloads them. Extract
``aclImdb_v1.tar.gz`` (https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz) into
``<dir>/imdb/`` so that ``<dir>/imdb/aclImdb/train/labeledBow.feat`` exists (``<dir>/imdb/
train/labeledBow.feat`` is accepted too), and pass ``--data-dir <dir>`` or set
``ADAMJAX_DATA_DIR=<dir>``; the folders searched are :func:`experiments.data.search_dirs`'s.

``labeledBow.feat`` is in svmlight format, one review a line: ``rating idx:count idx:count
...``, where ``idx`` is a 0-based index into ``imdb.vocab``, which is sorted by frequency
in the training set. The paper's features are "the first 10,000 most frequent words", i.e.
the indices below :data:`VOCAB` (10,000); word ``idx`` of a review becomes feature
``x[idx] = 1`` if its count is positive (binary bag of words, as in Wang & Manning, 2012,
whom the paper follows for the 50 % input dropout). Ratings 1-4 are negative (label 0),
7-10 positive (label 1); the official files hold no others.

The features are returned as ``uint8`` 0/255 so that the experiments' image pipeline
(which stores ``uint8`` on the device and divides by 255) yields exactly 0.0 and 1.0.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["IMDB", "VOCAB", "ARCHIVE", "read_labeled_bow", "find_split", "load_imdb"]

IMDB = "imdb"
VOCAB = 10_000
ARCHIVE = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
_FILE = "labeledBow.feat"


def read_labeled_bow(path: str | os.PathLike, vocab: int = VOCAB) -> tuple[np.ndarray, np.ndarray]:
    """Parse one ``labeledBow.feat`` into binary features and sentiment labels.

    Returns ``(x, y)``: ``x`` of shape ``(N, vocab)``, ``uint8`` 255 where the review holds
    word ``idx < vocab`` (count > 0), else 0; ``y`` of shape ``(N,)``, ``int32``, 1 for a
    rating >= 7 and 0 for a rating <= 4. Raises :class:`experiments.data.CorruptFileError`
    naming the file and line on anything else.
    """
    from experiments.data import CorruptFileError

    path = Path(path)
    fix = f"extract it again from the official {ARCHIVE}."
    rows: list[list[int]] = []
    labels: list[int] = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path}: cannot be read as text ({e}); {fix}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        head, *pairs = line.split()
        try:
            rating = int(head)
            words = []
            for pair in pairs:
                idx, count = pair.split(":")
                if int(count) > 0 and int(idx) < vocab:
                    words.append(int(idx))
        except ValueError:
            raise CorruptFileError(
                f"{path}, line {n}: not 'rating idx:count ...' (svmlight): {line[:60]!r}; {fix}"
            ) from None
        if not (1 <= rating <= 4 or 7 <= rating <= 10):
            raise CorruptFileError(
                f"{path}, line {n}: rating {rating} is neither negative (1-4) nor positive "
                f"(7-10); {fix}"
            )
        rows.append(words)
        labels.append(int(rating >= 7))
    x = np.zeros((len(rows), vocab), np.uint8)
    for i, words in enumerate(rows):
        x[i, words] = 255
    return x, np.asarray(labels, np.int32)


def find_split(split: str, data_dir=None) -> Path:
    """The path of ``<split>/labeledBow.feat``; raises ``DatasetNotFoundError`` naming the
    folders searched and the archive to fetch."""
    from experiments.data import DatasetNotFoundError, search_dirs

    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    dirs = search_dirs(IMDB, data_dir)
    candidates = [d / sub / split / _FILE for d in dirs for sub in ("aclImdb", ".")]
    for c in candidates:
        if c.is_file():
            return c
    looked = "\n".join(f"  - {c}" for c in candidates)
    raise DatasetNotFoundError(
        f"{IMDB}: {split}/{_FILE} not found; looked for:\n{looked}\nIMDB is not downloaded "
        f"automatically. Download the Large Movie Review Dataset, aclImdb_v1.tar.gz "
        f"({ARCHIVE}), extract it into <dir>/{IMDB}/ (giving <dir>/{IMDB}/aclImdb/train/"
        f"{_FILE}) and pass --data-dir <dir> or set ADAMJAX_DATA_DIR=<dir>."
    )


def load_imdb(split: str, data_dir=None, vocab: int = VOCAB) -> tuple[np.ndarray, np.ndarray]:
    """``(x uint8 [N, vocab] in {0, 255}, y int32 [N])`` of the IMDB ``split``."""
    return read_labeled_bow(find_split(split, data_dir), vocab)
