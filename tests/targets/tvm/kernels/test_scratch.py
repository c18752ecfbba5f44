"""Kernel scratch buffers (``kernels.common.scratch``): small ones live on the stack, so a
kernel's per-column-group accumulators cost no heap workspace calls."""

from __future__ import annotations

import pytest

pytest.importorskip("tvm")
from rqcompile.targets.tvm.adapter import IRBuilder, T, host_llvm_target, te, tvm  # noqa: E402
from rqcompile.targets.tvm.kernels import integer as K  # noqa: E402
from rqcompile.targets.tvm.kernels.common import STACK_BYTES, scratch  # noqa: E402
from rqcompile.targets.tvm.schedules.integer import schedule_prim_func  # noqa: E402

pytestmark = pytest.mark.tvm


def _scope(n: int, dtype: str) -> str:
    with IRBuilder(), T.serial(0, 1):
        return scratch(n, dtype).scope()


@pytest.mark.parametrize(("n", "dtype", "scope"), [
    (STACK_BYTES // 4 - 1, "int32", "global"), (STACK_BYTES // 4, "int32", "local"),
    (STACK_BYTES // 64 - 1, "int32x16", "global"), (STACK_BYTES, "int8", "local"),
])  # fmt: skip
def test_scratch_is_on_the_stack_below_the_limit(n: int, dtype: str, scope: str) -> None:
    assert _scope(n, dtype) == scope


@pytest.mark.parametrize("isa", ["avx512_vnni_emulated", "avx_vnni_emulated", "avx2"])
def test_gemv_kernel_calls_no_workspace(isa: str) -> None:
    """The nibble GEMV (``T.parallel`` over column groups, accumulators per group) asks the
    runtime for no heap workspace: before, three calls pairs per group (~23 ns each) were
    a fifth of a 1024² call."""
    n = k = 256
    nb, ph = k // 128, te.placeholder
    w = [ph((n, k // 2), "uint8"), *(ph((n, nb), d) for d in ("float32", "float32", "int32"))]
    packed = K.te_pack_int_matmul_weights(*w, block=128, w_bits=4, w_signed=True, isa=isa,
                                          nibbles=True)  # fmt: skip
    x = [ph((1, k), "int8"), ph((1, nb), "float32"), ph((1, nb), "float32")]
    pp = [ph([int(d) for d in p.shape], str(p.dtype)) for p in packed]
    y = K.te_int_matmul_packed(*x, *pp, block=128, w_bits=4, w_signed=True, isa=isa,
                               nibbles=True)  # fmt: skip
    func = K.prim_func([*x, *pp, y], name="kernel", kernel="int_matmul", block=128)
    target = host_llvm_target()
    ll = tvm.compile(schedule_prim_func(func, target), target=target).mod.inspect_source("ll")
    assert "vpdpbusd" in ll or "pmadd" in ll  # the kernel (pmaddwd / pmaddubsw emulations)
    assert "TVMBackendAllocWorkspace" not in ll
