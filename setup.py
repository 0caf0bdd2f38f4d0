"""Build of adamjax's optional native CPU kernel (adamjax/native/adam_ffi.cc).

All metadata lives in pyproject.toml; this file only adds the C++ extension. The kernel
needs a C++17 compiler and the XLA FFI headers that ship with jaxlib (a build requirement
in pyproject.toml). If either is missing, or compiling fails, the build prints a warning
and installs the pure-Python package: adamjax then runs its pure-JAX path and says so once
at import (``adamjax.native.native_available()`` is False).

Environment:
  ADAMJAX_NO_NATIVE_BUILD=1   skip the native kernel.
  ADAMJAX_NATIVE_BUILD_STRICT=1   fail the install if the kernel cannot be built (for CI).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Shipped code must run on any x86-64: no -march=native. The kernel file itself compiles
# its loops for AVX-512, AVX2 and baseline x86-64 and picks one at load time.
# -ffp-contract=off: no FMA contraction, so the results match XLA's bit for bit.
# -fno-math-errno: lets sqrt vectorise (it changes no result).
_CXX_FLAGS = [
    "-std=c++17",
    "-O3",
    "-fPIC",
    "-pthread",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-fno-strict-aliasing",
    "-g0",  # no debug info: a smaller wheel
]
_LINK_FLAGS = ["-pthread"]


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def _ffi_include_dir() -> str | None:
    """jaxlib's include/ (holds xla/ffi/api/ffi.h), found without importing jaxlib."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        inc = Path(root) / "include"
        if (inc / "xla" / "ffi" / "api" / "ffi.h").is_file():
            return str(inc)
    return None


def _warn(msg: str) -> None:
    bar = "*" * 78
    print(
        f"\n{bar}\nadamjax: {msg}\nadamjax installs without its native kernel and uses the "
        f"pure-JAX path (same results, slower).\n{bar}\n",
        file=sys.stderr,
    )


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install unless ADAMJAX_NATIVE_BUILD_STRICT is set."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - e.g. no compiler at all
            if _truthy("ADAMJAX_NATIVE_BUILD_STRICT"):
                raise
            _warn(f"building the native kernel failed ({type(e).__name__}: {e}).")

    def build_extension(self, ext):
        inc = _ffi_include_dir()
        if inc is None:
            msg = "the XLA FFI headers (jaxlib/include/xla/ffi) were not found."
            if _truthy("ADAMJAX_NATIVE_BUILD_STRICT"):
                raise RuntimeError(msg)
            _warn(msg)
            return
        ext.include_dirs = [*ext.include_dirs, inc]
        if self.compiler.compiler_type == "msvc":
            ext.extra_compile_args = ["/std:c++17", "/O2", "/fp:precise"]
            ext.extra_link_args = []
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            if _truthy("ADAMJAX_NATIVE_BUILD_STRICT"):
                raise
            _warn(f"compiling {ext.sources[0]} failed ({type(e).__name__}: {e}).")

    def get_export_symbols(self, ext):
        # A plain shared library loaded with ctypes, not a Python module: no PyInit_*.
        return ext.export_symbols


ext_modules = []
if not _truthy("ADAMJAX_NO_NATIVE_BUILD"):
    ext_modules.append(
        Extension(
            "adamjax.native._adam_ffi",
            sources=["adamjax/native/adam_ffi.cc", "adamjax/native/quantized_ffi.cc"],
            depends=["adamjax/native/kernel_common.h", "adamjax/native/quantized_avx512.inc"],
            language="c++",
            extra_compile_args=_CXX_FLAGS,
            extra_link_args=_LINK_FLAGS,
            optional=True,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
