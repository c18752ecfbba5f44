"""Capture: torch.export fallback, ExportedProgram input, ATen rewrite rules, error messages."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rqcompile as rq
from rqcompile.capture.trace import capture
from rqcompile.quant.modules import RQQuantize
from rqcompile.testing.models import TinyMLP


class _ShapeBranch(nn.Module):
    """fx cannot trace ``if x.dim() == 3`` (a Proxy in a condition); torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 8)
        self.proj = nn.Parameter(torch.randn(8, 16) * 0.3)  # used as x @ W: (K, N) storage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.flatten(0, 1)
        h = F.relu(self.fc1(x))
        h = h + 1.0
        h += 0.5  # in-place on a temporary: becomes aten.add
        return torch.matmul(self.fc2(h), self.proj)


def _ex() -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, 4, 32),)


def test_fx_failure_falls_back_to_export_and_says_so() -> None:
    model = _ShapeBranch()
    with pytest.raises(rq.CaptureError, match=r"torch\.fx symbolic tracing failed"):
        capture(model, _ex(), method="fx")
    qat = rq.prepare(model, _ex(), "A4W4")
    assert qat.meta["rq_capture"] == "export"
    assert sorted(qat.state_dict()) == sorted(model.state_dict())
    assert qat.meta["rq_layer_keys"] == ["fc1", "fc2", "matmul"]
    text = rq.inspect(qat)
    assert "note: captured with torch.export" in text
    quantizers = {n for n, m in qat.named_modules() if isinstance(m, RQQuantize)}
    assert {"fc1.weight_quant", "fc2.weight_quant"} <= quantizers
    x = _ex()[0]
    with torch.no_grad():
        want = qat.eval()(x)
        got = rq.lower(qat, target="reference")(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_transposed_parameter_matmul_keeps_key_and_trains() -> None:
    """x @ W with W stored (K, N) (HF Conv1D, GPT-2): quantized as t(W); W keeps its key."""
    model = _ShapeBranch()
    qat = rq.prepare(model, _ex(), "A8W8")
    keys = qat.meta["rq_layer_keys"]
    assert keys[-1] == "matmul", keys  # root-level functional op: keyed by node
    t_nodes = [n for n in qat.graph.nodes if n.target is torch.t]
    assert [str(n.args[0].target) for n in t_nodes] == ["proj"]
    before = qat.proj.detach().clone()
    opt = torch.optim.SGD(qat.parameters(), lr=0.1)
    qat.train()
    loss = qat(*_ex()).pow(2).mean()
    loss.backward()
    opt.step()
    assert not torch.equal(before, qat.proj.detach())  # gradient reached the stored parameter


def test_exported_program_is_accepted_and_matches_fx_capture() -> None:
    model, x = TinyMLP(), torch.randn(8, 64)
    ep = torch.export.export(model.eval(), (x,))
    q_export = rq.prepare(ep, (x,), "A4W4")
    q_fx = rq.prepare(model, (x,), "A4W4")
    assert q_export.meta["rq_capture"] == "export" and q_fx.meta["rq_capture"] == "fx"
    assert q_export.meta["rq_layer_keys"] == q_fx.meta["rq_layer_keys"] == ["fc1", "fc2", "head"]
    assert sorted(q_export.state_dict()) == sorted(q_fx.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(q_export.eval()(x), q_fx.eval()(x), rtol=1e-5, atol=1e-6)
    exe = rq.lower(q_export, target="reference")
    torch.testing.assert_close(exe(x), q_fx(x), rtol=1e-4, atol=1e-5)
    before = {k: v.clone() for k, v in ep.state_dict.items()}
    with torch.no_grad():
        for p in q_export.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in ep.state_dict.items())  # ep untouched


def test_export_capture_keeps_overrides_by_module_name() -> None:
    model, x = TinyMLP(), torch.randn(8, 64)
    qat = rq.prepare(model, (x,), "A4W4", capture="export", overrides={"head": None})
    assert qat.meta["rq_float_layers"] == {"head": "kept in float by the config"}
    assert "float: head" in rq.inspect(qat)


def test_export_graph_trains_in_train_mode() -> None:
    model, x = TinyMLP(), torch.randn(8, 64)
    qat = rq.prepare(model, (x,), "A1W1", capture="export")
    qat.train()  # ep.module() forbids .train(); ours is a plain GraphModule
    assert qat.training
    opt = torch.optim.Adam(qat.parameters(), lr=3e-3)
    target = torch.randn(8, 10)
    losses = []
    for _ in range(10):
        loss = F.mse_loss(qat(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < losses[0]


class _ValueBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # depends on tensor values: neither fx nor export can follow it
            return self.fc(x)
        return x


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _ValueBranch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) * 2


def test_both_methods_failing_names_module_line_both_causes_and_fix() -> None:
    with pytest.raises(rq.CaptureError) as e:
        rq.prepare(_Outer(), (torch.randn(2, 8),), "A4W4")
    msg = str(e.value)
    assert "'block' (_ValueBranch)" in msg
    assert "test_capture_export.py" in msg and "if x.sum() > 0" in msg
    assert "torch.fx symbolic tracing failed" in msg and "torch.export failed" in msg
    assert "leaf_modules=[_ValueBranch]" in msg and "ExportedProgram" in msg


def test_export_only_failure_message() -> None:
    with pytest.raises(rq.CaptureError) as e:
        rq.prepare(_Outer(), (torch.randn(2, 8),), "A4W4", capture="export")
    assert "torch.fx" not in str(e.value).split("Fix:")[0]


def test_bad_capture_method_is_a_config_error() -> None:
    with pytest.raises(rq.ConfigError, match="'fx'"):
        rq.prepare(TinyMLP(), (torch.randn(2, 64),), "A4W4", capture="jit")


def test_model_is_not_mutated_by_export_capture() -> None:
    model = _ShapeBranch().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rq.prepare(model, _ex(), "A4W4", capture="export")
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class _AtParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(32, 16) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w)


@pytest.mark.parametrize("method", ["fx", "export"])
def test_matmul_with_parameter_is_a_weight_layer_in_both_captures(method: str) -> None:
    x = torch.randn(4, 32)
    qat = rq.prepare(_AtParam(), (x,), "A4W4", capture=method)
    assert qat.meta["rq_layer_keys"] == ["matmul"]
    assert isinstance(qat.get_submodule("weight_quant"), RQQuantize)
    got = rq.lower(qat, target="reference")(x)
    torch.testing.assert_close(got, qat(x), rtol=1e-4, atol=1e-5)
