"""Timing helpers: interleaved repeats, medians, compile times."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def interleaved(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 2):
    """Median seconds per call of each case, the cases run in turn (a, b, c, a, b, c, ...).

    Each callable runs one step and blocks on its result. Interleaving spreads the noise of a
    shared machine over all cases alike, so the ratios between them are what to read.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def compile_seconds(make_fn: Callable[[], Callable], *args, donate=(), repeats: int = 1) -> float:
    """Median wall time of ``jax.jit(fn).lower(*args).compile()`` for a fresh ``fn`` each time."""
    ts = []
    for _ in range(repeats):
        fn = jax.jit(make_fn(), donate_argnums=donate)
        t0 = time.perf_counter()
        fn.lower(*args).compile()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


class Stepper:
    """Holds a donated state and advances it with a compiled step; calling it blocks.

    With ``inner`` > 1 one call runs that many steps before blocking (on an accelerator,
    so that the host's wait for the device is paid once per ``inner`` steps, as in a real
    training loop); :func:`interleaved` then reports seconds per call: divide by ``inner``.
    """

    def __init__(self, step, state, *const, inner: int = 1):
        self.step, self.state, self.const, self.inner = step, state, const, inner

    def __call__(self):
        for _ in range(self.inner):
            self.state = self.step(*self.state, *self.const)
        jax.block_until_ready(self.state)
