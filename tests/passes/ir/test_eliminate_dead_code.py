"""eliminate-dead-code: before/after IR text."""

from __future__ import annotations

import torch
from ir_pass_helpers import body, run_pass

from rqcompile.ir import Builder
from rqcompile.passes.ir import EliminateDeadCode


def test_drops_unused_ops_and_their_constants() -> None:
    b = Builder()
    x = b.arg("tensor<2x3xf32>")
    unused_w = b.const("unused", torch.ones(2, 3))
    b.op("rq.add", x, unused_w)  # dead: nothing reads it
    y = b.op("rq.relu", x)
    b.ret(y)
    before = b.module()
    assert body(before) == """\
%1 = "rq.const"() {dtype = "f32", name = "unused", shape = [2 : i64, 3 : i64]} : () -> tensor<2x3xf32>
%2 = "rq.add"(%0, %1) : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
%3 = "rq.relu"(%0) : (tensor<2x3xf32>) -> tensor<2x3xf32>
"func.return"(%3) : (tensor<2x3xf32>) -> ()"""
    after = run_pass(EliminateDeadCode(), before)
    assert body(after) == """\
%1 = "rq.relu"(%0) : (tensor<2x3xf32>) -> tensor<2x3xf32>
"func.return"(%1) : (tensor<2x3xf32>) -> ()"""
    assert dict(after.constants) == {}


def test_live_module_is_unchanged() -> None:
    b = Builder()
    x = b.arg("tensor<4xf32>")
    b.ret(b.op("rq.relu", x))
    mod = b.module()
    res = EliminateDeadCode().run(mod, None)
    assert not res.changed and res.ir is mod
