"""ZCA whitening, the paper's pre-processing of the CIFAR-10 images for Figure 3 (Sec. 6.3).

Fitted on the training set only: with ``mu`` the mean image and ``C = (X - mu)^T (X - mu) / N``
the pixel covariance, eigen-decomposed as ``C = U diag(lambda) U^T``,

    W = U diag(1 / sqrt(lambda + eps)) U^T,      x_white = (x - mu) W

(Bell & Sejnowski, 1997; the "ZCA" of Krizhevsky, 2009, App. A). ``W`` is symmetric, and
among all whitening matrices it keeps the images closest to the originals, so they still
look like images to a CNN. ``eps`` regularises the small eigenvalues: the whitened training
data's covariance is ``W C W = U diag(lambda / (lambda + eps)) U^T``, the identity up to
``eps / (lambda_min + eps)`` in spectral norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ZCA", "fit_zca"]


@dataclass(frozen=True)
class ZCA:
    """A fitted ZCA transform: ``mean`` ``[D]`` and the symmetric ``matrix`` ``[D, D]``."""

    mean: np.ndarray
    matrix: np.ndarray
    eps: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Whiten ``x`` ``[N, D]`` (or ``[N, ...]``, flattened) as float32 ``[N, D]``."""
        flat = np.asarray(x, np.float64).reshape(len(x), -1)
        if flat.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"ZCA fitted on {self.mean.shape[0]} features, got inputs of "
                f"{flat.shape[1]}; whiten data of the same kind as the training set"
            )
        return ((flat - self.mean) @ self.matrix).astype(np.float32)


def fit_zca(x: np.ndarray, eps: float = 0.01, chunk: int = 4096) -> ZCA:
    """Fit ZCA whitening on the training inputs ``x`` ``[N, ...]`` (flattened), in float64.

    ``eps`` > 0 is added to every eigenvalue of the covariance (in the inputs' units
    squared: for images in [0, 1], a pixel variance is ~0.06). ``chunk`` rows at a time
    enter the covariance, so large ``uint8`` datasets are never copied whole into float64.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (it regularises the small eigenvalues), got {eps}")
    flat = x.reshape(len(x), -1)
    n, d = flat.shape
    if n < 2:
        raise ValueError(f"ZCA needs at least 2 training examples, got {n}")
    mean = flat.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d), np.float64)
    for start in range(0, n, chunk):
        block = flat[start : start + chunk].astype(np.float64) - mean
        cov += block.T @ block
    cov /= n
    lam, u = np.linalg.eigh(cov)
    lam = np.clip(lam, 0.0, None)  # rounding can make a zero eigenvalue slightly negative
    matrix = (u / np.sqrt(lam + eps)) @ u.T
    return ZCA(mean=mean, matrix=(matrix + matrix.T) / 2, eps=eps)
