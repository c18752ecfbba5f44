"""The integer reference kernels: docs/method.md#worked-examples worked examples, exact cores, epilogue parity."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rqcompile.errors import NumericsError
from rqcompile.quant import reference as ref
from rqcompile.quant.bitpack import (
    pack_nibbles,
    pack_signs,
    pack_sparse24,
    unpack_signs,
)
from rqcompile.quant.fake_quant import fake_quant_blocks
from rqcompile.quant.primitives import QFormat, to_blocks

D = torch.float64
X_A = torch.tensor([[0.9, -0.3, 0.2, 1.4], [-1.1, 0.5, 0.05, -0.6]])
W_A = torch.tensor([[0.5, -0.7], [-0.25, 0.3], [1.0, 0.35], [0.1, -0.2]])  # K x p
X_B = torch.tensor(
    [[0.9, -0.3, 0.2, 1.4, -0.5, 0.8, 0.1, -1.2], [-1.1, 0.5, 0.05, -0.6, 0.7, 0.3, -0.4, 0.9]]
)
WT_B = torch.tensor(
    [[0.5, -0.25, 1.0, 0.1, -0.6, 0.4, 0.2, -0.3], [-0.7, 0.3, 0.35, -0.2, 0.15, -0.45, 0.6, 0.25]]
)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)


def _wquant(w: torch.Tensor, bits: float, symmetric: bool, block: int, nm=None):  # type: ignore[no-untyped-def]
    r = fake_quant_blocks(to_blocks(w, block), QFormat(bits, symmetric), nm=nm)
    q = r.codes.reshape(w.shape).to(torch.int8)
    return q, r.scale.squeeze(-1), r.offset.squeeze(-1), ref.code_sums(q, block)


# -- docs/method.md#worked-examples -----------------------------------------------------------------------


def test_example_a_a2w2_affine() -> None:
    xq, xs, xc = ref.quantize(X_A, bits=2, symmetric=False, block=4)
    wq, ws, wc, wsum = _wquant(W_A.t().contiguous(), 2, False, 4)
    assert xq.tolist() == [[2, 0, 1, 3], [0, 3, 2, 1]]
    assert wq.tolist() == [[2, 0, 3, 1], [0, 3, 3, 1]]
    _close(xs.flatten(), torch.tensor([0.575397, 0.540675]))
    _close(ws.flatten(), torch.tensor([0.411706, 0.322165]))
    p = ref.int_matmul_core(xq, wq, 4)
    assert p.squeeze(-1).tolist() == [[10, 6], [7, 16]]
    assert ref.code_sums(xq, 4).flatten().tolist() == [6, 6]
    assert wsum.flatten().tolist() == [6, 7]
    y = ref.int_matmul(xq, xs, xc, wq, ws, wc, wsum, block=4, w_bits=8, w_signed=True)
    _close(y, torch.tensor([[0.979395, -0.971677], [-0.833323, 1.029900]]))
    # the same through the nibble layout (2-bit unsigned codes)
    y4 = ref.int_matmul(
        xq, xs, xc, pack_nibbles(wq, signed=False), ws, wc, wsum, block=4, w_bits=2, w_signed=False
    )
    assert torch.equal(y4, y)


def test_example_b_a1w1_two_blocks() -> None:
    xq, xs, xc = ref.quantize(X_B, bits=1, symmetric=False, block=4)
    wq, ws, wc, wsum = _wquant(WT_B, 1, False, 4)
    assert xq.tolist() == [[1, -1, -1, 1, -1, 1, 1, -1], [-1, 1, 1, -1, 1, -1, -1, 1]]
    assert wq.tolist() == [[1, -1, 1, -1, -1, 1, 1, -1], [-1, 1, 1, -1, 1, -1, 1, 1]]
    _close(xs, torch.tensor([[0.594059, 0.643564], [0.556931, 0.420792]]))
    _close(ws, torch.tensor([[0.408416, 0.371287], [0.383663, 0.386513]]))
    p = ref.int_matmul_core(xq, wq, 4)
    assert p[..., 0].tolist() == [[0, -4], [0, 4]]
    assert p[..., 1].tolist() == [[4, -2], [-4, 2]]
    assert wsum.tolist() == [[0, 0], [0, 2]]
    # popcount(XNOR) per 4-element block, on the packed sign words
    xb, wb = (
        pack_signs(torch.cat([xq, -torch.ones(2, 24, dtype=torch.int8)], 1)),
        pack_signs(torch.cat([wq, -torch.ones(2, 24, dtype=torch.int8)], 1)),
    )
    xnor = ~(xb.to(torch.int64).unsqueeze(1) ^ wb.to(torch.int64).unsqueeze(0))
    pc0 = ref.popcount32(xnor & 0xF).squeeze(-1)
    pc1 = ref.popcount32((xnor >> 4) & 0xF).squeeze(-1)
    assert pc0.tolist() == [[2, 0], [2, 4]] and pc1.tolist() == [[4, 1], [0, 3]]
    y = ref.int_matmul(xq, xs, xc, wq, ws, wc, wsum, block=4, w_bits=8, w_signed=True)
    _close(y, torch.tensor([[1.758289, -1.656668], [-1.125564, 1.458104]]))


def test_example_c_w1_linear_sparse24() -> None:
    # pad K to 8 (sparse indices pack two groups per byte) with an all-zero second block:
    # its codes are 0 and its ridge scale 0, so it adds nothing.
    x = torch.cat([X_A[:1], torch.zeros(1, 4)], 1)
    w = torch.cat([W_A[:, 0], torch.zeros(4)]).reshape(1, 8)
    xq, xs, xc = ref.quantize(x, bits=2, symmetric=False, block=4)
    wq, ws, wc, wsum = _wquant(w, 1, True, 4, nm=(2, 4))
    assert wq[0, :4].tolist() == [1, 0, 1, 0]
    _close(ws[0, :1], torch.tensor([0.735294]), 1e-6)
    vals, idx = pack_sparse24(wq)
    assert vals[0, :2].tolist() == [1, 1] and (int(idx[0, 0]) & 0xF) == (0 | 2 << 2)
    p = ref.sparse24_core(xq, vals, idx, block=4)
    assert p[0, 0, 0].item() == 3
    y = ref.sparse24_matmul(xq, xs, xc, vals, idx, ws, wc, wsum, block=4, w_bits=1)
    _close(y, torch.tensor([[0.808824]]))


# -- exact cores --------------------------------------------------------------------------


def _dense_f64(xq: torch.Tensor, wq: torch.Tensor, block: int) -> torch.Tensor:
    m, k = xq.shape
    xb = xq.double().reshape(m, k // block, block)
    wb = wq.double().reshape(wq.shape[0], k // block, block)
    return torch.einsum("mbk,nbk->mnb", xb, wb)


_SHAPES = st.tuples(
    st.integers(1, 5), st.integers(1, 6), st.sampled_from([32, 64, 128]), st.integers(1, 3)
)


@settings(max_examples=25, deadline=None)
@given(shape=_SHAPES, seed=st.integers(0, 2**16))
def test_int_core_exact(shape: tuple[int, int, int, int], seed: int) -> None:
    m, n, block, nb = shape
    g = torch.Generator().manual_seed(seed)
    xq = torch.randint(-128, 128, (m, block * nb), generator=g).to(torch.int8)
    wq = torch.randint(-128, 128, (n, block * nb), generator=g).to(torch.int8)
    p = ref.int_matmul_core(xq, wq, block)
    assert p.dtype == torch.int32
    assert torch.equal(p.double(), _dense_f64(xq, wq, block))


@settings(max_examples=25, deadline=None)
@given(shape=_SHAPES, seed=st.integers(0, 2**16))
def test_xnor_core_exact(shape: tuple[int, int, int, int], seed: int) -> None:
    m, n, block, nb = shape
    g = torch.Generator().manual_seed(seed)
    xq = torch.randint(0, 2, (m, block * nb), generator=g).to(torch.int8) * 2 - 1
    wq = torch.randint(0, 2, (n, block * nb), generator=g).to(torch.int8) * 2 - 1
    p = ref.xnor_popcount_core(pack_signs(xq), pack_signs(wq), block=block)
    assert torch.equal(p.double(), _dense_f64(xq, wq, block))


@settings(max_examples=25, deadline=None)
@given(shape=_SHAPES, seed=st.integers(0, 2**16))
def test_sparse24_core_exact(shape: tuple[int, int, int, int], seed: int) -> None:
    m, n, block, nb = shape
    g = torch.Generator().manual_seed(seed)
    k = block * nb
    xq = torch.randint(-128, 128, (m, k), generator=g).to(torch.int8)
    dense = torch.randint(-7, 8, (n, k), generator=g)
    keep = (torch.rand(n, k // 4, 4, generator=g).argsort(-1) < 2).reshape(n, k)
    wq = (dense * keep).to(torch.int8)
    vals, idx = pack_sparse24(wq)
    p = ref.sparse24_core(xq, vals, idx, block=block)
    assert torch.equal(p.double(), _dense_f64(xq, wq, block))


# -- full ops vs dequantized float matmul -------------------------------------------------


@pytest.mark.parametrize(
    ("a_bits", "a_sym", "w_bits", "w_sym", "block"),
    [
        (8, False, 8, True, 32),
        (8, False, 4, False, 64),
        (4, False, 4, True, 128),
        (2, False, 2, False, 32),
        (8, True, 3, True, 64),
        (1.5, True, 4, True, 32),
    ],
)
def test_int_matmul_matches_dequantized(
    a_bits: float, a_sym: bool, w_bits: int, w_sym: bool, block: int
) -> None:
    x = torch.randn(5, 4 * block)
    w = torch.randn(7, 4 * block)
    xq, xs, xc = ref.quantize(x, bits=a_bits, symmetric=a_sym, block=block)
    wq, ws, wc = ref.quantize(w, bits=w_bits, symmetric=w_sym, block=block)
    wsum = ref.code_sums(wq, block)
    expect = ref.dequantize(xq, xs, xc) @ ref.dequantize(wq, ws, wc).t()
    stored = pack_nibbles(wq, signed=w_sym) if w_bits <= 4 else wq
    y = ref.int_matmul(xq, xs, xc, stored, ws, wc, wsum, block=block, w_bits=w_bits, w_signed=w_sym)
    assert y.dtype == torch.float32
    _close(y, expect)


@pytest.mark.parametrize("symmetric", [False, True])
def test_xnor_matmul_matches_dequantized(symmetric: bool) -> None:
    x, w = torch.randn(3, 256), torch.randn(6, 256)
    xb, xs, xc = ref.quantize(x, bits=1, symmetric=symmetric, block=64, pack="bits32")
    wb, ws, wc = ref.quantize(w, bits=1, symmetric=symmetric, block=64, pack="bits32")
    wsum = ref.code_sums(unpack_signs(wb), 64)
    expect = ref.dequantize(unpack_signs(xb), xs, xc) @ ref.dequantize(unpack_signs(wb), ws, wc).t()
    _close(ref.xnor_popcount_matmul(xb, xs, xc, wb, ws, wc, wsum, block=64, k=256), expect)


def test_sparse24_matmul_matches_dequantized() -> None:
    x, w = torch.randn(4, 256), torch.randn(5, 256)
    xq, xs, xc = ref.quantize(x, bits=4, symmetric=False, block=128)
    wq, ws, wc, wsum = _wquant(w, 1, True, 128, nm=(2, 4))
    vals, idx = pack_sparse24(wq)
    expect = ref.dequantize(xq, xs, xc) @ ref.dequantize(wq, ws, wc).t()
    y = ref.sparse24_matmul(xq, xs, xc, vals, idx, ws, wc, wsum, block=128, w_bits=1)
    _close(y, expect)


def test_qbmm_matches_dequantized() -> None:
    a, b = torch.randn(2, 3, 128), torch.randn(2, 5, 128)
    aq, as_, ac = ref.quantize(a, bits=8, symmetric=False, block=64)
    bq, bs, bc = ref.quantize(b, bits=4, symmetric=False, block=64)
    expect = ref.dequantize(aq, as_, ac) @ ref.dequantize(bq, bs, bc).transpose(-1, -2)
    _close(ref.qbmm(aq, as_, ac, bq, bs, bc, block=64), expect)


def test_quantize_matches_fake_quant_oracle() -> None:
    x = torch.randn(3, 2, 128)
    for bits, sym in [(8, False), (4, True), (1, False), (1.5, True)]:
        q, s, o = ref.quantize(x, bits=bits, symmetric=sym, block=64)
        y = fake_quant_blocks(to_blocks(x, 64), QFormat(bits, sym)).y.reshape(x.shape)
        _close(ref.dequantize(q, s, o), y, 1e-5)
    q8, _, _ = ref.quantize(x, bits=8, symmetric=False, block=64)
    assert q8.dtype == torch.int8 and int(q8.min()) >= -128


def test_errors() -> None:
    with pytest.raises(NumericsError, match="multiple of the block"):
        ref.quantize(torch.randn(2, 100), bits=4, symmetric=True, block=64)
    with pytest.raises(NumericsError, match="bits32"):
        ref.quantize(torch.randn(2, 64), bits=4, symmetric=True, block=64, pack="bits32")
    with pytest.raises(NumericsError, match="block % 32"):
        ref.xnor_popcount_core(
            torch.zeros(1, 2, dtype=torch.uint32), torch.zeros(1, 2, dtype=torch.uint32), block=16
        )
    with pytest.raises(NumericsError, match="K mismatch"):
        ref.int_matmul_core(torch.zeros(1, 8), torch.zeros(1, 16), 8)


def test_doctests() -> None:
    import doctest

    assert doctest.testmod(ref).failed == 0
