"""Whole tiny models on target="opencl" (PoCL on the CPU in CI) vs the reference target.

Float outputs must match within rtol 1e-4 and atol 1e-4·max|y| (the integer cores are
exact, checked kernel by kernel in test_kernels_opencl.py; float summation order differs
from torch). Each (model, preset) is built once per session; the default tier builds the
MLP under A4W4, A1W1 and A4W1+2:4; CNN and attention are ``slow``.
"""

from __future__ import annotations

import functools
import json
import os
import zipfile
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")
pytest.importorskip("pyopencl", reason="pyopencl not installed: pip install 'rqcompile[opencl]'")

import rqcompile as rq  # noqa: E402  (after the importorskip guard)
from rqcompile.errors import ArtifactError  # noqa: E402
from rqcompile.targets.tvm.device.build import DeviceBackend  # noqa: E402
from rqcompile.targets.tvm.device.opencl import opencl_available  # noqa: E402
from rqcompile.testing.models import prepared_tiny  # noqa: E402

pytestmark = [
    pytest.mark.tvm,
    pytest.mark.skipif(opencl_available() is not None, reason=str(opencl_available())),
]

DEFAULT = {("mlp", "A4W4"), ("mlp", "A1W1"), ("mlp", "A4W1+2:4")}
MATRIX = [
    pytest.param(n, p, marks=() if (n, p) in DEFAULT else pytest.mark.slow)
    for n, p in [
        ("mlp", "A4W4"),
        ("mlp", "A1W1"),
        ("mlp", "A4W1+2:4"),
        ("mlp", "A8W8"),
        ("cnn", "A4W4"),
        ("attention", "A4W4"),
        ("attention", "A1W1"),
    ]
]


@functools.cache
def _lowered(name: str, preset: str) -> tuple[Any, tuple[torch.Tensor, ...], Any]:
    torch.manual_seed(0)
    qat, ex = prepared_tiny(name, preset)
    return qat, ex, rq.lower(qat, "opencl")


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize(("name", "preset"), MATRIX)
def test_opencl_matches_reference(name: str, preset: str) -> None:
    qat, ex, exe = _lowered(name, preset)
    _close(exe(*ex), rq.lower(qat, "reference")(*ex))


def test_build_is_opencl_source_plus_plan() -> None:
    _, ex, exe = _lowered("mlp", "A1W1")
    b = exe.backend
    assert isinstance(b, DeviceBackend)
    assert "__kernel void" in b.source and "popcount(" in b.source
    names = {ln.kernel for f in b.plan.funcs.values() for ln in f.launches}
    assert names and all(f"__kernel void {n}(" in b.source for n in names)
    assert all(max(ln.block) <= 64 for f in b.plan.funcs.values() for ln in f.launches)
    y1 = exe(*ex).clone()
    assert torch.equal(exe(*ex), y1)  # buffers are reused: a second call gives the same


def test_artifact_round_trip(tmp_path: Any) -> None:
    _, ex, exe = _lowered("mlp", "A4W1+2:4")
    path = tmp_path / "m.rq"
    exe.save(path)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
    assert {"device_plan.json", "kernels.cl", "ir.mlir", "weights.safetensors"} <= names
    assert "kernels.so" not in names and manifest["target"] == {"kind": "opencl"}
    loaded = rq.load(path)
    assert torch.equal(loaded(*ex), exe(*ex))
    rebuilt = rq.load(path, trust_kernels=False)  # rebuilt from the IR, same kernels
    assert torch.equal(rebuilt(*ex), exe(*ex))


def test_tampered_plan_is_rejected(tmp_path: Any) -> None:
    _, _, exe = _lowered("mlp", "A4W4")
    good = tmp_path / "m.rq"
    exe.save(good)
    bad = tmp_path / "bad.rq"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "device_plan.json":
                data = data.replace(b'"grid"', b'"grid" ', 1)
            zout.writestr(item, data)
    with pytest.raises(ArtifactError, match="checksum"):
        rq.load(bad)
    assert os.path.exists(good)


def test_wrong_shape_is_refused() -> None:
    _, ex, exe = _lowered("mlp", "A4W4")
    with pytest.raises(rq.InputError, match="shape"):
        exe(ex[0][:2])


def test_artifact_loads_in_a_fresh_process_without_tvm(tmp_path: Any) -> None:
    import subprocess
    import sys

    _, ex, exe = _lowered("mlp", "A4W4")
    exe.save(tmp_path / "m.rq")
    torch.save(ex[0], tmp_path / "x.pt")
    torch.save(exe(*ex), tmp_path / "y.pt")
    code = (
        "import sys, torch; sys.modules['tvm'] = None\n"  # any TVM import now fails
        "import rqcompile as rq\n"
        f"m = rq.load({str(tmp_path / 'm.rq')!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r}); y = torch.load({str(tmp_path / 'y.pt')!r})\n"
        "assert torch.equal(m(x), y)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
