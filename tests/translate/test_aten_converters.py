"""ATen converters (translate/aten.py): export-captured models lower to the eager result.

Each model is captured with ``capture="export"`` and kept entirely in float (``overrides``
match every layer) or quantized, then lowered to the reference target and compared with the
float model / QAT forward. This reaches converters that the Hugging Face e2e tests do not.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rqcompile as rq
from rqcompile.translate import supported_ops
from rqcompile.translate.aten import ATEN


class _Mix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.w = nn.Parameter(torch.randn(8, 12) * 0.3)
        self.b = nn.Parameter(torch.randn(12) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))  # batch_norm kept as a float op
        h = F.max_pool2d(h, 2).mean(dim=(2, 3))  # (N, 8)
        y = torch.addmm(self.b, h, self.w)  # float addmm (layer kept in float)
        y = 1.0 - y  # rsub
        y = y.unsqueeze(1).expand(-1, 3, -1)  # broadcast_to
        y = torch.cat([y[:, 0], -y.select(1, 2), y[:, 1:2, ::2].squeeze(1)], dim=-1)
        return y.pow(2) * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.register_buffer("keep", torch.rand(6, 6) > 0.3, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(2, 6, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep | torch.eye(6).bool())
        c = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return (a + c).transpose(1, 2).reshape(2, 6, 16)


@pytest.mark.parametrize("preset", ["A8W8", "A4W4"])
def test_float_ops_from_export_lower_to_the_same_result(preset: str) -> None:
    model = _Mix().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 8, 8)
    qat = rq.prepare(model, (x,), preset, capture="export", overrides={"addmm": None})
    assert qat.meta["rq_layer_keys"] == ["conv", "addmm"]
    assert qat.meta["rq_float_layers"] == {"addmm": "kept in float by the config"}
    with torch.no_grad():
        want = qat.eval()(x)
    got = rq.lower(qat, target="reference")(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_sdpa_with_boolean_and_causal_masks() -> None:
    model = _Attn().eval()
    x = torch.randn(2, 6, 16)
    qat = rq.prepare(model, (x,), "A8W8", capture="export")
    with torch.no_grad():
        want = qat.eval()(x)
    got = rq.lower(qat, target="reference")(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_unsupported_aten_op_is_reported_with_its_source_line() -> None:
    class _Sort(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sort(self.fc(x), dim=-1).values  # no converter for aten.sort

    qat = rq.prepare(_Sort(), (torch.randn(2, 8),), "A8W8", capture="export")
    with pytest.raises(rq.UnsupportedOpError) as e:
        rq.convert(qat)
    msg = str(e.value)
    assert "aten.sort" in msg and "test_aten_converters.py" in msg


def test_aten_table_is_listed_in_supported_ops() -> None:
    names = set(supported_ops())
    assert {str(op) for op in ATEN} <= names
    assert "aten.addmm.default" in names and "aten.rsqrt.default" in names
