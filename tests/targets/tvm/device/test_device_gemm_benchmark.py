"""benchmarks/device_gemm.py runs end to end on OpenCL (its bit-exact check included)."""

from __future__ import annotations

import importlib.util
import os

import pytest

pytest.importorskip("tvm")
pytest.importorskip("pyopencl", reason="pyopencl missing: pip install 'rqcompile[opencl]'")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


@pytest.mark.slow
def test_device_gemm_benchmark_on_opencl(tmp_path: object, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location(
        "device_gemm", os.path.join(ROOT, "benchmarks", "device_gemm.py")
    )
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    out = os.path.join(str(tmp_path), "t.md")
    assert mod.main(["--target", "opencl", "--size", "64", "--block", "64", "--repeat", "1",
                     "--out", out]) == 0  # fmt: skip
    text = open(out).read()
    assert "xnor (A1W1) core" in text and "MISMATCH" not in capsys.readouterr().err
