"""Finding, loading and registering the compiled kernel library (one per process).

The library is ``adamjax/native/_adam_ffi*.so``, built by ``pip install`` (setup.py) or
``python setup.py build_ext --inplace``. Nothing else is ever loaded. Environment knobs
(all documented in docs/fast-paths.md): ``ADAMJAX_DISABLE_NATIVE=1`` switches the kernel
off; ``ADAMJAX_NATIVE_THREADS`` and ``ADAMJAX_NATIVE_ISA`` are read by the C++ code.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import threading
import warnings
from pathlib import Path

import jax

_DISABLE_ENV = "ADAMJAX_DISABLE_NATIVE"
_LIB_STEM = "_adam_ffi"
TARGET_PREFIX = "adamjax_native_"
# Python name -> C symbol of each FFI handler in adam_ffi.cc and quantized_ffi.cc.
TARGETS = {
    "adam_apply": "AdamjaxAdamApply",
    "adam_update": "AdamjaxAdamUpdate",
    "adamax_apply": "AdamjaxAdamaxApply",
    "adamax_update": "AdamjaxAdamaxUpdate",
    "adamw_apply": "AdamjaxAdamwApply",
    "adamw_update": "AdamjaxAdamwUpdate",
    "roofline": "AdamjaxRoofline",
    # 8-bit block-wise moments (quantized_ffi.cc)
    "adam_apply_q8": "AdamjaxAdamApplyQ8",
    "adam_update_q8": "AdamjaxAdamUpdateQ8",
    "adamax_apply_q8": "AdamjaxAdamaxApplyQ8",
    "adamax_update_q8": "AdamjaxAdamaxUpdateQ8",
}


class Library:
    """Load state of the shared library."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.lib: ctypes.CDLL | None = None
        self.path: Path | None = None
        self.reason: str | None = None  # why the kernel is off, once known
        self.disabled = False  # switched off by the environment
        self.verified: bool | None = None  # result of the one-time self-test
        self.contract = False  # whether XLA's CPU code contracts a*b + c into an FMA
        self.bitwise = True  # whether the kernel rounds exactly as XLA does here
        self.warned = False
        self.q8 = False  # whether the library has the 8-bit-state targets (quantized_ffi.cc)


LIB = Library()


def _library_path() -> Path | None:
    here = Path(__file__).resolve().parent
    for suffix in [*importlib.machinery.EXTENSION_SUFFIXES, ".so", ".dylib", ".pyd"]:
        candidate = here / f"{_LIB_STEM}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _build_error() -> str | None:
    """Why the install did not build the library, as setup.py wrote it beside the library."""
    note = Path(__file__).resolve().parent / f"{_LIB_STEM}.build-error.txt"
    try:
        return note.read_text().strip() or None
    except OSError:
        return None


def load() -> None:
    """Load the library and register its FFI targets for the CPU (never raises)."""
    flag = os.environ.get(_DISABLE_ENV, "").strip()
    if flag not in ("", "0"):
        LIB.disabled = True
        LIB.reason = f"disabled by {_DISABLE_ENV}={flag}"
        return
    path = _library_path()
    if path is None:
        LIB.reason = (
            f"the compiled library adamjax/native/{_LIB_STEM}*.so is missing (it is built by "
            "`pip install` with a C++17 compiler; reinstall adamjax with g++ or clang++ on PATH)"
        )
        why = _build_error()
        if why:
            LIB.reason += f"; the install said: {why}"
        return
    try:
        lib = ctypes.CDLL(str(path))
        for name, symbol in TARGETS.items():
            if name.endswith("_q8") and not hasattr(lib, symbol):
                continue  # a library built before the 8-bit kernel: the float kernels only
            capsule = jax.ffi.pycapsule(getattr(lib, symbol))
            jax.ffi.register_ffi_target(TARGET_PREFIX + name, capsule, platform="cpu")
        lib.AdamjaxNativeIsa.restype = ctypes.c_char_p
    except Exception as e:  # noqa: BLE001 - any failure means: use the pure path
        LIB.reason = f"loading {path.name} failed: {type(e).__name__}: {e}"
        return
    LIB.lib, LIB.path = lib, path
    LIB.q8 = all(hasattr(lib, sym) for name, sym in TARGETS.items() if name.endswith("_q8"))


def warn_unavailable() -> None:
    """Warn once that a CPU step runs the pure chain because the kernel is unavailable
    (not when it was switched off on purpose)."""
    if LIB.disabled or LIB.warned:
        return
    LIB.warned = True
    warnings.warn(
        f"adamjax: the native CPU Adam kernel is not available ({LIB.reason}); this CPU step "
        "runs the pure-JAX chain, which gives the same results more slowly.",
        RuntimeWarning,
        stacklevel=4,
    )


def isa() -> str | None:
    """The instruction set the kernels were picked for (``avx512``, ``avx2``, ``baseline``)."""
    return None if LIB.lib is None else LIB.lib.AdamjaxNativeIsa().decode()


load()
