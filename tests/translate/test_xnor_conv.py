"""A1W1 convolutions take the XNOR-popcount route when C/groups is a multiple of 32.

Sign bits are packed 32 per word along channels (``rq.quantize(pack="bits32")``), im2col
copies whole words, and ``rq.xnor_popcount_matmul`` runs on the windows; a padded tap's block
has zero scale and offset, so the bits im2col pads with add nothing. Parity with the QAT
forward is checked here on ``reference`` (llvm: tests/fuzz/test_parity_fuzz.py's
``XNOR_CONV`` example and ``test_xnor_conv_llvm`` below).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rqcompile as rq


class _Net(nn.Module):
    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _qat(c: int, groups: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(2, c, 9, 9)
    qat = rq.prepare(_Net(c, groups), (x,), "A1W1")
    qat(x)
    return qat, x


def _matmuls(qat: nn.Module) -> list[str]:
    return [op.name for op in rq.convert(qat).func("main").ops if op.name.endswith("matmul")]


@pytest.mark.parametrize("groups", [1, 2])
def test_binary_conv_with_32_channels_per_group_is_xnor_and_exact(groups: int) -> None:
    qat, x = _qat(64, groups)
    assert _matmuls(qat) == ["rq.xnor_popcount_matmul"] * (1 + groups)
    exe = rq.lower(qat, target="reference")
    assert rq.check_parity(qat, exe, x).ok
    with torch.no_grad():
        assert torch.allclose(exe(x), qat(x), atol=1e-5, rtol=1e-5)


def test_binary_conv_with_16_channels_per_group_stays_integer_affine() -> None:
    qat, x = _qat(32, 2)  # layer a: C = 32 → XNOR; layer b: C/g = 16 → int_matmul
    assert _matmuls(qat) == ["rq.xnor_popcount_matmul", "rq.int_matmul", "rq.int_matmul"]
    assert rq.check_parity(qat, rq.lower(qat, target="reference"), x).ok


@pytest.mark.tvm
def test_xnor_conv_llvm() -> None:
    qat, x = _qat(64, 2)
    exe = rq.lower(qat, target="llvm")
    assert rq.check_parity(qat, exe, x).ok
