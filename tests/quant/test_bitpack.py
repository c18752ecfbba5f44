"""Storage layouts of rqcompile.quant.bitpack: exact bit positions and round trips."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rqcompile.errors import NumericsError
from rqcompile.quant.bitpack import (
    pack_nibbles,
    pack_signs,
    pack_sparse24,
    shift_affine8,
    unpack_nibbles,
    unpack_signs,
    unpack_sparse24,
)

_FAST = settings(max_examples=60, deadline=None)


def _signs(rows: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (rows, k), generator=g).to(torch.int8) * 2 - 1


# -- sign bits ----------------------------------------------------------------------------


def test_sign_bit_positions_lsb_first() -> None:
    codes = -torch.ones(64, dtype=torch.int8)
    codes[0] = 1
    codes[31] = 1
    codes[33] = 1
    w = pack_signs(codes)
    assert w.dtype == torch.uint32
    assert w.to(torch.int64).tolist() == [1 + 2**31, 2]


@_FAST
@given(rows=st.integers(1, 4), words=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_sign_round_trip(rows: int, words: int, seed: int) -> None:
    codes = _signs(rows, 32 * words, seed)
    packed = pack_signs(codes)
    assert packed.shape == (rows, words)
    assert torch.equal(unpack_signs(packed), codes)


def test_sign_errors() -> None:
    with pytest.raises(NumericsError, match="multiple of 32"):
        pack_signs(torch.ones(16))
    with pytest.raises(NumericsError, match="-1 or \\+1"):
        pack_signs(torch.zeros(32))


# -- nibbles ------------------------------------------------------------------------------


def test_nibble_positions() -> None:
    packed = pack_nibbles(torch.tensor([3, 5, 15, 0]), signed=False)
    assert packed.tolist() == [0x53, 0x0F]
    packed = pack_nibbles(torch.tensor([-8, 7, -1, -2]), signed=True)
    assert packed.tolist() == [0x78, 0xEF]
    assert unpack_nibbles(packed, signed=True).tolist() == [-8, 7, -1, -2]
    assert unpack_nibbles(packed, signed=False).tolist() == [8, 7, 15, 14]


@_FAST
@given(
    signed=st.booleans(),
    rows=st.integers(1, 3),
    half=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_nibble_round_trip(signed: bool, rows: int, half: int, seed: int) -> None:
    lo, hi = (-8, 7) if signed else (0, 15)
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(lo, hi + 1, (rows, 2 * half), generator=g).to(torch.int8)
    packed = pack_nibbles(codes, signed=signed)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, half)
    assert torch.equal(unpack_nibbles(packed, signed=signed), codes)


def test_nibble_errors() -> None:
    with pytest.raises(NumericsError, match="multiple of 2"):
        pack_nibbles(torch.zeros(3), signed=True)
    with pytest.raises(NumericsError, match="\\[0, 15\\]"):
        pack_nibbles(torch.tensor([16, 0]), signed=False)
    with pytest.raises(NumericsError, match="\\[-8, 7\\]"):
        pack_nibbles(torch.tensor([8, 0]), signed=True)


# -- 2:4 sparse ---------------------------------------------------------------------------


def test_sparse24_layout() -> None:
    codes = torch.tensor([0, 5, 0, -3, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 1, 2])
    vals, idx = pack_sparse24(codes)
    # groups: (1,3) -> 5,-3; none -> (0,1) -> 0,0; (0) + pad 1 -> 7,0; (2,3) -> 1,2
    assert vals.tolist() == [5, -3, 0, 0, 7, 0, 1, 2]
    # byte 0: g0 = 1 | 3<<2, g1 = 0 | 1<<2 (at bit 4) ; byte 1: g2 = 0 | 1<<2, g3 = 2 | 3<<2
    assert idx.tolist() == [(1 | 3 << 2) | (0 | 1 << 2) << 4, (0 | 1 << 2) | (2 | 3 << 2) << 4]
    assert torch.equal(unpack_sparse24(vals, idx), codes.to(torch.int8))


def _sparse_codes(rows: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randint(-7, 8, (rows, k), generator=g)
    keep = torch.rand(rows, k // 4, 4, generator=g).argsort(-1) < 2
    extra_zero = torch.rand(rows, k // 4, 4, generator=g) < 0.3  # fewer than 2 non-zeros too
    mask = (keep & ~extra_zero).reshape(rows, k)
    return (dense * mask).to(torch.int8)


@_FAST
@given(rows=st.integers(1, 4), octets=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_sparse24_round_trip(rows: int, octets: int, seed: int) -> None:
    codes = _sparse_codes(rows, 8 * octets, seed)
    vals, idx = pack_sparse24(codes)
    assert vals.dtype == torch.int8 and vals.shape == (rows, 4 * octets)
    assert idx.dtype == torch.uint8 and idx.shape == (rows, octets)
    assert torch.equal(unpack_sparse24(vals, idx), codes)
    # kept indices ascend within each group
    fields = torch.stack([(idx.to(torch.int64) >> s) & 3 for s in (0, 2, 4, 6)], -1)
    pairs = fields.reshape(rows, -1, 2)
    assert bool((pairs[..., 0] < pairs[..., 1]).all())


def test_sparse24_errors() -> None:
    with pytest.raises(NumericsError, match="more than 2"):
        pack_sparse24(torch.tensor([1, 1, 1, 0, 0, 0, 0, 0]))
    with pytest.raises(NumericsError, match="multiple of 8"):
        pack_sparse24(torch.zeros(4))


# -- 8-bit shift --------------------------------------------------------------------------


def test_shift_affine8_preserves_dequantized_values() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (3, 64), generator=g).float()
    scale = torch.rand(3, 2, generator=g) + 0.01
    offset = torch.randn(3, 2, generator=g)
    q, s, o = shift_affine8(codes, scale, offset)
    assert q.dtype == torch.int8
    assert torch.equal(q.to(torch.int64) + 128, codes.to(torch.int64))
    before = scale.double().repeat_interleave(32, -1) * codes + offset.double().repeat_interleave(
        32, -1
    )
    after = s.double().repeat_interleave(32, -1) * q + o.double().repeat_interleave(32, -1)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    with pytest.raises(NumericsError):
        shift_affine8(torch.tensor([256.0]), scale[:1, :1], offset[:1, :1])


def test_doctests() -> None:
    import doctest

    from rqcompile.quant import bitpack

    assert doctest.testmod(bitpack).failed == 0
