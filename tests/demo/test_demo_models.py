"""Tests for rqcompile.demo.models: fx traceability, eager parity, names, generation."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
from torch import nn

from rqcompile.demo.models import CharTransformer, DigitsCNN, generate, param_count


def _tiny_lm(**kw: int) -> CharTransformer:
    torch.manual_seed(0)
    return CharTransformer(31, n_layer=2, n_head=4, n_embd=32, block_size=16, **kw)


@pytest.mark.parametrize("t", [1, 7, 16])
def test_char_transformer_traces_and_matches_eager(t: int) -> None:
    model = _tiny_lm()
    traced = fx.symbolic_trace(model)
    traced.graph.lint()
    idx = torch.randint(31, (3, t))
    assert traced(idx).shape == (3, t, 31)
    torch.testing.assert_close(traced(idx), model(idx), rtol=0, atol=0)


def test_attention_matmuls_are_visible_in_graph() -> None:
    graph = fx.symbolic_trace(_tiny_lm()).graph
    calls = [n.target for n in graph.nodes if n.op == "call_function"]
    methods = [n.target for n in graph.nodes if n.op == "call_method"]
    assert calls.count(torch.matmul) == 2 * 2  # q @ k^T and att @ v, per block
    assert methods.count("masked_fill") == 2
    assert operator.getitem in calls  # pos_emb.weight[:t]
    modules = {n.target for n in graph.nodes if n.op == "call_module"}
    for name in ("tok_emb", "blocks.0.attn.c_attn", "blocks.1.mlp.proj", "ln_f", "lm_head"):
        assert name in modules


def test_char_transformer_names_and_shapes() -> None:
    model = _tiny_lm()
    names = dict(model.named_modules())
    for i in range(2):
        for sub in ("ln1", "attn.c_attn", "attn.c_proj", "ln2", "mlp.fc", "mlp.proj"):
            assert f"blocks.{i}.{sub}" in names
    assert isinstance(names["blocks.0.attn.c_attn"], nn.Linear)
    assert names["blocks.0.attn.c_attn"].out_features == 3 * 32
    assert names["blocks.0.mlp.fc"].out_features == 4 * 32
    assert isinstance(names["blocks.0.mlp.act"], nn.GELU)
    assert names["lm_head"].bias is None
    assert set(fx.symbolic_trace(model).state_dict()) == set(model.state_dict())
    with pytest.raises(ValueError, match="divisible"):
        CharTransformer(10, n_head=3, n_embd=32)


def test_char_transformer_is_causal() -> None:
    model = _tiny_lm().eval()
    idx = torch.randint(31, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 31
    torch.testing.assert_close(model(idx)[:, :8], model(changed)[:, :8])
    assert not torch.allclose(model(idx)[:, 8:], model(changed)[:, 8:])


def test_digits_cnn_traces_and_matches_eager() -> None:
    torch.manual_seed(0)
    model = DigitsCNN()
    model(torch.randn(16, 1, 8, 8))  # move BN running stats away from the defaults
    model.eval()
    traced = fx.symbolic_trace(model).eval()
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    assert traced(x).shape == (5, 10)
    names = dict(model.named_modules())
    for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "fc"):
        assert name in names
    for conv in (model.conv1, model.conv2, model.conv3):
        assert conv.out_channels % 32 == 0
    assert model.fc.in_features % 32 == 0


def test_param_count_counts_shared_once() -> None:
    model = _tiny_lm()
    base = param_count(model)
    assert base == sum(p.numel() for p in model.parameters())
    model.lm_head.weight = model.tok_emb.weight  # tie
    assert param_count(model) == base - 31 * 32
    model.ln_f.weight.requires_grad_(False)
    assert param_count(model, trainable_only=True) == param_count(model) - 32


def test_generate_any_callable() -> None:
    model = _tiny_lm()
    model.train()
    prompt = torch.zeros(2, 3, dtype=torch.long)
    out = generate(model, prompt, 20, block_size=16, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 23) and torch.equal(out[:, :3], prompt)
    assert model.training  # mode restored
    greedy = generate(model, prompt, 20, block_size=16, temperature=0)
    top1 = generate(model, prompt, 20, block_size=16, top_k=1)
    assert torch.equal(greedy, top1)
    traced = fx.symbolic_trace(model)
    assert torch.equal(generate(traced, prompt, 20, block_size=16, temperature=0), greedy)
    plain = generate(lambda i: model.eval()(i), prompt, 20, 16, temperature=0)
    assert torch.equal(plain, greedy)


def test_presets_build_and_lookup() -> None:
    from rqcompile.demo.presets import DIGITS_TRAIN, LM_PRESETS, lm_preset

    assert set(LM_PRESETS) == {"quick", "full"}
    quick = lm_preset("quick")
    model = quick.build(71)
    assert model.block_size == quick.block_size and param_count(model) < 1_000_000
    assert lm_preset("full").train.steps > quick.train.steps
    assert DIGITS_TRAIN.steps > 0
    with pytest.raises(KeyError, match="known: quick, full"):
        lm_preset("huge")
