"""Hugging Face models end to end: prepare (torch.export capture) → train → lower → parity.

Tiny configs from ``rqcompile.testing.hf`` (random weights, no downloads). Every family runs
A4W4 and A1W1 on the reference target, and one llvm build per family in the default suite
(the A1W1 llvm builds are ``slow``). Tolerance: the lowered output matches the QAT forward in
eval mode to rtol 1e-4 / atol 1e-4·max|y| (the integer cores are exact; float summation order
differs between torch and the kernels).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

import rqcompile as rq
from rqcompile.quant.modules import RQQuantize
from rqcompile.testing.hf import HF_MODELS, logits_of

#: Per-family prepare options. ResNet: fold batch norm; the stem conv (3 input channels) stays
#: float, as the paper keeps first layers.
OPTIONS: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "bert": {},
    "llama": {"quantize_attention": True},  # GQA attention matmuls through rq.qbmm too
    "resnet": {"fold_batchnorm": True, "overrides": {"embedder.embedder.convolution": None}},
}

_CACHE: dict[tuple[str, str], Any] = {}


def _trained(family: str, preset: str) -> tuple[Any, tuple[torch.Tensor, ...], list[float]]:
    """Prepare and train 4 Adam steps (cached: each (family, preset) is built once)."""
    if (family, preset) not in _CACHE:
        model, ex = HF_MODELS[family]()
        qat = rq.prepare(model, ex, preset, **OPTIONS[family])
        qat.train()
        opt = torch.optim.Adam(qat.parameters(), lr=1e-3)
        target = torch.randn_like(logits_of(model(*ex)))
        losses = []
        for _ in range(4):
            y = logits_of(qat(*ex))
            if family == "resnet":
                loss = F.mse_loss(y, target)
            else:  # language modelling on the inputs themselves
                loss = F.cross_entropy(y.flatten(0, 1), ex[0].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        _CACHE[family, preset] = (qat.eval(), ex, losses)
    return _CACHE[family, preset]


def _check_parity(qat: Any, ex: tuple[torch.Tensor, ...], target: str) -> None:
    with torch.no_grad():
        want = logits_of(qat(*ex))
    got = logits_of(rq.lower(qat, target=target)(*ex))
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("preset", ["A4W4", "A1W1"])
@pytest.mark.parametrize("family", list(HF_MODELS))
def test_prepare_train_lower_reference(family: str, preset: str) -> None:
    qat, ex, losses = _trained(family, preset)
    assert qat.meta["rq_capture"] == "export"  # HF models are not fx-traceable
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
    assert sum(isinstance(m, RQQuantize) for m in qat.modules()) >= 8
    _check_parity(qat, ex, "reference")


@pytest.mark.tvm
@pytest.mark.parametrize("family", list(HF_MODELS))
def test_lower_llvm_a4w4(family: str) -> None:
    qat, ex, _ = _trained(family, "A4W4")
    _check_parity(qat, ex, "llvm")


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("family", list(HF_MODELS))
def test_lower_llvm_a1w1(family: str) -> None:
    qat, ex, _ = _trained(family, "A1W1")
    _check_parity(qat, ex, "llvm")


def test_state_dict_keys_are_the_models() -> None:
    for family in ("gpt2", "bert", "llama"):
        model, _ = HF_MODELS[family]()
        qat, _, _ = _trained(family, "A4W4")
        assert sorted(qat.state_dict()) == sorted(model.state_dict()), family


def test_folded_resnet_keys_differ_only_by_batchnorm() -> None:
    model, _ = HF_MODELS["resnet"]()
    qat, _, _ = _trained("resnet", "A4W4")
    gone = set(model.state_dict()) - set(qat.state_dict())
    added = set(qat.state_dict()) - set(model.state_dict())
    assert gone and all(".normalization." in k for k in gone)
    assert added and all(k.endswith("convolution.bias") for k in added)


def test_report_lines_for_tied_head_and_float_attention() -> None:
    qat, _, _ = _trained("gpt2", "A4W4")
    text = rq.inspect(qat)
    assert "note: lm_head: weight lm_head.weight is tied to transformer.wte" in text
    assert "float: transformer.h.0.attn:matmul (attention matmul" in text
    assert "note: captured with torch.export" in text
    llama, _, _ = _trained("llama", "A4W4")
    assert "float: model.layers.0.self_attn" not in rq.inspect(llama)  # quantize_attention=True
    assert any(":matmul" in k for k in llama.meta["rq_layer_keys"])


def test_resnet_report_lists_folds_and_float_stem() -> None:
    qat, _, _ = _trained("resnet", "A4W4")
    text = rq.inspect(qat)
    assert "float: embedder.embedder.convolution (kept in float by the config)" in text
    assert (
        "note: encoder.stages.1.layers.0.shortcut.normalization folded into "
        "encoder.stages.1.layers.0.shortcut.convolution" in text
    )


def test_sdpa_attention_is_lowered_in_float() -> None:
    """attn_implementation="sdpa": one aten.scaled_dot_product_attention per layer, with HF's
    mask applied explicitly; it stays float (quantize_attention needs eager attention)."""
    model, ex = HF_MODELS["llama"]()
    model.set_attn_implementation("sdpa")
    qat = rq.prepare(model, ex, "A4W4", quantize_attention=True)
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    assert sum(n.target == sdpa for n in qat.graph.nodes) == 2
    _check_parity(qat.eval(), ex, "reference")


def test_llama_with_a_padding_mask_converts_and_matches() -> None:
    """Batched serving: a Llama called with a padding ``attention_mask`` (the mask is built
    with ``&``, ``where`` and advanced indexing inside transformers) converts, and the
    lowered model matches the QAT one on reference and llvm."""
    pytest.importorskip("transformers")
    from rqcompile.testing.hf import tiny_llama

    m, ex = tiny_llama()
    ids = ex[0]
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # the first sequence is left-padded

    class WithMask(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = m

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids=ids, attention_mask=mask, use_cache=False).logits

    qat = rq.prepare(WithMask(), (ids, mask), "A8W8").eval()
    ref = rq.lower(qat, "reference")
    torch.testing.assert_close(ref(ids, mask), qat(ids, mask), rtol=1e-4, atol=1e-4)
    if importlib.util.find_spec("tvm") is not None:
        torch.testing.assert_close(rq.lower(qat, "llvm")(ids, mask), ref(ids, mask),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip


def test_a_model_that_returns_its_kv_cache_gets_an_error_naming_use_cache() -> None:
    """``use_cache=True`` (transformers' default) makes the model return a ``DynamicCache``,
    which no captured graph can return: the error says so and how to turn it off."""
    from rqcompile.errors import CaptureError
    from rqcompile.testing.hf import tiny_llama

    m, ex = tiny_llama()
    m.config.use_cache = True
    with pytest.raises(CaptureError, match=r"KV cache.*\n(.*\n)*Fix: .*use_cache = False"):
        rq.prepare(m, ex, "A8W8")
    m.config.use_cache = False
    rq.prepare(m, ex, "A8W8")  # the fix works
