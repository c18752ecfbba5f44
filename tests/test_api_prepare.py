"""prepare(): the rewrite, training through it, non-mutation, state_dict, errors."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rqcompile as rq
from rqcompile.quant.modules import RQQuantize
from rqcompile.testing.models import TinyAttention, tiny_models

PRESETS = ["A8W8", "A4W4", "A1W1", "A4W1+2:4"]


def _cfg(name: str, preset: str, estimator: str) -> dict:
    kw: dict = {"estimator": estimator}
    if name == "cnn":  # first conv (C_in=1) and depthwise taps stay float, as the paper keeps them
        kw["overrides"] = {"conv1": None, "dw": None}
    if name == "attention":
        kw["quantize_attention"] = True
    return kw


@pytest.mark.parametrize("estimator", ["ridge", "ste"])
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", ["mlp", "cnn", "attention"])
def test_prepare_trains(name: str, preset: str, estimator: str) -> None:
    model, ex = tiny_models()[name]
    before = copy.deepcopy(model.state_dict())
    qat = rq.prepare(model, ex, preset, **_cfg(name, preset, estimator))
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k])
    assert sorted(qat.state_dict()) == sorted(model.state_dict())
    assert any(isinstance(m, RQQuantize) for m in qat.modules())
    target = torch.randn_like(model(*ex))
    opt = torch.optim.Adam(qat.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = F.mse_loss(qat(*ex), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < losses[0]


def test_rewrite_pattern_is_quantize_dequant_matmul() -> None:
    model, ex = tiny_models()["mlp"]
    qat = rq.prepare(model, ex, "A4W4")
    lin = [n for n in qat.graph.nodes if n.target is F.linear]
    assert len(lin) == 3
    for n in lin:
        x, w = n.args[0], n.args[1]
        assert isinstance(qat.get_submodule(x.target), RQQuantize)
        assert isinstance(qat.get_submodule(w.target), RQQuantize)
        assert w.args[0].op == "get_attr"
        assert n.meta["rq"].role == "op" and n.meta["rq"].created_by == "quantize-layers"
    text = rq.inspect(qat)
    assert "quantize → ridge dequant: A 4b affine minmax block=64 ridge λ=0.01" in text
    assert "fc1" in text and "bits/elem" in text


def test_state_dict_saves_and_loads_across_prepare() -> None:
    model, ex = tiny_models()["mlp"]
    qat = rq.prepare(model, ex, "A2W2")
    buf = io.BytesIO()
    torch.save(qat.state_dict(), buf)
    fresh = rq.prepare(model, ex, "A2W2")
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh(*ex), qat(*ex))
    # a float checkpoint loads straight into the QAT graph (same keys)
    fresh.load_state_dict(model.state_dict())


def test_overrides_keep_float_and_strict_unused_override() -> None:
    model, ex = tiny_models()["mlp"]
    qat = rq.prepare(model, ex, "A1W1", overrides={"fc1": None, "head": None})
    keys = {n.meta["rq"].layer for n in qat.graph.nodes if "rq" in n.meta}
    assert keys == {"fc2"}
    assert "head" in rq.explain(qat)
    with pytest.raises(rq.ConfigError, match="(?s)matched no layer.*Nearest keys: 'head'"):
        rq.prepare(model, ex, "A1W1", overrides={"heads": None})


def test_attention_matmuls_float_by_default_quantized_on_request() -> None:
    model, ex = tiny_models()["attention"]
    off = rq.prepare(model, ex, "A8W8")
    assert not [n for n in off.graph.nodes if "rq" in n.meta and n.meta["rq"].kind == "matmul"]
    on = rq.prepare(model, ex, "A8W8", quantize_attention=True)
    mm = [n for n in on.graph.nodes if "rq" in n.meta and n.meta["rq"].kind == "matmul"]
    assert {n.meta["rq"].role for n in mm} == {"op", "activation"}
    assert len([n for n in mm if n.meta["rq"].role == "op"]) == 2


def test_block_not_dividing_k_is_a_typed_error_naming_layer() -> None:
    model = nn.Sequential(nn.Linear(200, 8))
    with pytest.raises(rq.NumericsError, match="(?s)layer '0'.*K=200.*block_size=100"):
        rq.prepare(model, (torch.randn(2, 200),), "A4W4")
    rq.prepare(model, (torch.randn(2, 200),), "A4W4", block_size=100)
    rq.prepare(model, (torch.randn(2, 200),), "A4W4", block_size=None)  # per-channel


def test_nan_weights_are_rejected() -> None:
    model = nn.Sequential(nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(rq.NumericsError, match="NaN/Inf"):
        rq.prepare(model, (torch.randn(2, 16),), "A4W4")


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow
            return self.fc(x)
        return x


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Untraceable()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(x))


def test_untraceable_model_names_module_line_and_fix() -> None:
    with pytest.raises(rq.CaptureError) as e:
        rq.prepare(_Wrapper(), (torch.randn(2, 8),), "A4W4")
    msg = str(e.value)
    assert "'inner' (_Untraceable)" in msg
    assert "test_api_prepare.py" in msg and "if x.sum() > 0" in msg
    assert "leaf_modules=[_Untraceable]" in msg
    qat = rq.prepare(_Wrapper(), (torch.randn(2, 8),), "A4W4", leaf_modules=[_Untraceable])
    assert qat(torch.randn(2, 8)).shape == (2, 2)


def test_wrong_inputs_to_stage_functions() -> None:
    model, ex = tiny_models()["mlp"]
    qat = rq.prepare(model, ex, "A4W4")
    with pytest.raises(TypeError, match="already prepared"):
        rq.prepare(qat, ex, "A4W4")
    with pytest.raises(TypeError, match="rq.explain"):
        rq.inspect(model)
    with pytest.raises(rq.ConfigError):
        rq.prepare(model, ex, 42)  # type: ignore[arg-type]


def test_print_after_instrument_collects_text() -> None:
    model, ex = tiny_models()["attention"]
    pa = rq.PrintAfter("all")
    rq.prepare(model, ex, "A4W4", context=rq.PassContext(instruments=[pa]))
    assert [name for name, _ in pa.dumps] == ["quantize-layers", "quantize-attention"]
    assert all("F.linear" in text for _, text in pa.dumps)


def test_float64_and_cuda_agnostic_forward() -> None:
    model = TinyAttention().double()
    ex = (torch.randn(1, 8, 64, dtype=torch.float64),)
    qat = rq.prepare(model, ex, "A4W4")
    assert qat(*ex).dtype == torch.float64


def test_prepare_without_example_inputs_records_shapes_at_first_forward() -> None:
    """``rq.prepare(model)`` (and ``rq.prepare(model, "A1W1")``): fx capture, shapes from the
    first forward, which ``rq.lower`` then uses; until then inspect says so and lower
    explains what to do."""
    from rqcompile.testing.models import TinyMLP

    qat = rq.prepare(TinyMLP())
    assert "input shapes: not recorded yet" in rq.inspect(qat)
    with pytest.raises(rq.ConfigError, match="has not run forward yet"):
        rq.lower(qat, "reference")
    x = torch.randn(8, 64)
    y = qat(x)
    assert "input shapes: [8, 64] float32 (recorded at the first forward" in rq.inspect(qat)
    exe = rq.lower(qat.eval(), "reference")
    torch.testing.assert_close(exe(x), qat(x), rtol=1e-5, atol=1e-5)
    assert y.shape == (8, 10)
    q1 = rq.prepare(TinyMLP(), "A1W1")
    assert q1.meta["rq_config"].default.weight.bits == 1


def test_prepare_without_example_inputs_refuses_export_and_attention() -> None:
    from rqcompile.testing.models import TinyMLP

    with pytest.raises(rq.CaptureError, match="torch.export capture needs example inputs"):
        rq.prepare(TinyMLP(), capture="export")
    from rqcompile.demo.models import CharTransformer

    with pytest.raises(rq.ConfigError, match="quantize_attention=True.*example inputs"):
        rq.prepare(CharTransformer(65), "A8W8", quantize_attention=True)
