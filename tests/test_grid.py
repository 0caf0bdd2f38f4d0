"""adamjax.grid: expanding named axes, labelling, chunking."""

import itertools

import numpy as np
import pytest

from adamjax import grid


def test_expand_is_cartesian_row_major():
    g = grid.expand({"lr": [1e-3, 1e-2, 1e-1], "b1": [0.0, 0.9], "eps": 1e-8})
    assert len(g) == 6 and g.shape == (3, 2, 1) and g.swept == ("lr", "b1")
    expected = [
        dict(lr=a, b1=b, eps=1e-8) for a, b in itertools.product([1e-3, 1e-2, 1e-1], [0.0, 0.9])
    ]
    assert g.configs() == expected
    assert [g.label(i) for i in range(6)] == expected
    arrays = g.arrays()
    assert arrays["lr"].dtype == np.float32 and arrays["lr"].shape == (6,)
    np.testing.assert_allclose(arrays["b1"], [0, 0.9, 0, 0.9, 0, 0.9], rtol=1e-6)


def test_dtypes_follow_values():
    g = grid.expand({"flag": [True, False], "n": [1, 2], "x": [1, 2.5]})
    a = g.arrays()
    assert a["flag"].dtype == np.bool_ and a["n"].dtype == np.int32 and a["x"].dtype == np.float32


def test_chunks_cover_grid_in_order():
    g = grid.expand({"a": list(range(7)), "b": [0.5, 1.5]})
    chunks = g.chunks(max_size=4)
    assert [len(c) for c in chunks] == [4, 4, 4, 2]
    joined = np.concatenate([c.values["a"] for c in chunks])
    np.testing.assert_array_equal(joined, g.arrays()["a"])
    assert [list(c.indices) for c in chunks][-1] == [12, 13]


def test_chunk_size_fits_budget_and_balances():
    assert grid.chunk_size(10, bytes_per_config=100, budget_bytes=10_000) == 10
    assert (
        grid.chunk_size(10, bytes_per_config=100, budget_bytes=400) == 4
    )  # 4+4+2 -> balanced 4,4,2 max 4
    assert (
        grid.chunk_size(9, bytes_per_config=100, budget_bytes=400) == 3
    )  # 3 chunks of 3, not 4+4+1
    assert grid.chunk_size(5, bytes_per_config=10**9, budget_bytes=1) == 1


def test_unstack_maps_results_back_to_configs():
    g = grid.expand({"lr": [0.1, 0.2, 0.3]})
    results = {"loss": np.array([1.0, 2.0]), "curve": np.arange(6).reshape(2, 3)}
    pairs = list(grid.unstack(g, results, indices=range(1, 3)))
    assert pairs[0][0] == {"lr": 0.2} and pairs[0][1]["loss"] == 2.0 - 1.0
    np.testing.assert_array_equal(pairs[1][1]["curve"], [3, 4, 5])


def test_errors_name_the_axis():
    with pytest.raises(ValueError, match="'lr' has no values"):
        grid.expand({"lr": []})
    with pytest.raises(ValueError, match="'lr'"):
        grid.expand({"lr": ["fast"]})
    with pytest.raises(IndexError):
        grid.expand({"lr": [1.0]}).label(1)
    with pytest.raises(ValueError):
        grid.expand({"lr": [1.0]}).chunks(0)
