"""Where the benchmark runs: JAX's default backend, and the matching PyTorch device.

On the CPU the default adamjax path is the native kernel (when built) and the second
roofline is the native C++ loop; on a GPU the default path is the composed pure-JAX chain
(XLA fuses it into one kernel there), there is no native roofline, and PyTorch runs on
CUDA, synchronised after every step so that its time is the device's, not the launch's.
"""

from __future__ import annotations

from collections.abc import Callable

import jax


def backend() -> str:
    return jax.default_backend()


def on_cpu() -> bool:
    return backend() == "cpu"


def native_in_use() -> bool:
    """True when ``implementation="auto"`` takes the native kernel here."""
    if not on_cpu():
        return False
    try:
        from adamjax import native

        return bool(native.native_available())
    except Exception:  # noqa: BLE001
        return False


def torch_device() -> str:
    """``"cuda"`` when JAX runs on a GPU and PyTorch sees one, else ``"cpu"``."""
    if backend() == "gpu":
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "cpu"


def inner_steps() -> int:
    """Steps per timed call: 1 on the CPU, 10 on an accelerator (one host wait per 10)."""
    return 1 if on_cpu() else 10


def torch_synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` run :func:`inner_steps` times, then a synchronisation when on CUDA."""
    inner = inner_steps()

    def run() -> None:
        for _ in range(inner):
            fn()
        if device == "cuda":
            import torch

            torch.cuda.synchronize()

    return run


def accelerator_info() -> dict:
    """Name and memory of JAX's first device (and the driver's view of it, when asked)."""
    d = jax.devices()[0]
    info = {"device": str(d), "device_kind": getattr(d, "device_kind", None)}
    try:
        stats = d.memory_stats() or {}
        if "bytes_limit" in stats:
            info["memory_gib"] = round(stats["bytes_limit"] / 2**30, 1)
    except Exception:  # noqa: BLE001
        pass
    return info
