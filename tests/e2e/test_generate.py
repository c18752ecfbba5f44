"""exe.generate (KV cache) against rq.generate (the QAT model re-run on the growing prefix).

A small char transformer is trained a few dozen QAT steps on a repeating text, so its logits
are far from flat, then greedy generation of 64 tokens must give exactly the QAT model's
tokens at A8W8, A4W4 and A1W1, on the reference target and on llvm (slow: three builds).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import rqcompile as rq
from rqcompile.demo.models import CharTransformer
from rqcompile.errors import InputError, UsageError

T = 72  # converted length = longest context: an 8-token prompt + 64 new tokens
TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. "
VOCAB = sorted(set(TEXT))


def _encode(s: str) -> torch.Tensor:
    return torch.tensor([[VOCAB.index(c) for c in s]])


@functools.cache
def _trained(config: str) -> torch.fx.GraphModule:
    torch.manual_seed(0)
    model = CharTransformer(len(VOCAB), n_layer=1, n_embd=32, n_head=2, block_size=T)
    qat = rq.prepare(model, (torch.zeros(1, T, dtype=torch.long),), config)
    data = _encode(TEXT * 4)[0]
    opt = torch.optim.Adam(qat.parameters(), lr=3e-3)
    qat.train()
    for step in range(40):
        starts = torch.randint(
            0, len(data) - T - 1, (4,), generator=torch.Generator().manual_seed(step)
        )
        x = torch.stack([data[s : s + T] for s in starts])
        y = torch.stack([data[s + 1 : s + T + 1] for s in starts])
        loss = F.cross_entropy(qat(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return qat.eval()


PROMPT = _encode("the lazy")


@functools.cache
def _want(config: str) -> torch.Tensor:
    return rq.generate(_trained(config), PROMPT, 64)


@pytest.mark.slow  # ~20 s each on 2 cores: QAT training + 64 re-runs of the QAT model
@pytest.mark.parametrize("config", ["A8W8", "A4W4", "A1W1"])
def test_greedy_generate_matches_qat_on_reference(config: str) -> None:
    exe = rq.lower(_trained(config), "reference", generate=True)
    got = exe.generate(PROMPT, 64)
    want = _want(config)
    assert got.shape == (1, 8 + 64)
    assert torch.equal(got, want), (got != want).nonzero()[:1].tolist()
    assert len(set(want[0, 8:].tolist())) > 3  # not a constant run: the logits are informative


@functools.cache
def _seeded(config: str) -> torch.fx.GraphModule:
    """Untrained, fixed seed: for the default run's fast tests (no training cost)."""
    torch.manual_seed(1)
    model = CharTransformer(len(VOCAB), n_layer=1, n_embd=32, n_head=2, block_size=T)
    return rq.prepare(model, (torch.zeros(1, T, dtype=torch.long),), config).eval()


@pytest.mark.parametrize("config", ["A4W4", "W4"])
def test_greedy_generate_matches_qat_short(config: str) -> None:
    """The default run's check: 16 greedy tokens on the reference target (W4: the weight-only
    rq.wo_matmul rows through the kv-cache pass too)."""
    qat = _seeded(config)
    got = rq.lower(qat, "reference", generate=True).generate(PROMPT, 16)
    assert torch.equal(got, rq.generate(qat, PROMPT, 16))


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("config", ["A8W8", "A4W4", "A1W1"])
def test_greedy_generate_matches_qat_on_llvm(config: str, tmp_path) -> None:
    exe = rq.lower(_trained(config), "llvm", generate=True)
    got = exe.generate(PROMPT, 64)
    assert torch.equal(got, _want(config)), (got != _want(config)).nonzero()[:1].tolist()
    exe.save(tmp_path / "m.rq")
    loaded = rq.load(tmp_path / "m.rq")
    assert loaded.can_generate and torch.equal(loaded.generate(PROMPT, 64), got)


def test_decode_matches_the_full_forward_logits_at_every_position() -> None:
    qat = _seeded("A8W8")
    exe = rq.lower(qat, "reference", generate=True)
    ids = _encode((TEXT * 2)[:T])
    full = exe(ids)  # main: the whole context at once
    kv = exe._kv
    worst = 0.0
    logits = kv.prefill(ids[:, :5])
    for p in range(5, T):
        assert (logits - full[:, p - 1]).abs().max() <= 1e-4 * full[:, p - 1].abs().max()
        logits = kv.decode(ids[:, p], p)
        worst = max(worst, float((logits - full[:, p]).abs().max() / full[:, p].abs().max()))
    assert worst < 1e-4, worst


def test_sampling_is_seeded_and_matches_qat() -> None:
    qat = _seeded("A8W8")
    exe = rq.lower(qat, "reference", generate=True)
    a = exe.generate(PROMPT, 20, temperature=0.8, top_k=5, seed=3)
    assert torch.equal(a, exe.generate(PROMPT, 20, temperature=0.8, top_k=5, seed=3))
    assert torch.equal(a, rq.generate(qat, PROMPT, 20, temperature=0.8, top_k=5, seed=3))


def test_save_load_keeps_generate(tmp_path) -> None:
    exe = rq.lower(_seeded("A8W8"), "reference", generate=True)
    exe.save(tmp_path / "m.rq")
    loaded = rq.load(tmp_path / "m.rq")
    assert torch.equal(loaded.generate(PROMPT, 10), exe.generate(PROMPT, 10))


def test_limits_are_typed_errors_naming_the_fix() -> None:
    qat = _seeded("A8W8")
    exe = rq.lower(qat, "reference", generate=True)
    assert exe.max_length == T
    with pytest.raises(
        InputError, match=rf"exceeds the maximum context of {T} tokens.*longer example input"
    ):
        exe.generate(PROMPT, T - 7)
    with pytest.raises(InputError, match="batch 1"):
        exe.generate(torch.zeros(2, 4, dtype=torch.long), 4)
    with pytest.raises(UsageError, match="temperature"):
        exe.generate(PROMPT, 4, temperature=-1.0)
    assert torch.equal(exe.generate(PROMPT, 0), PROMPT)
    plain = rq.lower(qat, "reference")
    with pytest.raises(UsageError, match="generate=True"):
        plain.generate(PROMPT, 4)
    with pytest.raises(UsageError, match="cannot be combined with dynamic shapes.*Lower twice"):
        rq.lower(qat, "reference", generate=True, dynamic=True)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hf_decode_matches_the_full_forward(family: str) -> None:
    """GPT-2 (Conv1D, learned positions) and Llama (RoPE tables, grouped-query attention),
    built from a config at batch 2: every decoded position's logits equal the full forward's."""
    pytest.importorskip("transformers")
    from rqcompile.testing import hf

    model, ex = {"gpt2": hf.tiny_gpt2, "llama": hf.tiny_llama}[family]()
    exe = rq.lower(rq.prepare(model, ex, "A8W8").eval(), "reference", generate=True)
    ids = ex[0]
    full = hf.logits_of(exe(ids))
    kv = exe._kv
    got = [kv.prefill(ids[:, :3])]
    got += [kv.decode(ids[:, p], p) for p in range(3, ids.shape[1])]
    scale = float(full.abs().max())
    torch.testing.assert_close(torch.stack(got, 1), full[:, 2:], rtol=1e-4, atol=1e-5 * scale)


class _SdpaAttention(torch.nn.Module):
    """The demo's attention with ``F.scaled_dot_product_attention(is_causal=True)``: it
    converts to ``rq.sdpa`` (causal), which decode runs in the explicit masked form."""

    def __init__(self, attn: torch.nn.Module) -> None:
        super().__init__()
        self.n_head, self.n_embd = attn.n_head, attn.n_embd
        self.c_attn, self.c_proj = attn.c_attn, attn.c_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.size(0), x.size(1)
        q, k, v = (
            z.view(b, t, self.n_head, self.n_embd // self.n_head).transpose(1, 2)
            for z in self.c_attn(x).split(self.n_embd, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, self.n_embd))


@functools.cache
def _sdpa_model(config: str) -> torch.fx.GraphModule:
    torch.manual_seed(1)
    model = CharTransformer(len(VOCAB), n_layer=1, n_embd=32, n_head=2, block_size=T)
    for block in model.blocks:
        block.attn = _SdpaAttention(block.attn)
    return rq.prepare(model, (torch.zeros(1, T, dtype=torch.long),), config).eval()


def test_sdpa_is_causal_generates_like_qat() -> None:
    qat = _sdpa_model("A8W8")
    assert "rq.sdpa" in {op.name for op in rq.convert(qat).main.ops}
    exe = rq.lower(qat, "reference", generate=True)
    assert torch.equal(exe.generate(PROMPT, 24), rq.generate(qat, PROMPT, 24))


@pytest.mark.tvm
@pytest.mark.slow  # an llvm build of main, prefill and decode
def test_sdpa_is_causal_generates_like_qat_on_llvm() -> None:
    qat = _sdpa_model("A4W4")
    want = rq.generate(qat, PROMPT, 64)
    assert torch.equal(rq.lower(qat, "llvm", generate=True).generate(PROMPT, 64), want)


def test_hf_gpt2_sdpa_generates_like_qat() -> None:
    """HF's default attention: under torch.export, transformers passes sdpa an explicit
    boolean causal mask (converted to masked_fill), which decode gathers at ``pos``."""
    pytest.importorskip("transformers")
    from rqcompile.testing import hf

    model, ex = hf.tiny_gpt2(
        positions=32, seq=24, batch=1, init_range=0.2, attn_implementation="sdpa"
    )
    qat = rq.prepare(model, ex, "A8W8").eval()
    ids = ex[0][:, :6]
    want = rq.generate(qat, ids, 18)
    assert len(set(want[0, 6:].tolist())) > 3
    assert torch.equal(rq.lower(qat, "reference", generate=True).generate(ids, 18), want)


LENGTHS = (5, 9, 12)


def _ragged() -> torch.Tensor:
    """Three prompts of lengths 5, 9 and 12 in one (3, 12) batch, padded at the end with 7s
    (any id: padding is never read)."""
    ids = torch.full((3, 12), 7)
    for r, n in enumerate(LENGTHS):
        ids[r, :n] = _encode((TEXT * 2)[10 * r : 10 * r + n])[0]
    return ids


def _check_ragged(exe3, exe1, n: int) -> torch.Tensor:
    """Row by row, the ragged batch's tokens are those of each prompt generated alone."""
    ids = _ragged()
    got = exe3.generate(ids, n, lengths=list(LENGTHS))
    assert got.shape == (3, 12 + n)
    for r, k in enumerate(LENGTHS):
        alone = exe1.generate(ids[r : r + 1, :k], n)
        assert torch.equal(got[r, : k + n], alone[0]), (r, got[r].tolist(), alone[0].tolist())
        assert not got[r, k + n :].any()  # the places after a shorter row's tokens are 0
    mask = (torch.arange(12) < torch.tensor(LENGTHS)[:, None]).long()
    assert torch.equal(exe3.generate(ids, n, attention_mask=mask), got)  # HF's spelling
    return got


def test_ragged_batch_rows_generate_as_if_alone() -> None:
    qat = _seeded("A8W8")
    exe3 = rq.lower(
        qat, "reference", generate=True, example_inputs=(torch.zeros(3, T, dtype=torch.long),)
    )
    exe1 = rq.lower(qat, "reference", generate=True)
    got = _check_ragged(exe3, exe1, 10)
    assert torch.equal(got, rq.generate(qat, _ragged(), 10, lengths=LENGTHS))  # the QAT oracle


@pytest.mark.tvm
@pytest.mark.slow  # two llvm builds (batch 3 and batch 1)
@pytest.mark.parametrize("config", ["A8W8", "A1W1"])
def test_ragged_batch_rows_generate_as_if_alone_on_llvm(config: str) -> None:
    qat = _trained(config)
    exe3 = rq.lower(
        qat, "llvm", generate=True, example_inputs=(torch.zeros(3, T, dtype=torch.long),)
    )
    exe1 = rq.lower(qat, "llvm", generate=True)
    got = _check_ragged(exe3, exe1, 48)
    assert torch.equal(got, rq.generate(qat, _ragged(), 48, lengths=LENGTHS))


def test_ragged_batch_errors_are_typed() -> None:
    qat = _seeded("A8W8")
    exe = rq.lower(
        qat, "reference", generate=True, example_inputs=(torch.zeros(3, T, dtype=torch.long),)
    )
    ids = _ragged()
    with pytest.raises(InputError, match="padding before a prompt token.*padding_side"):
        exe.generate(ids, 4, attention_mask=(torch.arange(12) >= 2).long().expand(3, 12))
    with pytest.raises(InputError, match=r"lie in \[1, 12\]"):
        exe.generate(ids, 4, lengths=[5, 0, 12])
    with pytest.raises(InputError, match="2 lengths for a batch of 3"):
        exe.generate(ids, 4, lengths=[5, 9])
    with pytest.raises(InputError, match="not both"):
        exe.generate(ids, 4, lengths=[5, 9, 12], attention_mask=torch.ones(3, 12))
    with pytest.raises(
        InputError,
        match=rf"prompt \(12 tokens\) \+ max_new_tokens.*exceeds the maximum context of {T}",
    ):
        exe.generate(ids, T - 11, lengths=[5, 9, 12])


def test_quantize_attention_is_refused_because_it_is_not_causal() -> None:
    """With quantize_attention=True, vᵀ is quantized in blocks along the sequence: changing
    later tokens changes earlier positions' logits, so no KV cache can be exact."""
    torch.manual_seed(0)
    model = CharTransformer(len(VOCAB), n_layer=1, n_embd=32, n_head=2, block_size=8)
    qat = rq.prepare(
        model, (torch.zeros(1, 8, dtype=torch.long),), "A8W8", quantize_attention=True
    ).eval()
    a = torch.arange(8).reshape(1, 8)
    b = a.clone()
    b[0, 4:] += 7
    with torch.no_grad():
        assert not torch.equal(qat(a)[0, :4], qat(b)[0, :4])  # not causal
    with pytest.raises(
        rq.errors.UnsupportedOpError, match=r"rq.qbmm.*quantize_attention=True.*not causal"
    ):
        rq.lower(qat, "reference", generate=True)


def test_qat_oracle_ragged_rows_equal_each_prompt_alone() -> None:
    """rq.generate(lengths=) on a plain module (any length; padded to prompt + new tokens)."""
    torch.manual_seed(1)
    model = CharTransformer(20, n_layer=1, n_embd=32, n_head=2, block_size=24).eval()
    ids = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    got = rq.generate(model, ids, 5, lengths=[3, 6])
    assert got.shape == (2, 11) and not got[0, 8:].any()
    for r, k in enumerate([3, 6]):
        assert torch.equal(got[r, : k + 5], rq.generate(model, ids[r : r + 1, :k], 5)[0])


def test_decode_that_returns_new_rows_still_generates() -> None:
    """An IR whose decode returns only the new rows (``KVCache(in_place=False)``, the form of
    IRs saved before rq.cache_write) generates the same tokens: the generator copies them in."""
    from rqcompile.passes.infra import PassContext, PassManager
    from rqcompile.passes.ir.kv_cache import KVCache

    qat = _seeded("A8W8")
    ir = PassManager([KVCache(in_place=False)]).run(rq.convert(qat), PassContext())
    old = rq.build(ir, "reference")
    assert not old._kv.returns_caches
    want = rq.lower(qat, "reference", generate=True).generate(PROMPT, 12)
    assert torch.equal(old.generate(PROMPT, 12), want)
