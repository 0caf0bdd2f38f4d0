"""How close ``adamjax.adam`` is to ``optax.adam``, ``torch.optim.Adam`` and exact arithmetic.

``python -m benchmarks.parity`` prints, for float32 and for float64 (``jax_enable_x64`` in a
child process), side by side on the same gradients:

* the fraction of elements whose bits differ, per step (first and last step of the range);
* the largest difference relative to the step size, ``max |a - b| / lr``: Adam's step is at
  most about ``lr`` per element, so this says how much of a step the libraries disagree by.
  (Differences in ulps are not reported: where ``m_t`` cancels to almost zero the update is
  tiny and one rounding of ``m_t`` is many of its ulps, while the step it changes is not.)
* each library's error against the project's float64 NumPy transcription of Algorithm 1
  (``tests/reference.py``) run from the same start on the same gradients, as the mean and
  the largest ``|theta_t - theta*_t| / lr``;
* the cause of the float32 differences, checked without the libraries' code: NumPy float32
  transcriptions of the first-moment line with the multiply-add fused in each of the two ways
  (``fma(b1, m, (1 - b1) g)`` and ``fma(1 - b1, g, b1 m)``, exact products, one rounding),
  against each library's ``m_2``.

Setting: 100,000 parameters drawn from N(0, 1), 20 steps of gradients drawn from N(0, s^2)
with s log-uniform in [1e-4, 1e2] per element (so the moments span many decades), learning
rate 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8. Every library runs its own trajectory; adamjax
and Optax are jitted (``update`` then ``optax.apply_updates``; adamjax also through
``apply_gradients``, the native kernel on the CPU); PyTorch (when installed) runs its
default ``Adam`` on CPU tensors. The figures are quoted in docs/optimizers.md.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import numpy as np

from tests import reference

N, STEPS, LR, B1, B2, EPS = 100_000, 20, 1e-3, 0.9, 0.999, 1e-8


def _data(dtype: type) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    theta: np.ndarray = rng.standard_normal(N).astype(dtype)
    scale = 10.0 ** rng.uniform(-4, 2, N)
    grads: list[np.ndarray] = [(rng.standard_normal(N) * scale).astype(dtype) for _ in range(STEPS)]
    return theta, grads


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a * b + c`` of float32 arrays with the product exact and one rounding (an FMA).

    The product of two float32 numbers is exact in float64; the sum is rounded there and
    then to float32, which equals a single rounding except in rare double-rounding ties.
    """
    wide = a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)
    return wide.astype(np.float32)


def _row(name: str, per_step: list[tuple[float, float]]) -> None:
    fracs = [f for f, _ in per_step]
    rel = max(r for _, r in per_step)
    print(
        f"  {name:<52} differing {fracs[0]:6.1%} (step 1) .. {fracs[-1]:6.1%} "
        f"(step {len(fracs)}), max |diff|/lr {rel:.2e}"
    )


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return float(np.mean(a != b)), float(np.max(np.abs(a.astype(np.float64) - b)) / LR)


def _torch_trajectory(theta0: np.ndarray, grads: list[np.ndarray]) -> list[np.ndarray] | None:
    try:
        import torch
    except ImportError:
        return None
    p = torch.nn.Parameter(torch.tensor(theta0))
    opt = torch.optim.Adam([p], lr=LR, betas=(B1, B2), eps=EPS)
    out = []
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        out.append(p.detach().numpy().copy())
    return out


def measure(x64: bool) -> None:
    """Print the comparison for float64 (``x64``) or float32, in this process."""
    import jax

    jax.config.update("jax_enable_x64", x64)
    import jax.numpy as jnp
    import optax

    import adamjax

    dtype = np.float64 if x64 else np.float32
    theta0, grads = _data(dtype)
    print(f"{np.dtype(dtype).name}, {N} parameters, {STEPS} steps, backend {jax.default_backend()}")

    def trajectory(tx, fused: bool) -> tuple[list[np.ndarray], list[np.ndarray], list]:
        """Parameters and updates after each step, and the state after the second."""
        if fused:

            def step(p, s, g):
                p, s = adamjax.apply_gradients(tx, g, s, p)
                return p, s, p

        else:

            def step(p, s, g):
                u, s = tx.update(g, s, p)
                return optax.apply_updates(p, u), s, u

        jitted: Callable = jax.jit(step)
        p, s = jnp.asarray(theta0), tx.init(jnp.asarray(theta0))
        params, updates, second = [], [], []
        for t, g in enumerate(grads, start=1):
            p, s, u = jitted(p, s, jnp.asarray(g))
            params.append(np.asarray(p))
            updates.append(np.asarray(u))
            if t == 2:
                second = [np.asarray(x) for x in jax.tree.leaves(s) if np.shape(x) == (N,)]
        return params, updates, second

    ours, ours_u, ours_state = trajectory(adamjax.adam(LR), fused=False)
    kernel, _, _ = trajectory(adamjax.adam(LR), fused=True)
    theirs, theirs_u, theirs_state = trajectory(optax.adam(LR), fused=False)
    torch_params = _torch_trajectory(theta0, grads)
    exact = list(reference.adam(theta0, grads, LR, B1, B2, EPS))

    def pairwise(a: list[np.ndarray], b: list[np.ndarray]) -> list[tuple[float, float]]:
        return [_compare(x, y) for x, y in zip(a, b, strict=True)]

    _row("updates: adamjax vs Optax", pairwise(ours_u, theirs_u))
    _row("parameters: adamjax vs Optax", pairwise(ours, theirs))
    if torch_params is not None:
        _row("parameters: adamjax vs PyTorch", pairwise(ours, torch_params))
        _row("parameters: Optax vs PyTorch", pairwise(theirs, torch_params))
    _row("parameters: update+apply_updates vs apply_gradients", pairwise(ours, kernel))
    print("  error against float64 Algorithm 1 (|theta_t - exact_t| / lr, over all steps):")
    named = [("adamjax", ours), ("adamjax apply_gradients", kernel), ("Optax", theirs)]
    if torch_params is not None:
        named.append(("PyTorch", torch_params))
    for name, traj in named:
        errs = np.concatenate(
            [np.abs(a.astype(np.float64) - e) / LR for a, e in zip(traj, exact, strict=True)]
        )
        print(f"    {name:<24} mean {errs.mean():.2e}  max {errs.max():.2e}")
    if not x64 and ours_state and theirs_state:
        g1, g2 = grads[0], grads[1]
        c0, c1 = np.float32(B1), np.float32(1 - B1)
        m1 = c1 * g1
        fused = {
            "fma(b1, m, (1-b1) g)": _fma32(np.full_like(m1, c0), m1, c1 * g2),
            "fma(1-b1, g, b1 m)": _fma32(np.full_like(g2, c1), g2, c0 * m1),
            "no fma": c0 * m1 + c1 * g2,
        }
        print("  cause: m_2 equal to a NumPy float32 transcription of the first-moment line")
        for name, m2 in fused.items():
            print(
                f"    {name:<24} adamjax {np.mean(ours_state[0] == m2):6.1%}  "
                f"Optax {np.mean(theirs_state[0] == m2):6.1%}"
            )


def main() -> None:
    """float32 here, float64 in a child process (x64 must be set before JAX starts)."""
    if "--x64" in sys.argv:
        measure(True)
        return
    measure(False)
    subprocess.run([sys.executable, "-m", "benchmarks.parity", "--x64"], check=True)


if __name__ == "__main__":
    main()
