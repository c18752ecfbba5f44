"""Shape-only computation folds at convert time: masks written as people write them.

``full_like(att, -inf).triu(1)``, ``zeros_like``, ``x.new_ones(...)``, ``masked_fill`` with a
mask built from ``x.shape``, a registered causal buffer sliced to ``T``: every one converts
and the converted model matches the QAT model at every preset.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rqcompile as rq
from rqcompile.ir.printer import print_module


class _Base(nn.Module):
    def __init__(self, c: int = 64) -> None:
        super().__init__()
        self.qkv, self.o, self.c = nn.Linear(c, 3 * c), nn.Linear(c, c), c
        self.register_buffer("bias", torch.tril(torch.ones(32, 32)).view(1, 32, 32))

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).split(self.c, dim=-1)
        return q @ k.transpose(-2, -1) / math.sqrt(self.c), v


class FullLikeTriu(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att, v = self.scores(x)
        att = (att + torch.full_like(att, float("-inf")).triu(1)).softmax(-1)
        return self.o(att @ v + torch.zeros_like(x))


class MaskedFillFromShape(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att, v = self.scores(x)
        t = x.shape[1]
        keep = x.new_ones(t, t, dtype=torch.bool).tril()
        return self.o(att.masked_fill(~keep, float("-inf")).softmax(-1) @ v)


class BufferSlicedToT(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att, v = self.scores(x)
        t = x.size(1)
        att = att.masked_fill(self.bias[:, :t, :t] == 0, float("-inf"))
        return self.o(att.softmax(-1) @ v)


MODELS = [FullLikeTriu, MaskedFillFromShape, BufferSlicedToT]


@pytest.mark.parametrize("preset", ["A8W8", "A4W4", "A2W2", "A1W1", "A4W1+2:4", "W4"])
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_converts_and_matches_qat(model: type[nn.Module], preset: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 64)
    qat = rq.prepare(model(), (x,), preset).eval()
    ir = rq.convert(qat)
    assert "full_like" not in print_module(ir)
    got = rq.build(ir, "reference")(x)
    torch.testing.assert_close(got, qat(x), rtol=1e-5, atol=1e-5)


@pytest.mark.tvm
def test_llvm_matches_reference() -> None:
    pytest.importorskip("tvm")
    torch.manual_seed(0)
    x = torch.randn(2, 16, 64)
    for model in MODELS:
        qat = rq.prepare(model(), (x,), "A4W4").eval()
        ir = rq.convert(qat)
        torch.testing.assert_close(rq.build(ir, "llvm")(x), rq.build(ir, "reference")(x),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip


def test_unsupported_inside_a_list_is_reported_not_a_raw_type_error() -> None:
    """An unsupported node feeding ``cat([...])`` is listed in the UnsupportedOpError (it
    used to reach the cat converter and raise ``TypeError: expected a tensor``)."""

    class CatOfUnsupported(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.cumsum(self.fc(x), dim=-1)  # no converter
            return torch.cat([x, y], dim=-1)

    x = torch.randn(2, 64)
    qat = rq.prepare(CatOfUnsupported(), (x,), "A8W8")
    with pytest.raises(rq.UnsupportedOpError, match="cumsum"):
        rq.convert(qat.eval())
