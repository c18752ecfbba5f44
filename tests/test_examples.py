"""Every example runs as written (tiny step counts)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "script, args",
    [
        ("quickstart.py", []),
        ("digits_qat.py", ["--steps", "3"]),
        ("shakespeare_qat.py", ["--steps", "2", "--out", "ckpt.safetensors"]),
        ("serve_dynamic.py", ["--target", "reference", "--steps", "2"]),
    ],
)
def test_example_runs(script: str, args: list[str], tmp_path: os.PathLike) -> None:
    # PYTHONPATH: run against this checkout, even where another one is installed editable
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
