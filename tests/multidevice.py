"""Run a test case on N simulated CPU devices.

JAX fixes its device count when it starts, so a case that needs N devices runs in a child
Python process started with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (or in
this process, when it already has exactly N devices and the case takes no arguments).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax

ROOT = Path(__file__).resolve().parents[1]


def run_case(test_file: str, namespace: dict[str, Any], case: str, devices: int, *args: str) -> str:
    """Run ``case(*args)``, a function of ``test_file``, on ``devices`` CPU devices.

    Returns the child's standard output ("" when run in this process); fails the test with
    the end of the child's output when the case raises.
    """
    if not args and jax.device_count() == devices:
        namespace[case]()
        return ""
    flags = re.sub(
        r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")
    )
    env = dict(
        os.environ,
        XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    code = (
        "import runpy, sys\n"
        f"ns = runpy.run_path({str(Path(test_file).resolve())!r})\n"
        "import jax\n"
        f"assert jax.device_count() == {devices}, jax.devices()\n"
        f"ns[{case!r}](*sys.argv[1:])\n"
        "print('CASE OK')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "CASE OK" in proc.stdout, (
        f"{case} on {devices} devices failed:\n{out[-6000:]}"
    )
    return proc.stdout
