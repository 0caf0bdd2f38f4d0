"""Timing helpers: interleaved repeats, medians, compile times."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping

import jax


def interleaved(
    cases: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 2, seed: int = 0
):
    """Median seconds per call of each case, the cases run in turn, in a new random order
    each round (b, a, c, c, a, b, ...).

    Each callable runs one step and blocks on its result. Interleaving spreads the noise of a
    shared machine over all cases alike, so the ratios between them are what to read; the
    shuffle keeps any one case from always following the same neighbour (a multi-threaded
    kernel leaves the thread pool and the memory system in a state that the next case pays
    for).
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    rng = random.Random(seed)
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            fn = cases[name]
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
