"""kv-cache: prefill/decode functions derived from a decoder's main by the sequence-axis analysis."""

from __future__ import annotations

import math

import pytest
import torch
from ir_pass_helpers import body, run_pass

from rqcompile.errors import UnsupportedOpError
from rqcompile.ir import Builder, TensorType
from rqcompile.ir.parser import parse_module
from rqcompile.ir.printer import print_module
from rqcompile.ir.semantics import run_reference
from rqcompile.passes.ir import KVCache
from rqcompile.passes.ir.kv_cache import cache_axis


def _attention(*, causal: bool = True, T: int = 4, mask: torch.Tensor | None = None, B: int = 1):
    """ids → embedding + position table → one head of self-attention (q = k = v = x)."""
    g = torch.Generator().manual_seed(0)
    b = Builder()
    ids = b.arg(TensorType((B, T), "i64"))
    x = b.op("rq.embedding", ids, b.const("emb", torch.randn(5, 8, generator=g)))
    x = b.op("rq.add", x, b.const("pos", torch.randn(T, 8, generator=g)))
    s = b.op("rq.matmul", x, b.op("rq.permute", x, dims=(0, 2, 1)))
    if causal:
        m = torch.ones(T, T, dtype=torch.bool).triu(1) if mask is None else mask
        s = b.op("rq.masked_fill", s, b.const("mask", m), value=-math.inf)
    b.ret(b.op("rq.matmul", b.op("rq.softmax", s, axis=-1), x))
    return b.module()


DECODE = """\
%3 = "rq.const"() {dtype = "f32", name = "emb", shape = [5 : i64, 8 : i64]} : () -> tensor<5x8xf32>
%4 = "rq.embedding"(%0, %3) : (tensor<1x1xi64>, tensor<5x8xf32>) -> tensor<1x1x8xf32>
%5 = "rq.const"() {dtype = "f32", name = "pos", shape = [4 : i64, 8 : i64]} : () -> tensor<4x8xf32>
%6 = "rq.take"(%5, %1) {axis = 0 : i64} : (tensor<4x8xf32>, tensor<1xi64>) -> tensor<1x8xf32>
%7 = "rq.add"(%4, %6) : (tensor<1x1x8xf32>, tensor<1x8xf32>) -> tensor<1x1x8xf32>
%8 = "rq.cache_write"(%2, %7, %1) {axis = 1 : i64} : (tensor<1x4x8xf32>, tensor<1x1x8xf32>, tensor<1xi64>) -> tensor<1x4x8xf32>
%9 = "rq.cache_attention"(%7, %8, %8, %1) {key_axis = -2 : i64, scale = 1.0 : f64} : (tensor<1x1x8xf32>, tensor<1x4x8xf32>, tensor<1x4x8xf32>, tensor<1xi64>) -> tensor<1x1x8xf32>
"func.return"(%9, %8) : (tensor<1x1x8xf32>, tensor<1x4x8xf32>) -> ()
"""


def test_decode_caches_keys_and_values_and_gathers_position_constants() -> None:
    after = run_pass(KVCache(), _attention())
    assert [f.name for f in after.funcs] == ["main", "prefill", "decode"]
    assert body(after.replace(funcs=(after.func("decode"),))) == DECODE.strip()
    # prefill is main plus the cached operand as output: kᵀ is the transpose of x (1, T, 8),
    # so x is cached by rows, and it is also v, so one cache serves both
    prefill = after.func("prefill")
    assert prefill.ops == after.main.ops and prefill.outputs[0] == after.main.outputs[0]
    assert [str(v.type) for v in prefill.outputs[1:]] == ["tensor<1x4x8xf32>"]
    assert parse_module(print_module(after, elide_constants=False)) == after
    assert run_pass(KVCache(), after) == after  # idempotent


def _decode_all(mod, ids: torch.Tensor, start: int | list[int]) -> list[torch.Tensor]:
    """Prefill ``ids[b, :start[b]]`` padded, then decode each row's later positions (row ``b``
    at position ``start[b] + i`` in step ``i``; ``pos`` is (B,)); logits per position, each
    row's positions from 0."""
    dec = mod.func("decode")
    b, n = ids.shape
    starts = torch.tensor([start] * b if isinstance(start, int) else start)
    pad = torch.zeros_like(ids)
    for r in range(b):
        pad[r, : starts[r]] = ids[r, : starts[r]]
    out = run_reference(mod, pad, func="prefill")
    logits = [[out[0][r, t] for t in range(int(starts[r]))] for r in range(b)]
    caches = [c.clone() for c in out[1:]]
    rows = torch.arange(b)
    for i in range(n - int(starts.min())):
        at = (starts + i).clamp(max=n - 1)  # rows that are done re-run their last position
        outs = run_reference(mod, ids[rows, at].reshape(b, 1), at, *caches, func="decode")
        if [o.type for o in dec.outputs[1:]] == [a.type for a in dec.args[2:]]:
            caches = list(outs[1:])  # decode returns the caches with its rows written
        else:  # in_place=False: the new rows, copied in here
            for c, new, a, o in zip(caches, outs[1:], dec.args[2:], dec.outputs[1:], strict=True):
                axis = cache_axis(a.type, o.type)
                for r in range(b):
                    c[r].index_copy_(axis - 1, at[r : r + 1], new[r])
        for r in range(b):
            if int(starts[r]) + i < n:
                logits[r].append(outs[0][r, 0])
    return [torch.stack([lg[t] for lg in logits]) for t in range(n)]


@pytest.mark.parametrize("start", [1, 3])
def test_decode_matches_the_full_forward_at_every_position(start: int) -> None:
    mod = run_pass(KVCache(), _attention(T=6))
    ids = torch.tensor([[1, 4, 0, 2, 2, 3]])
    full = run_reference(mod, ids)[0]
    for t, got in enumerate(_decode_all(mod, ids, start)):
        torch.testing.assert_close(got, full[:, t], rtol=1e-5, atol=1e-6)


def test_attention_without_a_causal_mask_is_refused() -> None:
    with pytest.raises(UnsupportedOpError, match="rq.softmax.*causal"):
        run_pass(KVCache(), _attention(causal=False))
    leaky = torch.ones(4, 4, dtype=torch.bool).triu(2)  # lets each query see the next key
    with pytest.raises(UnsupportedOpError, match="causal"):
        run_pass(KVCache(), _attention(mask=leaky))


def test_ops_mixing_positions_are_refused_with_the_op_and_reason() -> None:
    b = Builder()
    ids = b.arg(TensorType((1, 4), "i64"))
    x = b.op("rq.embedding", ids, b.const("emb", torch.randn(5, 8)))
    b.ret(b.op("rq.mean", x, axes=(1,), keepdim=True))
    with pytest.raises(UnsupportedOpError, match="rq.mean.*averages over the sequence axis"):
        run_pass(KVCache(), b.module())
    b = Builder()
    ids = b.arg(TensorType((1, 4), "i64"))
    x = b.op("rq.embedding", ids, b.const("emb", torch.randn(5, 8)))
    b.ret(b.op("rq.softmax", x, axis=1))
    with pytest.raises(UnsupportedOpError, match="rq.softmax.*over the sequence axis"):
        run_pass(KVCache(), b.module())


def test_models_that_are_not_token_decoders_are_refused() -> None:
    b = Builder()
    x = b.arg(TensorType((2, 8), "f32"))
    b.ret(b.op("rq.relu", x))
    with pytest.raises(UnsupportedOpError, match="token ids"):
        run_pass(KVCache(), b.module())
    b = Builder()
    ids = b.arg(TensorType((1, 4), "i64"))
    b.ret(b.op("rq.embedding", ids, b.const("emb", torch.randn(5, 8))))
    with pytest.raises(UnsupportedOpError, match="nothing to cache"):
        run_pass(KVCache(), b.module())


def _sdpa_attention(*, causal: bool = True, T: int = 6):
    """ids → embedding + position table → two heads of rq.sdpa (q = k = v = x)."""
    g = torch.Generator().manual_seed(0)
    b = Builder()
    ids = b.arg(TensorType((2, T), "i64"))
    x = b.op("rq.embedding", ids, b.const("emb", torch.randn(5, 8, generator=g)))
    x = b.op("rq.add", x, b.const("pos", torch.randn(T, 8, generator=g)))
    h = b.op("rq.permute", b.op("rq.reshape", x, shape=(2, T, 2, 4)), dims=(0, 2, 1, 3))
    y = b.op("rq.sdpa", h, h, h, causal=causal, scale=0.5)
    b.ret(b.op("rq.reshape", b.op("rq.permute", y, dims=(0, 2, 1, 3)), shape=(2, T, 8)))
    return b.module()


@pytest.mark.parametrize("start", [1, 4])
def test_causal_sdpa_decodes_with_cache_attention(start: int) -> None:
    mod = run_pass(KVCache(), _sdpa_attention())
    dec = mod.func("decode")
    names = [op.name for op in dec.ops]
    assert "rq.sdpa" not in names  # its causal rule needs L == S
    assert names.count("rq.cache_attention") == 1 and names.count("rq.cache_write") == 1
    (att,) = (op for op in dec.ops if op.name == "rq.cache_attention")
    assert att.attr("key_axis") == -2 and att.attr("scale") == 0.5  # k cached as (.., T, E)
    assert [str(a.type) for a in dec.args[2:]] == ["tensor<2x2x6x4xf32>"]  # k = v: one cache
    ids = torch.tensor([[1, 4, 0, 2, 2, 3], [3, 3, 1, 0, 4, 2]])
    full = run_reference(mod, ids)[0]
    for t, got in enumerate(_decode_all(mod, ids, start)):
        torch.testing.assert_close(got, full[:, t], rtol=1e-5, atol=1e-6)


def test_rows_decode_at_their_own_positions() -> None:
    """Batch 2, ``pos`` (2,): row 0 is prefilled with 1 token, row 1 with 4, then both decode
    together, each at its own position; every position equals the full forward."""
    for mod in (run_pass(KVCache(), _sdpa_attention()), run_pass(KVCache(), _attention(T=6, B=2))):
        assert str(mod.func("decode").args[1].type) == "tensor<2xi64>"
        ids = torch.tensor([[1, 4, 0, 2, 2, 3], [3, 3, 1, 0, 4, 2]])
        full = run_reference(mod, ids)[0]
        for t, got in enumerate(_decode_all(mod, ids, [1, 4])):
            torch.testing.assert_close(got, full[:, t], rtol=1e-5, atol=1e-6)


def test_sdpa_without_is_causal_is_refused() -> None:
    with pytest.raises(UnsupportedOpError, match=r"rq.sdpa.*is_causal=False"):
        run_pass(KVCache(), _sdpa_attention(causal=False))


def test_caches_are_written_one_row_in_place_and_returned() -> None:
    """Each cache argument has one use, its rq.cache_write (so a target may write in place),
    and decode returns the written caches; no full-cache select (rq.where) is left."""
    dec = run_pass(KVCache(), _attention(T=6, B=2)).func("decode")
    names = [op.name for op in dec.ops]
    assert "rq.where" not in names and "rq.compare" not in names
    for a, out in zip(dec.args[2:], dec.outputs[1:], strict=True):
        users = [op for op in dec.ops if any(v.id == a.id for v in op.operands)]
        assert [u.name for u in users] == ["rq.cache_write"] and users[0].result.id == out.id
        assert users[0].operands[2].id == dec.args[1].id  # at pos (B,)


def _window_mask(T: int) -> torch.Tensor:
    """Causal and also hides keys more than 2 before the query: not exactly causal."""
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    return future | torch.ones(T, T, dtype=torch.bool).tril(-3)


@pytest.mark.parametrize("form", ["additive", "additive-kt", "window"])
def test_attention_is_fused_only_when_the_mask_hides_exactly_the_future(form: str) -> None:
    """An additive causal mask (0 / -1e9) hides exactly the keys after pos: rq.cache_attention.
    A sliding window hides more: the explicit form stays (over the cache_write results).
    ``additive-kt``: kᵀ is not a transpose of a (T, E) value, so it is cached as (E, T)."""
    T = 6
    g = torch.Generator().manual_seed(0)
    b = Builder()
    ids = b.arg(TensorType((1, T), "i64"))
    x = b.op("rq.embedding", ids, b.const("emb", torch.randn(5, 8, generator=g)))
    x = b.op("rq.add", x, b.const("pos", torch.randn(T, 8, generator=g)))
    kt = b.op("rq.permute", x, dims=(0, 2, 1))
    if form == "additive-kt":
        kt = b.op("rq.mul_scalar", kt, value=2.0)
    s = b.op("rq.mul_scalar", b.op("rq.matmul", x, kt), value=0.5)
    if form.startswith("additive"):
        add = torch.zeros(T, T).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -1e9)
        s = b.op("rq.add", s, b.const("mask", add))
    else:
        s = b.op("rq.masked_fill", s, b.const("mask", _window_mask(T)), value=-math.inf)
    b.ret(b.op("rq.matmul", b.op("rq.softmax", s, axis=-1), x))
    mod = run_pass(KVCache(), b.module())
    names = [op.name for op in mod.func("decode").ops]
    assert ("rq.cache_attention" in names) == form.startswith("additive")
    # x is the keys' source and the values: one cache, unless kᵀ is cached as it is
    assert names.count("rq.cache_write") == (2 if form == "additive-kt" else 1)
    if form.startswith("additive"):
        (att,) = (op for op in mod.func("decode").ops if op.name == "rq.cache_attention")
        assert att.attr("scale") == 0.5
        assert att.attr("key_axis") == (-1 if form == "additive-kt" else -2)
    ids = torch.tensor([[1, 4, 0, 2, 2, 3]])
    full = run_reference(mod, ids)[0]
    for t, got in enumerate(_decode_all(mod, ids, 2)):
        torch.testing.assert_close(got, full[:, t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [_attention, _sdpa_attention])
def test_select_form_is_kept_to_measure_against(make) -> None:
    """in_place=False: the earlier decode (rq.where merge, full-length attention, new rows
    out) still decodes every position like the full forward."""
    mod = run_pass(KVCache(in_place=False), make(T=6))
    names = {op.name for op in mod.func("decode").ops}
    assert "rq.where" in names and not names & {"rq.cache_write", "rq.cache_attention"}
    ids = torch.tensor([[1, 4, 0, 2, 2, 3]] * mod.main.args[0].type.shape[0])
    full = run_reference(mod, ids)[0]
    for t, got in enumerate(_decode_all(mod, ids, 2)):
        torch.testing.assert_close(got, full[:, t], rtol=1e-5, atol=1e-6)
