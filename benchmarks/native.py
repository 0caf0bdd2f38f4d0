"""Time one Adam step on a single float32 tensor: the native kernel against its rooflines.

    python -m benchmarks.native [--n 50000000] [--repeats 15]

Rows (median of ``repeats`` timed steps after warm-up, all in one process, timed
round-robin so that load from other processes falls on every row alike):

- ``native_roofline``: the library's roofline target through the FFI (28 B/param,
  trivial math, the kernel's own threads): the floor for the native step.
- ``c_openmp_roofline``: the same loop in plain C with OpenMP, built here with the
  machine's compiler (skipped without one): checks that the FFI roofline is the machine's.
- ``adamjax_native_apply``: ``adamjax.apply_gradients(adamjax.adam(1e-3,
  implementation="native"))`` (the kernel's apply form), jitted, buffers donated.
- ``optax_adam_donated``: ``optax.adam`` + ``optax.apply_updates``, jitted and donated.
- ``torch_adam_fused`` / ``torch_adam_foreach``: ``torch.optim.Adam`` when torch is installed.

:func:`run` returns the rows as a dict, for the project benchmark to reuse.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.timing import interleaved

BYTES_PER_PARAM = 28  # read p, g, m, v; write p, m, v (float32)

_C_ROOFLINE = r"""
#include <stddef.h>
void roofline(size_t n, float* restrict p, const float* restrict g, float* restrict m,
              float* restrict v) {
  #pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) {
    float gi = g[i];
    m[i] += gi; v[i] += gi; p[i] += gi;
  }
}
"""


def _c_roofline_step(n: int, keep: list) -> Callable[[], Any] | None:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    d = tempfile.mkdtemp()
    src, lib = os.path.join(d, "r.c"), os.path.join(d, "r.so")
    with open(src, "w") as f:
        f.write(_C_ROOFLINE)
    try:
        subprocess.run(
            [cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", src, "-o", lib],
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, OSError):
        return None
    fn = ctypes.CDLL(lib).roofline
    fp = ctypes.POINTER(ctypes.c_float)
    fn.argtypes = [ctypes.c_size_t, fp, fp, fp, fp]
    arrs = [np.ones(n, np.float32) for _ in range(4)]
    keep.append(arrs)
    ptrs = [a.ctypes.data_as(fp) for a in arrs]
    return lambda: fn(n, *ptrs)


def run(n: int = 50_000_000, repeats: int = 15, torch_rows: bool = True) -> dict[str, Any]:
    """Median seconds per step for each row, plus bandwidths and ratios."""
    import jax
    import jax.numpy as jnp
    import optax

    import adamjax
    from adamjax import native
    from adamjax.native import _calls

    steps: dict[str, Callable[[], Any]] = {}
    keep: list = []
    rng = np.random.default_rng(0)
    g_host = rng.standard_normal(n, dtype=np.float32)
    g = jnp.asarray(g_host)

    if native.native_available():
        roof = jax.jit(_calls.roofline, donate_argnums=(0, 2, 3))
        rstate = [jnp.zeros(n, jnp.float32) for _ in range(3)]

        def roof_step():
            rstate[:] = roof(rstate[0], g, rstate[1], rstate[2])
            rstate[0].block_until_ready()

        steps["native_roofline"] = roof_step

        nopt = adamjax.adam(1e-3, implementation="native")
        apply = jax.jit(
            lambda p, s, g: adamjax.apply_gradients(nopt, g, s, p), donate_argnums=(0, 1)
        )
        nstate = [jnp.zeros(n, jnp.float32)]
        nstate.append(nopt.init(nstate[0]))

        def native_step():
            nstate[0], nstate[1] = apply(nstate[0], nstate[1], g)
            nstate[0].block_until_ready()

        steps["adamjax_native_apply"] = native_step

    c_step = _c_roofline_step(n, keep)
    if c_step is not None:
        steps["c_openmp_roofline"] = c_step

    opt = optax.adam(1e-3)

    def optax_step_fn(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    ostep = jax.jit(optax_step_fn, donate_argnums=(0, 1))
    ost = [jnp.zeros(n, jnp.float32)]
    ost.append(opt.init(ost[0]))

    def optax_step():
        ost[0], ost[1] = ostep(ost[0], ost[1], g)
        ost[0].block_until_ready()

    steps["optax_adam_donated"] = optax_step

    if torch_rows:
        try:
            import torch
        except ImportError:
            pass
        else:
            for kind in ("fused", "foreach"):
                tp = torch.zeros(n, dtype=torch.float32, requires_grad=True)
                tp.grad = torch.from_numpy(g_host.copy())
                if kind == "fused":
                    topt = torch.optim.Adam([tp], lr=1e-3, fused=True)
                else:
                    topt = torch.optim.Adam([tp], lr=1e-3, foreach=True)
                keep.append((tp, topt))
                steps[f"torch_adam_{kind}"] = topt.step

    rows = interleaved(steps, repeats)
    del keep, steps

    gb = n * BYTES_PER_PARAM / 1e9
    out: dict[str, Any] = {
        "n": n,
        "repeats": repeats,
        "seconds": rows,
        "GB_per_s": {k: gb / t for k, t in rows.items()},
        "native_info": native.native_info(),
        "cpu_count": os.cpu_count(),
    }
    if "adamjax_native_apply" in rows:
        t = rows["adamjax_native_apply"]
        ratios = {}
        for ref in ("native_roofline", "c_openmp_roofline"):
            if ref in rows:
                ratios[f"fraction_of_{ref}"] = rows[ref] / t
        for ref in ("torch_adam_fused", "torch_adam_foreach", "optax_adam_donated"):
            if ref in rows:
                ratios[f"speedup_vs_{ref}"] = rows[ref] / t
        out["ratios"] = ratios
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000_000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args()
    res = run(a.n, a.repeats, torch_rows=not a.no_torch)
    for k, t in res["seconds"].items():
        print(f"{k:24s} {t * 1e3:8.2f} ms  {res['GB_per_s'][k]:6.1f} GB/s")
    for k, r in res.get("ratios", {}).items():
        print(f"{k:40s} {r:6.3f}")
    print(json.dumps(res["native_info"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
