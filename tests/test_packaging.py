"""The package as users get it: the sdist and wheel, installed into a fresh virtualenv
outside the repository, with and without a C++ compiler.

The sdist and wheel are built once (``python -m build --no-isolation``: the wheel is built
from the sdist, so a file missing from the sdist breaks it). Each install goes into a new
virtualenv in a temporary folder with ``--no-deps --no-index``; the dependencies (jax, optax,
flax, ...) come from this test environment through a ``.pth`` line, so that an install takes
seconds, not a download of jaxlib. ``pip check`` then confirms that the installed wheel's
requirements are met. The quickstart runs from the temporary folder, so the repository's
``adamjax`` cannot be the one imported.

The build inherits ``ADAMJAX_NATIVE_BUILD_STRICT`` (CI sets it: a kernel that does not build
fails this test); the no-compiler install removes it for its child, since there the kernel is
meant to be left out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[1]

# One Adam step on a tiny pytree, by the installed package, both through update +
# apply_updates and through the fused apply_gradients (the kernel's path on the CPU), both
# jitted: the kernel gives the XLA-compiled chain's numbers.
QUICKSTART = r"""
import json, warnings
import jax, jax.numpy as jnp, optax, adamjax

params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
grads = {"w": jnp.array([0.5, -4.0, 1e-3]), "b": jnp.array(2.0)}
opt = adamjax.adam(0.1)


@jax.jit
def plain(g, s, p):
    u, _ = opt.update(g, s, p)
    return u, optax.apply_updates(p, u)


updates, stepped = plain(grads, opt.init(params), params)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fused, _ = jax.jit(lambda g, s, p: adamjax.apply_gradients(opt, g, s, p))(
        grads, opt.init(params), params
    )
print(json.dumps({
    "file": adamjax.__file__,
    "native_info": adamjax.native_info(),
    "updates": {k: jnp.ravel(v).tolist() for k, v in updates.items()},
    "stepped": {k: jnp.ravel(v).tolist() for k, v in stepped.items()},
    "fused": {k: jnp.ravel(v).tolist() for k, v in fused.items()},
    "warnings": [str(w.message) for w in caught],
}))
"""

PARAMS = {"w": [1.0, -2.0, 3.0], "b": [0.5]}
GRADS = {"w": [0.5, -4.0, 1e-3], "b": [2.0]}


def hand_adam_step(lr=0.1, b1=0.9, b2=0.999, eps=1e-8):
    """Algorithm 1's first step in float64: m = (1-b1) g, v = (1-b2) g^2, bias-corrected."""
    out = {}
    for k, g in GRADS.items():
        g = np.asarray(g, np.float64)
        m_hat = (1 - b1) * g / (1 - b1)
        v_hat = (1 - b2) * g**2 / (1 - b2)
        out[k] = -lr * m_hat / (np.sqrt(v_hat) + eps)
    return out


def _run(cmd, *, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(c) for c in cmd],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, f"{cmd} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


def _clean_env(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist and wheel of the working tree, built once (as `make dist`, no isolation)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], timeout=600)
    (sdist,) = out.glob("adamjax-*.tar.gz")
    (wheel,) = out.glob("adamjax-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def fresh_venv(where: Path) -> Path:
    """A new virtualenv (no pip of its own) that sees this environment's dependencies."""
    _run([sys.executable, "-m", "venv", "--without-pip", where])
    python = where / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    site = Path(purelib.stdout.strip())
    (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_install(python: Path, target: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-v"]
        + ["--no-deps", "--no-index", "--no-build-isolation", target],
        env=env,
    )


def quickstart(python: Path, cwd: Path) -> dict:
    out = _run([python, "-c", QUICKSTART], env=_clean_env(), cwd=cwd)
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_hand_computed(result: dict, venv: Path) -> None:
    assert Path(result["file"]).resolve().is_relative_to(venv.resolve()), result["file"]
    want = hand_adam_step()
    for k in PARAMS:
        # float32 throughout (1 - b2 itself rounds): within a few float32 ulps of the step.
        np.testing.assert_allclose(result["updates"][k], want[k], rtol=0, atol=2e-6)
        np.testing.assert_allclose(result["stepped"][k], np.add(PARAMS[k], want[k]), atol=2e-6)
        assert result["fused"][k] == result["stepped"][k], k  # the same numbers, bit for bit


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def test_the_sdist_and_wheel_hold_the_library_and_the_kernel_sources(dist):
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = whl.namelist()
    assert "adamjax/__init__.py" in names and "adamjax/py.typed" in names
    assert not any(n.startswith(("tests/", "experiments/", "benchmarks/")) for n in names), names
    if _compiler() or os.environ.get("ADAMJAX_NATIVE_BUILD_STRICT"):
        assert any(n.startswith("adamjax/native/_adam_ffi") and n.endswith(".so") for n in names)
    listing = _run(["tar", "tzf", dist["sdist"]]).stdout
    for source in ("adam_ffi.cc", "quantized_ffi.cc", "kernel_common.h", "quantized_avx512.inc"):
        assert f"adamjax/native/{source}" in listing, source


def test_the_wheel_installs_outside_the_repository_and_steps_as_computed_by_hand(dist, tmp_path):
    venv = tmp_path / "venv"
    python = fresh_venv(venv)
    pip_install(python, dist["wheel"], _clean_env())
    _run([sys.executable, "-m", "pip", "--python", python, "check"])
    result = quickstart(python, tmp_path)
    assert_hand_computed(result, venv)
    if _compiler():
        info = result["native_info"]
        assert info["available"], info
        assert Path(info["library"]).resolve().is_relative_to(venv.resolve()), info


def test_without_a_compiler_the_install_succeeds_and_native_info_names_it(dist, tmp_path):
    venv = tmp_path / "venv"
    python = fresh_venv(venv)
    missing = tmp_path / "no-such-compiler" / "c++"
    env = _clean_env(
        ADAMJAX_NATIVE_BUILD_STRICT=None,  # the kernel is meant to be left out here
        CC=str(tmp_path / "no-such-compiler" / "cc"),
        CXX=str(missing),
    )
    out = pip_install(python, dist["sdist"], env)  # pip builds the wheel from the sdist here
    assert "installs without its native kernel" in out.stdout + out.stderr
    result = quickstart(python, tmp_path)
    assert_hand_computed(result, venv)
    info = result["native_info"]
    assert not info["available"] and info["library"] is None, info
    assert "no C++ compiler" in info["reason"] and str(missing) in info["reason"], info
    # The CPU step that would have used the kernel says once that it runs the pure chain.
    assert any("not available" in w and "no C++ compiler" in w for w in result["warnings"])
