"""fold-constants: before/after IR text, and the folded value is the reference's."""

from __future__ import annotations

import torch
from ir_pass_helpers import body, run_pass

from rqcompile.ir import Builder
from rqcompile.passes.ir import EliminateDeadCode, FoldConstants
from rqcompile.targets.reference import run_reference


def _module() -> tuple[object, torch.Tensor]:
    b = Builder()
    x = b.arg("tensor<2x3xf32>")
    w = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    wt = b.op("rq.permute", b.const("w", w), dims=(1, 0))
    b.ret(b.op("rq.add", x, wt))
    return b.module(), w


def test_folds_a_permuted_weight() -> None:
    mod, w = _module()
    after = run_pass(EliminateDeadCode(), run_pass(FoldConstants(), mod))
    assert body(after) == """\
%1 = "rq.const"() {dtype = "f32", name = "const.folded2", shape = [2 : i64, 3 : i64]} : () -> tensor<2x3xf32>
%2 = "rq.add"(%0, %1) : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
"func.return"(%2) : (tensor<2x3xf32>) -> ()"""
    assert torch.equal(after.constant("const.folded2"), w.t())
    x = torch.randn(2, 3)
    assert torch.equal(run_reference(after, x)[0], run_reference(mod, x)[0])


def test_never_grows_the_weights() -> None:
    b = Builder()
    x = b.arg("tensor<64x3xf32>")
    big = b.op("rq.broadcast_to", b.const("row", torch.ones(1, 3)), shape=(64, 3))
    b.ret(b.op("rq.add", x, big))
    mod = b.module()
    assert not FoldConstants().run(mod, None).changed
    assert FoldConstants(max_growth=100.0).run(mod, None).changed
