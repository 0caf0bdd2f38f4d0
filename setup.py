"""Build of adamjax's optional native CPU kernel (adamjax/native/adam_ffi.cc).

All metadata lives in pyproject.toml; this file only adds the C++ extension. The kernel
needs a C++17 compiler and the XLA FFI headers that ship with jaxlib (a build requirement
in pyproject.toml). If either is missing, or compiling fails, the build prints a warning
and installs the pure-Python package: adamjax then runs its pure-JAX path and says so once
at import (``adamjax.native.native_available()`` is False).

When the kernel is not built, the reason is written beside where the library would have been
(``adamjax/native/_adam_ffi.build-error.txt``, shipped in the wheel), so that
``adamjax.native_info()["reason"]`` can say why at run time, naming a missing compiler.

Environment:
  ADAMJAX_NO_NATIVE_BUILD=1   skip the native kernel.
  ADAMJAX_NATIVE_BUILD_STRICT=1   fail the install if the kernel cannot be built (for CI).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
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


# Read by adamjax/native/_library.py: why the library beside it was not built.
_BUILD_ERROR_NAME = "_adam_ffi.build-error.txt"


def _missing_compiler(compiler) -> str | None:
    """A compiler or linker command this build would run (C++ first) that is not on PATH."""
    for attr in ("compiler_so_cxx", "compiler_cxx", "linker_so_cxx", "compiler_so", "linker_so"):
        cmd = getattr(compiler, attr, None)
        if cmd and shutil.which(cmd[0]) is None:
            return cmd[0]
    return None


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install unless ADAMJAX_NATIVE_BUILD_STRICT is set."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - e.g. no compiler at all
            if _truthy("ADAMJAX_NATIVE_BUILD_STRICT"):
                raise
            self._failed(None, f"building the native kernel failed ({type(e).__name__}: {e})")

    def _note_path(self, ext) -> Path:
        return Path(self.get_ext_fullpath(ext.name)).parent / _BUILD_ERROR_NAME

    def _failed(self, ext, msg: str) -> None:
        """Fail (strict) or warn, and leave the reason where the library would have been."""
        if _truthy("ADAMJAX_NATIVE_BUILD_STRICT"):
            raise RuntimeError(msg)
        _warn(msg + ".")
        for e in [ext] if ext is not None else self.extensions:
            note = self._note_path(e)
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(msg + "\n")

    def build_extension(self, ext):
        self._note_path(ext).unlink(missing_ok=True)  # a reason from an earlier build is stale
        inc = _ffi_include_dir()
        if inc is None:
            self._failed(ext, "the XLA FFI headers (jaxlib/include/xla/ffi) were not found")
            return
        ext.include_dirs = [*ext.include_dirs, inc]
        if self.compiler.compiler_type == "msvc":
            ext.extra_compile_args = ["/std:c++17", "/O2", "/fp:precise"]
            ext.extra_link_args = []
        else:
            missing = _missing_compiler(self.compiler)
            if missing is not None:
                self._failed(
                    ext,
                    f"no C++ compiler: `{missing}` was not found on PATH (install g++ or "
                    "clang++, or point CXX at a C++17 compiler, and reinstall adamjax)",
                )
                return
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            self._failed(ext, f"compiling {ext.sources[0]} failed ({type(e).__name__}: {e})")

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
