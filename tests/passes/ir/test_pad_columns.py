"""pad-columns: an integer matmul whose width fits no panel gets zero columns and a slice."""

from __future__ import annotations

import pytest
import torch

import rqcompile as rq
from rqcompile.ir.printer import print_module
from rqcompile.passes.infra import PassContext, PassManager
from rqcompile.passes.ir import PadColumns


def _ir(preset: str, n: int, m: int = 3) -> tuple[rq.ir.Module, torch.Tensor]:
    torch.manual_seed(n)
    x = torch.randn(m, 2, 64)
    qat = rq.prepare(torch.nn.Sequential(torch.nn.Linear(64, n)).eval(), (x,), preset).eval()
    return rq.convert(qat, example_inputs=(x,)), x


@pytest.mark.parametrize("preset", ["A4W4", "A8W8", "A1W1", "A4W4+2:4", "W4"])
def test_padded_matmul_gives_the_same_output_bit_for_bit(preset: str) -> None:
    ir, x = _ir(preset, 100)
    padded = PassManager([PadColumns()]).run(ir, PassContext())
    text = print_module(padded)
    assert "x128xf32>" in text and '"rq.slice"' in text  # N 100 -> 128, sliced back
    # the weight-side tensors are [N, ...] 2-D; the unpadded ones are gone (the bias stays)
    assert not any(t.dim() == 2 and t.shape[0] == 100 for t in padded.constants.values())
    with rq.PassContext(disabled=frozenset({"pad-columns"})):
        want = rq.build(ir, "reference")(x)
    assert torch.equal(rq.build(padded, "reference")(x), want)


def test_widths_that_fit_or_are_tiny_are_left_alone() -> None:
    for n in (64, 128, 10):
        ir, _ = _ir("A4W4", n)
        assert print_module(PassManager([PadColumns()]).run(ir, PassContext())) == print_module(ir)


@pytest.mark.tvm
@pytest.mark.parametrize("preset", ["A4W4", "W4"])
def test_llvm_build_pads_and_matches_the_reference(preset: str) -> None:
    pytest.importorskip("tvm")
    ir, x = _ir(preset, 100)
    exe = rq.build(ir, "llvm")
    assert '"rq.slice"' in print_module(exe.ir)
    want = rq.build(ir, "reference")(x)
    torch.testing.assert_close(exe(x), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
