"""experiments.state_formats: each format trains, and reports the bytes its state takes."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import state_formats


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    centers = rng.random((10, 784), dtype=np.float32)
    y = rng.integers(0, 10, 256).astype(np.int32)
    x = np.clip(centers[y] + 0.3 * rng.standard_normal((256, 784), dtype=np.float32), 0, 1)
    return jnp.asarray(x), jnp.asarray(y)


@pytest.mark.parametrize("fmt", state_formats.FORMATS)
def test_every_format_lowers_the_training_cost(tiny, fmt):
    x, y = tiny
    r = state_formats.train_one(fmt, "deterministic", x, y, epochs=2, lr=1e-3)
    cost = r["epoch_cost"]
    assert len(cost) == 3 and cost[-1] < 0.5 * cost[0], cost
    # Adam's two float32 moments, plus a bfloat16 compensation buffer with Kahan.
    want = {"bfloat16 state": 4.0, "int8 state": 2.0, "bf16 params + Kahan": 10.0}.get(fmt, 8.0)
    # The MLP's two 1000-wide kernels dominate; biases and the 10-wide layer's small
    # leaves stay in float32 with int8, which adds a little.
    assert want <= r["state_bytes_per_param"] <= want * 1.02 + 0.01, r["state_bytes_per_param"]
