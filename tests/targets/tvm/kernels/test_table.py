"""Every row of the CPU kernel table, forced on this host, builds and matches the reference.

The row is chosen by ``select-kernels{force=...}``, never by what the host has; rows this CPU
cannot execute skip with the reason (the emulated VNNI rows run on any AVX2 host).
"""

from __future__ import annotations

import pytest
import torch

import rqcompile as rq
from rqcompile.ir.printer import print_module
from rqcompile.passes.infra import PassContext, PassManager
from rqcompile.passes.ir import SelectKernels

pytest.importorskip("tvm")
from rqcompile.targets.tvm.pipelines import tvm_target  # noqa: E402
from rqcompile.targets.tvm.schedules.integer import kernel_features  # noqa: E402
from rqcompile.targets.tvm.kernels.table import CPU_KERNELS, TEST_ONLY  # noqa: E402

pytestmark = pytest.mark.tvm

_PRESET = {"rq.int_matmul": "A8W8", "rq.xnor_popcount_matmul": "A1W1",
           "rq.sparse24_matmul": "A4W4+2:4", "rq.wo_matmul": "W4"}  # fmt: skip


def _preset(row) -> str:
    """The preset whose layer the row takes: the nibble-panel rows want 4-bit weights, the
    2-bit-panel rows 2-bit ones (2:4 rows: 2:4 weights, whatever their layout)."""
    if row.op == "rq.sparse24_matmul":
        return _PRESET[row.op]
    return "A4W4" if "_w4" in row.isa else "A2W2" if "_w2" in row.isa else _PRESET[row.op]


def _rows() -> list[str]:
    return [r.name for r in CPU_KERNELS if r.op in _PRESET]


@pytest.mark.parametrize("row", _rows())
def test_forced_row_matches_the_reference(row: str) -> None:
    r = next(r for r in CPU_KERNELS if r.name == row)
    need = set(r.requires) - {TEST_ONLY} | ({"avx2"} if TEST_ONLY in r.requires else set())
    missing = need - set(kernel_features(tvm_target(rq.Target.parse("llvm"))))
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(sorted(missing))} to run {row}")
    torch.manual_seed(0)
    x = torch.randn(16, 256)
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(256, 64)).eval(), (x,), _preset(r))
    ir = rq.convert(qat.eval(), example_inputs=(x,))
    forced = PassManager([SelectKernels(force=(f"{r.op[3:]}:{r.isa}",))]).run(ir, PassContext())
    assert f'rq.kernel = "{row}"' in print_module(forced)
    with rq.PassContext(disabled=frozenset({"select-kernels"})):
        exe = rq.build(forced, "llvm")
    assert f'rq.kernel = "{row}"' in print_module(exe.ir)  # the build kept the forced row
    want = rq.build(ir, "reference")(x)
    torch.testing.assert_close(exe(x), want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))
