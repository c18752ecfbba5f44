"""fold-batchnorm: golden, numerics, no-op, idempotence, what is left alone (fx and export)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import fx, nn

import rqcompile as rq
from rqcompile.capture.trace import capture
from rqcompile.passes.infra import PassContext
from rqcompile.passes.qat import FoldBatchNorm
from rqcompile.testing.models import TinyMLP


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)  # has a bias
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def _model() -> _ConvBN:
    m = _ConvBN()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return m.eval()


EX = (torch.randn(2, 3, 8, 8),)


def _fold(gm: fx.GraphModule) -> tuple[fx.GraphModule, bool, PassContext]:
    ctx = PassContext()
    r = FoldBatchNorm().run(gm, ctx)
    r.ir.graph.lint()
    return r.ir, r.changed, ctx


@pytest.mark.parametrize("method", ["fx", "export"])
def test_fold_matches_conv_then_eval_batchnorm(method: str) -> None:
    model = _model()
    gm = capture(model, EX, method=method)
    want = model(*EX)
    folded, changed, ctx = _fold(gm)
    assert changed
    torch.testing.assert_close(folded(*EX), want, rtol=1e-5, atol=1e-5)
    keys = set(folded.state_dict())
    assert not any(k.startswith(("bn1.", "bn2.")) for k in keys)
    assert {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"} <= keys
    assert ctx.options["notes"] == [
        "bn1 folded into conv1 (running statistics; fold-batchnorm)",
        "bn2 folded into conv2 (running statistics; fold-batchnorm)",
    ]


def test_golden_fx_graph() -> None:
    folded, _, _ = _fold(capture(_model(), EX, method="fx"))
    ops = [(n.op, getattr(n.target, "__name__", str(n.target))) for n in folded.graph.nodes]
    assert ops == [
        ("placeholder", "x"),
        ("call_module", "conv1"),
        ("call_function", "relu"),
        ("call_module", "conv2"),
        ("call_function", "relu"),
        ("call_method", "mean"),
        ("call_module", "head"),
        ("output", "output"),
    ]


def test_no_op_and_idempotent() -> None:
    gm = capture(TinyMLP(), (torch.randn(2, 64),), method="fx")
    text = gm.code
    _, changed, _ = _fold(gm)
    assert not changed and gm.code == text
    once, _, _ = _fold(capture(_model(), EX, method="export"))
    code = once.code
    twice, changed, _ = _fold(once)
    assert not changed and twice.code == code


class _BNNotAfterConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(torch.relu(y)) + y.mean()  # BN after relu; conv has two users


def test_batchnorm_not_after_a_conv_is_left_alone() -> None:
    m = _BNNotAfterConv().eval()
    for method in ("fx", "export"):
        _, changed, _ = _fold(capture(m, EX, method=method))
        assert not changed


def test_prepare_with_fold_then_lower_matches() -> None:
    model = _model()
    qat = rq.prepare(model, EX, "A8W8", fold_batchnorm=True, overrides={"conv1": None})
    assert "fold-batchnorm" not in rq.inspect(rq.prepare(copy.deepcopy(model), EX, "A8W8"))
    assert "note: bn2 folded into conv2" in rq.inspect(qat)
    with torch.no_grad():
        want = qat.eval()(*EX)
    got = rq.lower(qat, target="reference")(*EX)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
