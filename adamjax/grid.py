"""Hyperparameter grids as arrays: expand named axes, chunk them, label the results.

A grid search in JAX is one ``jax.vmap`` over a config axis: every hyperparameter becomes
an array of length ``N`` (one entry per grid point) and the training function is mapped over
those arrays. This module does the bookkeeping around that, and nothing else (no Flax, no
training code):

>>> from adamjax.grid import expand
>>> g = expand({"learning_rate": [1e-3, 1e-2], "b1": [0.0, 0.9]})
>>> len(g), g.arrays()["b1"]
(4, array([0. , 0.9, 0. , 0.9], dtype=float32))
>>> g.label(3)
{'learning_rate': 0.01, 'b1': 0.9}
>>> [c.indices for c in g.chunks(max_size=3)]
[range(0, 3), range(3, 4)]

The last named axis varies fastest (row-major order, like ``itertools.product``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Chunk", "Grid", "expand", "chunk_size", "tree_index", "unstack"]

Scalar = bool | int | float


@dataclass(frozen=True)
class Chunk:
    """A contiguous slice ``indices`` of a grid with its per-axis arrays ``values``."""

    indices: range
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class Grid:
    """The Cartesian product of named axes, ``axes[name]`` a tuple of scalar values.

    Fixed values (axes of length one) are allowed, so a grid can carry every
    hyperparameter of an optimizer, swept or not.
    """

    axes: tuple[tuple[str, tuple[Scalar, ...]], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The axis names, in expansion order."""
        return tuple(name for name, _ in self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        """The number of values of each axis."""
        return tuple(len(values) for _, values in self.axes)

    @property
    def swept(self) -> tuple[str, ...]:
        """Names of the axes with more than one value."""
        return tuple(name for name, values in self.axes if len(values) > 1)

    def __len__(self) -> int:
        return math.prod(self.shape)

    def label(self, i: int) -> dict[str, Scalar]:
        """The config (axis name -> value) of grid point ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"grid point {i} out of range for a grid of {len(self)} points")
        idx = np.unravel_index(i, self.shape)
        return {name: values[j] for (name, values), j in zip(self.axes, idx, strict=True)}

    def configs(self) -> list[dict[str, Scalar]]:
        """All configs, in grid order."""
        product = itertools.product(*(values for _, values in self.axes))
        return [dict(zip(self.names, combo, strict=True)) for combo in product]

    def arrays(self, indices: Sequence[int] | range | None = None) -> dict[str, np.ndarray]:
        """One numpy array per axis, entry ``k`` the value at grid point ``indices[k]``.

        Booleans stay ``bool``, integers become ``int32`` and floats ``float32``, so the
        arrays can be fed straight to a vmapped function.
        """
        configs = self.configs()
        idx = range(len(configs)) if indices is None else indices
        out: dict[str, np.ndarray] = {}
        for name, values in self.axes:
            column = [configs[i][name] for i in idx]
            out[name] = np.asarray(column, dtype=_dtype_of(values))
        return out

    def chunks(self, max_size: int) -> list[Chunk]:
        """Split the grid into consecutive chunks of at most ``max_size`` points."""
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        n = len(self)
        return [
            Chunk(
                indices=range(s, min(s + max_size, n)),
                values=self.arrays(range(s, min(s + max_size, n))),
            )
            for s in range(0, n, max_size)
        ]


def _dtype_of(values: Sequence[Scalar]) -> type:
    if all(isinstance(v, bool | np.bool_) for v in values):
        return np.bool_
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return np.int32
    return np.float32


def expand(axes: Mapping[str, Scalar | Sequence[Scalar]]) -> Grid:
    """Build a :class:`Grid` from ``{name: value or list of values}``.

    A scalar is a fixed value (an axis of length one); a list is swept. Raises
    ``ValueError`` on an empty axis or a non-scalar value, naming the axis.
    """
    built = []
    for name, raw in axes.items():
        values = tuple(raw) if isinstance(raw, list | tuple | np.ndarray) else (raw,)
        if not values:
            raise ValueError(f"grid axis {name!r} has no values")
        for v in values:
            if not isinstance(v, bool | int | float | np.bool_ | np.integer | np.floating):
                raise ValueError(f"grid axis {name!r}: value {v!r} is not a number or bool")
        built.append((name, tuple(v.item() if isinstance(v, np.generic) else v for v in values)))
    return Grid(axes=tuple(built))


def chunk_size(n: int, bytes_per_config: int, budget_bytes: int) -> int:
    """How many of ``n`` configs to run at once so that they fit in ``budget_bytes``.

    Always at least one (a single config that does not fit is still tried), and the chunks
    are balanced: 10 configs that fit 4 at a time run as 4+3+3, not 4+4+2, so every chunk
    compiles to the same shape as often as possible.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    fit = max(1, budget_bytes // max(1, bytes_per_config))
    if fit >= n:
        return n
    num_chunks = math.ceil(n / fit)
    return math.ceil(n / num_chunks)


def tree_index(tree: Any, i: int) -> Any:
    """Entry ``i`` along the leading (config) axis of every leaf of a pytree."""
    import jax

    return jax.tree.map(lambda x: x[i], tree)


def unstack(
    grid: Grid, results: Any, indices: Sequence[int] | range | None = None
) -> Iterator[tuple[dict, Any]]:
    """Pair each config with its slice of ``results`` (a pytree with a leading config axis).

    ``indices`` says which grid points the leading axis holds (default: the whole grid).
    Yields ``(config, result_i)``.
    """
    idx = range(len(grid)) if indices is None else indices
    for k, i in enumerate(idx):
        yield grid.label(i), tree_index(results, k)
