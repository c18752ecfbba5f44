"""fuse-attention: the demo transformer's attention is marked as one group per layer."""

from __future__ import annotations

import re

import torch
from ir_pass_helpers import run_pass

import rqcompile as rq
from rqcompile.demo.models import CharTransformer
from rqcompile.ir.printer import print_module
from rqcompile.passes.ir import FuseAttention


def _ir() -> rq.ir.Module:
    torch.manual_seed(0)
    model, ex = CharTransformer(65), (torch.zeros(2, 64, dtype=torch.long),)
    return rq.convert(rq.prepare(model, ex, "A4W4").eval())


def _marks(mod: rq.ir.Module) -> list[tuple[str, str]]:
    return re.findall(r'"(rq\.[a-z_0-9]+)".*rq\.fused = \["attention", (\d+)', print_module(mod))


def test_marks_each_layer_once_with_its_lanes() -> None:
    before = _ir()
    assert "rq.fused" not in print_module(before)
    after = run_pass(FuseAttention(lanes=8), before)
    marks = _marks(after)
    groups = {g for _, g in marks}
    layers = sum(1 for op in before.main.ops if op.name == "rq.softmax")
    assert len(groups) == layers >= 1
    ops = {name for name, _ in marks}
    assert {"rq.matmul", "rq.softmax"} <= ops
    assert print_module(after).count("rq.lanes = 8") == layers


def test_lanes_that_do_not_divide_the_head_width_mark_nothing() -> None:
    """The demo's heads are 32 wide: 64-lane vectors cannot take them."""
    res = FuseAttention(lanes=64).run(_ir(), None)
    assert not res.changed


def test_a_second_run_changes_nothing() -> None:
    once = run_pass(FuseAttention(lanes=8), _ir())
    assert not FuseAttention(lanes=8).run(once, None).changed


def test_an_additive_full_like_triu_mask_is_a_causal_group() -> None:
    """``att + torch.full_like(att, -inf).triu(1)`` folds to a constant 0/-inf mask at
    convert; the pattern reads it as the causal offset, so the group fuses."""
    import math

    from torch import nn

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.o = nn.Linear(64, 192), nn.Linear(64, 64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).split(64, dim=-1)
            att = q @ k.transpose(-2, -1) / math.sqrt(64)
            att = (att + torch.full_like(att, float("-inf")).triu(1)).softmax(-1)
            return self.o(att @ v)

    x = torch.randn(2, 16, 64)
    ir = rq.convert(rq.prepare(Attn(), (x,), "A8W8").eval())
    after = run_pass(FuseAttention(lanes=8), ir)
    names = [name for name, _ in _marks(after)]
    assert "rq.add" in names and "rq.softmax" in names
