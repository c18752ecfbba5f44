"""pad-columns: an integer matmul whose width fits no panel gets zero columns and a slice."""

from __future__ import annotations

import re

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


@pytest.mark.tvm
def test_padded_qkv_projection_stays_an_input_view_of_fused_attention() -> None:
    # a width-32 transformer's c_attn is 96 wide (padded to 128); on an 8-lane (AVX2) target
    # the attention group must take the pad slice as one more input view, whatever the host
    pytest.importorskip("tvm")
    from rqcompile.demo.models import CharTransformer
    from rqcompile.targets.tvm.lowering import ir_passes

    torch.manual_seed(0)
    x = torch.randint(0, 65, (2, 16))
    qat = rq.prepare(CharTransformer(65, n_layer=1, n_embd=32, block_size=16), (x,), "A4W4")
    ir = rq.convert(qat.eval(), example_inputs=(x,))
    after = PassManager(ir_passes((), lanes=8)).run(ir, PassContext())
    text = print_module(after)
    # the pad slice (axis 1, 128 -> 96) is marked as part of the attention group
    assert re.search(
        r'"rq.slice"\(%\d+\) \{axis = 1 : i64, rq.fused = \["attention", 0 : i64\], '
        r"start = 0 : i64, step = 1 : i64, stop = 96 ",
        text,
    )
    exe = rq.build(ir, {"kind": "llvm", "mcpu": "znver3"})
    report = rq.check_parity(qat, exe, x)
    assert report.ok, report.line()
