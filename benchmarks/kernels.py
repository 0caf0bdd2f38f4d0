"""Memory rooflines and the Adam step on single float32 tensors (1M, 10M, 50M parameters).

Every step here is jitted with the parameters and moments donated, so it runs in place:
it reads p, g, m, v and writes p, m, v, 28 bytes per float32 parameter at the least.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamjax
from adamjax.step import apply_gradients
from benchmarks import device
from benchmarks.timing import Stepper, interleaved

BYTES_PER_PARAM = 28
LR = 1e-3
WD = 1e-2


def xla_roofline_step(p, m, v, g):
    """Trivial math, same traffic as Adam: ``p += g; m += g; v += g`` (p, m, v donated)."""
    return p + g, m + g, v + g


_C_ROOFLINE = r"""
#include <stddef.h>
void roofline(float *restrict p, const float *restrict g, float *restrict m,
              float *restrict v, long n) {
  #pragma omp parallel for simd schedule(static)
  for (long i = 0; i < n; ++i) { float x = g[i]; p[i] += x; m[i] += x; v[i] += x; }
}
"""


class CRoofline:
    """A plain C loop with OpenMP (one thread per core), compiled here: used only when
    ``adamjax.native`` is unavailable."""

    def __init__(self, n: int):
        d = tempfile.mkdtemp(prefix="adamjax_roofline_")
        src, lib = os.path.join(d, "r.c"), os.path.join(d, "r.so")
        with open(src, "w") as f:
            f.write(_C_ROOFLINE)
        subprocess.run(["cc", "-O3", "-fopenmp", "-shared", "-fPIC", src, "-o", lib], check=True)
        self.fn = ctypes.CDLL(lib).roofline
        self.arrays = [np.full(n, 0.5, np.float32) for _ in range(4)]
        self.ptrs = [a.ctypes.data_as(ctypes.c_void_p) for a in self.arrays]
        self.n = ctypes.c_long(n)

    def __call__(self):
        self.fn(*self.ptrs, self.n)


def native_roofline(n: int):
    """The native roofline callable and its label; ``(None, reason)`` off the CPU."""
    if not device.on_cpu():
        return None, f"none on {device.backend()}: the XLA roofline is one fused kernel there"
    try:
        from adamjax import native
        from adamjax.native import _calls

        if native.native_available():
            p, m, v = (jnp.full((n,), 0.5, jnp.float32) for _ in range(3))
            g = jnp.full((n,), 1e-3, jnp.float32)

            def roof(p, m, v, g):
                return _calls.roofline(p, g, m, v)

            return Stepper(jax.jit(roof, donate_argnums=(0, 1, 2)), (p, m, v), g), (
                "adamjax.native roofline target (C++, XLA's CPU threads)"
            )
    except Exception:  # noqa: BLE001
        pass
    return CRoofline(n), "C loop, OpenMP, compiled by the benchmark"


def _jax_step(opt):
    def step(p, st, g):
        return apply_gradients(opt, g, st, p)

    return jax.jit(step, donate_argnums=(0, 1))


def _optax_step(opt):
    def step(p, st, g):
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st

    return jax.jit(step, donate_argnums=(0, 1))


def compiled_program(opt, n: int) -> dict:
    """What XLA compiles for ``opt.update`` + ``optax.apply_updates`` (donated, jitted) on
    one float32 tensor of ``n`` parameters: how many times each HLO op appears, the number
    of fusions and the bytes the cost model says the step moves. Two steps with equal
    summaries run the same kernels, whatever their wall times say on a noisy machine."""
    p = jnp.zeros((n,), jnp.float32)
    compiled = _optax_step(opt).lower(p, opt.init(p), p).compile()
    ops: dict[str, int] = {}
    for op in re.findall(r"= \S+ ([a-z][\w-]*)\(", compiled.as_text()):
        ops[op] = ops.get(op, 0) + 1
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"ops": ops, "fusions": ops.get("fusion", 0), "bytes": cost.get("bytes accessed")}


def _torch_adam(n: int, **kw):
    import torch

    dev = device.torch_device()
    p = torch.nn.Parameter(torch.full((n,), 0.5, device=dev))
    p.grad = torch.full((n,), 1e-3, device=dev)
    opt = torch.optim.Adam([p], lr=LR, **kw)
    return device.torch_synced(opt.step, dev)


def single_tensor_cases(n: int, with_torch: bool, bf16: bool):
    """The steps to time on one tensor of ``n`` float32 parameters."""
    g = jnp.full((n,), 1e-3, jnp.float32)

    def fresh():
        return jnp.full((n,), 0.5, jnp.float32)

    cases = {}
    k = device.inner_steps()
    p, m, v = fresh(), fresh(), fresh()
    cases["xla_roofline"] = Stepper(
        jax.jit(xla_roofline_step, donate_argnums=(0, 1, 2)), (p, m, v), g, inner=k
    )
    roof, roof_label = native_roofline(n)
    if roof is not None:
        cases["native_roofline"] = roof
    native = device.native_in_use()
    configs = {"adamjax_jax": adamjax.adam(LR, implementation="jax")}
    if native:
        configs["adamjax_native"] = adamjax.adam(LR, implementation="auto")
    if bf16:
        configs["adamjax_jax_bf16"] = adamjax.adam(
            LR, implementation="jax", state_dtype=jnp.bfloat16
        )
        if native:
            configs["adamjax_native_bf16"] = adamjax.adam(LR, state_dtype=jnp.bfloat16)
        # 8-bit block-wise moments: the chain as written, and (CPU) the fused 8-bit kernel
        # that the default path takes.
        configs["adamjax_jax_int8"] = adamjax.adam(LR, state_dtype="int8", implementation="jax")
        if native:
            configs["adamjax_native_int8"] = adamjax.adam(LR, state_dtype="int8")
    for name, opt in configs.items():
        p = fresh()
        cases[name] = Stepper(_jax_step(opt), (p, opt.init(p)), g, inner=k)
    o = optax.adam(LR)
    p = fresh()
    cases["optax"] = Stepper(_optax_step(o), (p, o.init(p)), g, inner=k)
    if with_torch:
        cases["torch_foreach"] = _torch_adam(n, foreach=True)
        cases["torch_fused"] = _torch_adam(n, fused=True)
    return cases, roof_label


def run_single_tensors(sizes, repeats: int, with_torch: bool, bf16_at: int):
    """Median step time of every case per size; ratios to both rooflines."""
    out = []
    for n in sizes:
        cases, roof_label = single_tensor_cases(n, with_torch, bf16=(n == bf16_at))
        # PyTorch's OpenMP threads spin for a while after each step and slow whatever runs
        # next on the same cores, so the PyTorch cases are timed in a rotation of their own.
        torch_cases = {k: cases.pop(k) for k in list(cases) if k.startswith("torch")}
        t = interleaved(cases, repeats=repeats)
        if torch_cases:
            t |= interleaved(torch_cases, repeats=repeats)
        k = device.inner_steps()  # the native roofline (CPU only) is one step per call
        t = {name: s if name == "native_roofline" else s / k for name, s in t.items()}
        out.append({"n": n, "seconds": t, "native_roofline": roof_label})
        del cases
    return out


# The calls users make, one row each (the names are what the tables print).
USER_PATHS = {
    "optax.adam update+optax.apply_updates": lambda: ("update", optax.adam(LR)),
    "adamjax.adam update+optax.apply_updates": lambda: ("update", adamjax.adam(LR)),
    "adamjax.apply_gradients(adamjax.adam)": lambda: ("apply", adamjax.adam(LR)),
    "adamjax.adam(implementation='jax') update+apply": lambda: (
        "update",
        adamjax.adam(LR, implementation="jax"),
    ),
    "adamjax.adam(implementation='native') update+apply": lambda: (
        "update",
        adamjax.adam(LR, implementation="native"),
    ),
    # AdamW: Adam plus wd * p (28 B/param too: the apply form reads p anyway).
    "optax.adamw update+optax.apply_updates": lambda: ("update", optax.adamw(LR, weight_decay=WD)),
    "adamjax.adamw update+optax.apply_updates": lambda: (
        "update",
        adamjax.adamw(LR, weight_decay=WD),
    ),
    "adamjax.apply_gradients(adamjax.adamw)": lambda: (
        "apply",
        adamjax.adamw(LR, weight_decay=WD),
    ),
}
# The Optax row each user path is compared with.
OPTAX_REFERENCE = {"adam": "optax.adam update+optax.apply_updates"}
OPTAX_REFERENCE["adamw"] = "optax.adamw update+optax.apply_updates"


def optax_reference(name: str) -> str:
    """The Optax row to compare the user path ``name`` with."""
    return OPTAX_REFERENCE["adamw" if "adamw" in name else "adam"]


def user_path_cases(n: int, only: str | None = None):
    """One float32 tensor of ``n`` parameters; each case a donated jitted step as a user
    writes it (``opt.update`` + ``optax.apply_updates``, or ``adamjax.apply_gradients``),
    and XLA's ``p, m, v += g`` (28 B/param, trivial math) as the floor."""
    g = jnp.full((n,), 1e-3, jnp.float32)
    k = device.inner_steps()
    p, m, v = (jnp.full((n,), 0.5, jnp.float32) for _ in range(3))
    cases = {
        "xla_roofline": Stepper(
            jax.jit(xla_roofline_step, donate_argnums=(0, 1, 2)), (p, m, v), g, inner=k
        )
    }
    for name, make in USER_PATHS.items():
        if only is not None and only not in name:
            continue
        form, opt = make()
        p = jnp.full((n,), 0.5, jnp.float32)
        step = _optax_step(opt) if form == "update" else _jax_step(opt)
        cases[name] = Stepper(step, (p, opt.init(p)), g, inner=k)
    return cases


def run_user_paths(sizes, repeats: int, only: str | None = None):
    """Median seconds per step of each user path (those whose name holds ``only``, if
    given), per size (cases interleaved)."""
    out = []
    for n in sizes:
        cases = user_path_cases(n, only)
        t = interleaved(cases, repeats=repeats)
        out.append({"n": n, "seconds": {k: s / device.inner_steps() for k, s in t.items()}})
        del cases
    return out


def torch_available() -> bool:
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        return False
