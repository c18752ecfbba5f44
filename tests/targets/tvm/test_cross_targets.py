"""The portable C backend (run here), and aarch64 / riscv64 / Metal (compile-verified).

* ``"c"``: TVM's C backend; ``export_library`` compiles the C with the host compiler and the
  model runs against the reference.
* ``"aarch64"`` / ``"riscv64"``: LLVM cross-compiles; the artifact holds ELF objects for that
  machine; a scheduled int8 GEMM core uses NEON (``smlal`` on ``v`` registers) on aarch64
  and is built for rv64gc+V on riscv64 (LLVM does not vectorize it for RVV).
* ``"metal"``: Metal Shading Language source is generated (nothing here can compile it).
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import tarfile
from typing import Any

import pytest
import torch

tvm = pytest.importorskip("tvm")

import rqcompile as rq  # noqa: E402  (after the importorskip guard)
from rqcompile.targets.target import PRESETS  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.adapter import make_target, te  # noqa: E402
from rqcompile.targets.tvm.schedules.integer import schedule_prim_func  # noqa: E402
from rqcompile.testing.models import prepared_tiny  # noqa: E402

pytestmark = pytest.mark.tvm
_ELF_MACHINE = {"aarch64": 183, "riscv64": 243}


@functools.cache
def _qat(preset: str) -> tuple[Any, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return prepared_tiny("mlp", preset)


def test_presets_parse_to_llvm_dicts() -> None:
    t = rq.Target.parse("aarch64")
    assert t.kind == "llvm" and t.to_dict()["mtriple"] == "aarch64-linux-gnu"
    assert rq.Target.parse("riscv64").to_dict()["mtriple"].startswith("riscv64")
    with pytest.raises(rq.TargetError, match="aarch64"):
        rq.Target.parse("arm64")  # the error lists the presets


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("gcc") is None, reason="no C compiler"
)
def test_c_backend_runs_against_reference(tmp_path: Any) -> None:
    qat, ex = _qat("A1W1")  # XNOR-popcount and the binary grid: popcount + fabs in C
    exe = rq.lower(qat, "c")
    want = rq.lower(qat, "reference")(*ex)
    torch.testing.assert_close(exe(*ex), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    exe.save(tmp_path / "c.rq")
    assert torch.equal(rq.load(tmp_path / "c.rq")(*ex), exe(*ex))


@pytest.mark.parametrize("preset", ["aarch64", "riscv64"])
def test_cross_build_holds_objects_for_that_machine(preset: str) -> None:
    qat, ex = _qat("A4W4")
    exe = rq.lower(qat, preset)
    with tarfile.open(fileobj=io.BytesIO(exe._library)) as tar:
        objs = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".o")]
    assert objs and all(o[:4] == b"\x7fELF" for o in objs)
    assert {int.from_bytes(o[18:20], "little") for o in objs} == {_ELF_MACHINE[preset]}
    with pytest.raises(rq.TargetError, match="cannot run on this machine"):
        exe(*ex)


# aarch64: the int8 core's multiply-accumulate is NEON (smlal on vector registers).
# riscv64: only that the code is for rv64gc + V; LLVM does not vectorize this schedule's
# int8 core for RVV (it emits only vector zero-fills), so no RVV speed is claimed.
@pytest.mark.parametrize(
    ("preset", "pattern"),
    [("aarch64", r"smlal\s+v\d+\.\d+[sh]"), ("riscv64", r"rv64i\S*_v1p0")],
)
def test_int8_core_assembly(preset: str, pattern: str) -> None:
    xq = te.placeholder((8, 128), "int8", name="xq")
    wq = te.placeholder((16, 128), "int8", name="wq")
    p = K.te_int_matmul_core(xq, wq, block=64)
    func = K.prim_func([xq, wq, p], name="core", kernel="int_matmul_core", block=64)
    target = make_target(PRESETS[preset])
    asm = tvm.compile(schedule_prim_func(func, target), target=target).mod.inspect_source("asm")
    assert re.search(pattern, asm), f"no {pattern!r} in the {preset} assembly"


def test_metal_source_for_a_weight_only_model() -> None:
    qat, _ = _qat("W4")
    exe = rq.lower(qat, "metal")
    src = exe.backend.source
    assert src.count("#include <metal_stdlib>") == 1
    names = {ln.kernel for f in exe.backend.plan.funcs.values() for ln in f.launches}
    assert names and all(f"kernel void {n}(" in src for n in names)
    with pytest.raises(rq.TargetError, match="source only"):
        exe(*_qat("W4")[1])


def test_metal_int_kernels_generate_and_quantize_explains() -> None:
    from rqcompile.targets.tvm.device.kernel import device_kernel

    xb = te.placeholder((4, 4), "uint32", name="xb")
    wb = te.placeholder((8, 4), "uint32", name="wb")
    p = K.te_xnor_popcount_core(xb, wb, block=128)
    func = K.prim_func([xb, wb, p], name="kernel", kernel="xnor_popcount_core", block=128)
    specs = [((4, 4), "uint32"), ((8, 4), "uint32"), ((4, 8, 1), "int32")]
    run = device_kernel(func, specs, 2, "metal")
    with pytest.raises(rq.TargetError, match="source only"):
        run()
    qat, _ = _qat("A4W4")
    with pytest.raises(rq.TargetError, match="Metal has no float64"):
        rq.lower(qat, "metal")
