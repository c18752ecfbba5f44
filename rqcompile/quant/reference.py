"""Integer reference kernels: THE oracle for every integer op of the rq IR. Pure torch.

Every TVM kernel (``rqcompile/targets/tvm/kernels/integer.py``) must match these functions bit for bit
on integer results and within 1e-5 (relative to the output's magnitude) on float outputs.
Integer math runs in int64 and is returned as int32 (an overflow raises); the float epilogue
runs in float64 and is cast to float32 once at the end.

Operand conventions (docs/method.md#integer-deployment). Matmul activations ``x`` are ``[M, K]``, weights
``[N, K]`` (K last), both split into ``nb = K // block`` blocks along K. Each operand carries
per-(row, block) ``scale`` and ``offset`` (``f32 [rows, nb]``) with dequantized value
``scale·code + offset``; weights also carry ``wsum`` ``i32 [N, nb]``, their per-block code
sums (precomputed by convert). Storage layouts are documented in
:mod:`rqcompile.quant.bitpack`.

The integer-affine shortcut splits a quantized matmul into one integer GEMM and two rank-1
(per block) corrections. With ``P[i,j,b] = Σ_{k∈b} xq[i,k]·wq[j,k]`` (the integer core) and
``S_X[i,b] = Σ_{k∈b} xq[i,k]``::

    Y[i,j] = Σ_b  xs[i,b]·ws[j,b]·P[i,j,b]          # integer GEMM, scaled
               +  xc[i,b]·ws[j,b]·wsum[j,b]         # rank-1: activation offset x weight sums
               +  xs[i,b]·S_X[i,b]·wc[j,b]          # rank-1: activation sums x weight offset
               +  block·xc[i,b]·wc[j,b]             # offsets x offsets

which is exactly ``dequant(X) @ dequant(W).T`` because
``Σ_k (xs·xq + xc)(ws·wq + wc)`` expands into these four terms per block.
"""

from __future__ import annotations

import torch

from rqcompile.errors import NumericsError
from rqcompile.quant.bitpack import pack_signs, shift_affine8, unpack_nibbles, unpack_sparse24
from rqcompile.quant.estimators import MINMAX_RUNTIMES
from rqcompile.quant.fake_quant import fake_quant_blocks
from rqcompile.quant.primitives import QFormat, to_blocks

__all__ = [
    "PACKS",
    "affine_epilogue",
    "code_sums",
    "dequantize",
    "int_matmul",
    "int_matmul_core",
    "popcount32",
    "qbmm",
    "quantize",
    "sparse24_core",
    "sparse24_matmul",
    "wo_matmul",
    "xnor_popcount_core",
    "xnor_popcount_matmul",
]

PACKS = ("none", "bits32")
_I32 = (-(2**31), 2**31 - 1)


def _to_i32(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.numel() and (int(t.min()) < _I32[0] or int(t.max()) > _I32[1]):
        raise NumericsError(f"{what}: integer result overflows int32; use a smaller block.")
    return t.to(torch.int32)


def _nb(k: int, block: int, what: str) -> int:
    if block < 1 or k % block:
        raise NumericsError(f"{what}: K={k} is not a multiple of block={block}.")
    return k // block


# -- quantization -------------------------------------------------------------------------


@torch.no_grad()
def quantize(
    x: torch.Tensor,
    *,
    bits: float,
    symmetric: bool,
    block: int,
    estimator: str = "ridge",
    ridge_lambda: float = 0.01,
    pack: str = "none",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x f32 [..., K]`` per block along K into stored codes and ``scale``/``offset``.

    Built on :func:`rqcompile.quant.fake_quant.fake_quant_blocks` (the quantization oracle),
    then converted to the storage layout: 8-bit affine codes are shifted to ``code - 128``
    (:func:`~rqcompile.quant.bitpack.shift_affine8`) and ``pack="bits32"`` packs ±1 codes
    into ``uint32`` words.

    Args:
        x: values, K last.
        bits: 1 (sign), 1.5 (ternary) or 2..8.
        symmetric: linear (no offset) grid and dequantizer when True, else affine.
        block: block size along K.
        estimator: the deployed quantizer: ``"ridge"``, ``"ste"``, ``"gdnsq"`` or a
            min/max-grid name of :data:`~rqcompile.quant.estimators.MINMAX_RUNTIMES`
            (``"ridge_minmax"``, ``"ste_minmax"``).
        ridge_lambda: λ of the ridge fit.
        pack: ``"none"`` (``int8 [..., K]``) or ``"bits32"`` (``uint32 [..., K/32]``, bits=1).

    Returns:
        ``(codes, scale f32 [..., nb], offset f32 [..., nb])``.

    Example:
        >>> x = torch.tensor([[0.9, -0.3, 0.2, 1.4]])
        >>> q, s, o = quantize(x, bits=2, symmetric=False, block=4)
        >>> q.tolist()
        [[2, 0, 1, 3]]
    """
    if pack not in PACKS:
        raise NumericsError(f"quantize: pack={pack!r} is not one of {PACKS}.")
    if pack == "bits32" and bits != 1:
        raise NumericsError("quantize: pack='bits32' needs bits=1 (sign codes).")
    xb = to_blocks(x.float(), block, where="quantize")
    estimator, grid = MINMAX_RUNTIMES.get(estimator, (estimator, None))
    fmt = QFormat(bits, symmetric, grid)
    r = fake_quant_blocks(xb, fmt, estimator=estimator, lam=ridge_lambda)
    codes = r.codes.reshape(x.shape)
    scale = r.scale.squeeze(-1).float().contiguous()
    offset = r.offset.squeeze(-1).float().contiguous()
    if bits == 8 and not symmetric:
        q, scale, offset = shift_affine8(codes, scale, offset)
    else:
        q = codes.to(torch.int8)
    if pack == "bits32":
        q = pack_signs(q)
    return q, scale, offset


def dequantize(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``scale·code + offset`` per block, in float64: ``[..., K]`` from unpacked integer codes.

    Example:
        >>> q, s, o = torch.tensor([[1, 3]]), torch.tensor([[0.5]]), torch.tensor([[1.0]])
        >>> dequantize(q, s, o).tolist()
        [[1.5, 2.5]]
    """
    k, nb = codes.shape[-1], scale.shape[-1]
    if nb < 1 or k % nb:
        raise NumericsError(f"dequantize: K={k} is not split evenly into {nb} blocks.")
    qb = codes.to(torch.float64).reshape(*codes.shape[:-1], nb, k // nb)
    y = scale.double().unsqueeze(-1) * qb + offset.double().unsqueeze(-1)
    return y.reshape(codes.shape)


def code_sums(q: torch.Tensor, block: int) -> torch.Tensor:
    """Per-block code sums ``i32 [..., nb]`` of unpacked integer codes ``[..., K]``."""
    nb = _nb(q.shape[-1], block, "code_sums")
    return _to_i32(q.to(torch.int64).reshape(*q.shape[:-1], nb, block).sum(-1), "code_sums")


# -- integer cores ------------------------------------------------------------------------


def int_matmul_core(xq: torch.Tensor, wq: torch.Tensor, block: int) -> torch.Tensor:
    """``P[..., i, j, b] = Σ_{k∈b} xq[..., i, k]·wq[..., j, k]`` as ``int32 [..., M, N, nb]``.

    Args:
        xq: unpacked integer codes ``[..., M, K]``.
        wq: unpacked integer codes ``[..., N, K]`` (same leading dims as ``xq``, or none).
        block: block size along K.

    Example:
        >>> int_matmul_core(torch.tensor([[2, 0, 1, 3]]), torch.tensor([[2, 0, 3, 1]]), 4).tolist()
        [[[10]]]
    """
    k = xq.shape[-1]
    if wq.shape[-1] != k:
        raise NumericsError(f"int_matmul_core: K mismatch, x has {k}, w has {wq.shape[-1]}.")
    nb = _nb(k, block, "int_matmul_core")
    # Exact integer arithmetic through float64 BLAS: every product and partial sum is an
    # integer of magnitude <= 255 * 255 * K < 2**53, so float64 represents it exactly, and a
    # float64 GEMM is ~100x faster than an int64 einsum. The int64 path checks the bound.
    if 255 * 255 * k >= 2**53:  # pragma: no cover - K beyond 1e11
        xb = xq.to(torch.int64).reshape(*xq.shape[:-1], nb, block)
        wb = wq.to(torch.int64).reshape(*wq.shape[:-1], nb, block)
        return _to_i32(torch.einsum("...mbk,...nbk->...mnb", xb, wb), "int_matmul_core")
    xb = xq.to(torch.float64).reshape(*xq.shape[:-1], nb, block).movedim(-2, -3)  # [..., nb, M, B]
    wb = wq.to(torch.float64).reshape(*wq.shape[:-1], nb, block).movedim(-2, -3)  # [..., nb, N, B]
    p = torch.matmul(xb, wb.transpose(-1, -2)).movedim(-3, -1)  # [..., M, N, nb]
    return _to_i32(p.round().to(torch.int64), "int_matmul_core")


def popcount32(words: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each 32-bit word (any integer dtype holding 32-bit patterns)."""
    v = words.to(torch.int64) & 0xFFFFFFFF
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) & 0xFFFFFFFF) >> 24


def _words_per_block(block: int, what: str) -> int:
    if block % 32:
        raise NumericsError(f"{what}: binary kernels need block % 32 == 0, got {block}.")
    return block // 32


def xnor_popcount_core(xbits: torch.Tensor, wbits: torch.Tensor, *, block: int) -> torch.Tensor:
    """±1 block dot products from sign bits: ``P = 2·popcount(XNOR) - block``, ``i32 [M,N,nb]``.

    Args:
        xbits: ``uint32 [M, K/32]`` (layout of :func:`~rqcompile.quant.bitpack.pack_signs`).
        wbits: ``uint32 [N, K/32]``.
        block: multiple of 32.
    """
    wpb = _words_per_block(block, "xnor_popcount_core")
    nw = xbits.shape[-1]
    nb = _nb(nw * 32, block, "xnor_popcount_core")
    x = xbits.to(torch.int64).unsqueeze(-2)  # [M, 1, W]
    w = wbits.to(torch.int64).unsqueeze(-3)  # [1, N, W]
    pc = popcount32(~(x ^ w))
    pc = pc.reshape(*pc.shape[:-1], nb, wpb).sum(-1)
    return _to_i32(2 * pc - block, "xnor_popcount_core")


def _sign_sums(bits: torch.Tensor, block: int) -> torch.Tensor:
    wpb = _words_per_block(block, "sign sums")
    nb = _nb(bits.shape[-1] * 32, block, "sign sums")
    pc = popcount32(bits).reshape(*bits.shape[:-1], nb, wpb).sum(-1)
    return _to_i32(2 * pc - block, "sign sums")


def sparse24_core(
    xq: torch.Tensor, wvals: torch.Tensor, widx: torch.Tensor, *, block: int
) -> torch.Tensor:
    """2:4 sparse core ``P[i,j,b] = Σ_{g∈b} Σ_t xq[i, 4g + idx(j,g,t)]·vals[j, 2g+t]``.

    Args:
        xq: dense activation codes ``int8 [M, K]``.
        wvals: ``int8 [N, K/2]``; widx: ``uint8 [N, K/8]`` (layout of
            :func:`~rqcompile.quant.bitpack.pack_sparse24`).
        block: multiple of 4 (a block holds whole groups).
    """
    m, k = xq.shape
    if block % 4:
        raise NumericsError(f"sparse24_core: block must be a multiple of 4, got {block}.")
    nb = _nb(k, block, "sparse24_core")
    if wvals.shape[-1] * 2 != k or widx.shape[-1] * 8 != k:
        raise NumericsError(f"sparse24_core: weights do not describe K={k} (vals K/2, idx K/8).")
    # The gather form P = Σ_g Σ_t xq[4g + idx]·val equals the dense product with the scattered
    # weights (pruned slots are code 0), which runs on the exact float64-BLAS integer core
    # instead of materializing an [M, N, K/2] gather.
    del m, nb
    return int_matmul_core(xq, unpack_sparse24(wvals, widx), block)


# -- float epilogue -----------------------------------------------------------------------


def affine_epilogue(
    p: torch.Tensor,
    xs: torch.Tensor,
    xc: torch.Tensor,
    sx: torch.Tensor,
    ws: torch.Tensor,
    wc: torch.Tensor,
    wsum: torch.Tensor,
    *,
    block: int,
) -> torch.Tensor:
    """Per-block float epilogue (module docstring formula), float64 inside, ``f32 [..., M, N]``.

    Args:
        p: integer core ``[..., M, N, nb]``.
        xs, xc: activation scale/offset ``[..., M, nb]``; sx: activation code sums ``[..., M, nb]``.
        ws, wc: weight scale/offset ``[..., N, nb]``; wsum: weight code sums ``[..., N, nb]``.
        block: block size (the number of elements each block sums over).
    """
    f = torch.float64
    xs_, xc_, sx_ = (t.to(f).unsqueeze(-2) for t in (xs, xc, sx))  # [..., M, 1, nb]
    ws_, wc_, wsum_ = (t.to(f).unsqueeze(-3) for t in (ws, wc, wsum))  # [..., 1, N, nb]
    y = xs_ * ws_ * p.to(f) + xc_ * ws_ * wsum_ + xs_ * sx_ * wc_ + float(block) * xc_ * wc_
    return y.sum(-1).to(torch.float32)


# -- full ops -----------------------------------------------------------------------------


def int_matmul(
    xq: torch.Tensor,
    xs: torch.Tensor,
    xc: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    wc: torch.Tensor,
    wsum: torch.Tensor,
    *,
    block: int,
    w_bits: int,
    w_signed: bool,
) -> torch.Tensor:
    """Integer-affine matmul ``f32 [M, N] ≈ dequant(X) @ dequant(W).T``.

    Args:
        xq: ``int8 [M, K]`` activation codes (8-bit affine already shifted by -128).
        xs, xc: ``f32 [M, nb]``.
        wq: ``int8 [N, K]``, or ``uint8 [N, K/2]`` nibbles when ``w_bits <= 4``.
        ws, wc: ``f32 [N, nb]``; wsum: ``i32 [N, nb]``.
        block: block size along K.
        w_bits: weight code width (selects the nibble layout at ≤ 4).
        w_signed: nibbles are two's complement (else zero-extended).
    """
    w = unpack_nibbles(wq, signed=w_signed) if w_bits <= 4 else wq
    p = int_matmul_core(xq, w, block)
    return affine_epilogue(p, xs, xc, code_sums(xq, block), ws, wc, wsum, block=block)


def wo_matmul(
    x: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    wc: torch.Tensor,
    *,
    block: int,
    w_bits: int,
    w_signed: bool,
) -> torch.Tensor:
    """Weight-only matmul ``f32 [M, N] = x @ dequant(W).T``: float activations, integer weight
    codes with per-block ``scale·code + offset`` (the ``W4``/``W8`` presets).

    The dequantized weight and the product are evaluated in float64 and rounded to float32
    once, so a kernel that applies the scale per block (``Σ_b ws·(x·q) + wc·Σx``) differs
    from this only by float32 rounding.

    Args:
        x: ``f32 [M, K]`` activations.
        wq: ``int8 [N, K]``, or ``uint8 [N, K/2]`` nibbles when ``w_bits <= 4`` (element
            ``2t`` in the low nibble), as for :func:`int_matmul`.
        ws, wc: ``f32 [N, nb]`` per-block scale and offset, ``nb = K // block``.
        block: block size along K.
        w_bits: weight code width (selects the nibble layout at ≤ 4).
        w_signed: nibbles are two's complement (else zero-extended).

    Example:
        >>> wq = torch.tensor([[0x31]], dtype=torch.uint8)  # codes 1, 3
        >>> wo_matmul(torch.tensor([[1.0, 2.0]]), wq, torch.tensor([[0.5]]),
        ...           torch.tensor([[1.0]]), block=2, w_bits=4, w_signed=False).tolist()
        [[6.5]]
    """
    w = unpack_nibbles(wq, signed=w_signed) if w_bits <= 4 else wq
    k = w.shape[-1]
    if x.shape[-1] != k:
        raise NumericsError(f"wo_matmul: K mismatch, x has {x.shape[-1]}, w has {k}.")
    _nb(k, block, "wo_matmul")
    if ws.shape[-1] * block != k:
        raise NumericsError(f"wo_matmul: {ws.shape[-1]} blocks of {block} do not cover K={k}.")
    deq = dequantize(w, ws, wc)  # float64 [N, K]
    return (x.double() @ deq.transpose(-1, -2)).to(torch.float32)


def xnor_popcount_matmul(
    xbits: torch.Tensor,
    xs: torch.Tensor,
    xc: torch.Tensor,
    wbits: torch.Tensor,
    ws: torch.Tensor,
    wc: torch.Tensor,
    wsum: torch.Tensor,
    *,
    block: int,
    k: int,
) -> torch.Tensor:
    """A1W1 matmul from sign bits (``uint32 [M, K/32]``, ``[N, K/32]``); ``f32 [M, N]``."""
    if k != xbits.shape[-1] * 32 or k != wbits.shape[-1] * 32:
        raise NumericsError(f"xnor_popcount_matmul: k={k} does not match {xbits.shape[-1]} words.")
    p = xnor_popcount_core(xbits, wbits, block=block)
    return affine_epilogue(p, xs, xc, _sign_sums(xbits, block), ws, wc, wsum, block=block)


def sparse24_matmul(
    xq: torch.Tensor,
    xs: torch.Tensor,
    xc: torch.Tensor,
    wvals: torch.Tensor,
    widx: torch.Tensor,
    ws: torch.Tensor,
    wc: torch.Tensor,
    wsum: torch.Tensor,
    *,
    block: int,
    w_bits: int,
) -> torch.Tensor:
    """2:4-sparse matmul; ``w_bits`` bounds the stored values (checked); ``f32 [M, N]``."""
    top = 1 if w_bits <= 1.5 else 2 ** (int(w_bits) - 1)
    if wvals.numel() and int(wvals.to(torch.int64).abs().max()) > top:
        raise NumericsError(f"sparse24_matmul: values exceed the {w_bits}-bit code range.")
    p = sparse24_core(xq, wvals, widx, block=block)
    return affine_epilogue(p, xs, xc, code_sums(xq, block), ws, wc, wsum, block=block)


def qbmm(
    aq: torch.Tensor,
    as_: torch.Tensor,
    ac: torch.Tensor,
    bq: torch.Tensor,
    bs: torch.Tensor,
    bc: torch.Tensor,
    *,
    block: int,
) -> torch.Tensor:
    """Batched activation x activation ``[B, M, K] x [B, N, K] → f32 [B, M, N]``.

    Both operands are quantized at run time, so both code sums are computed here.
    """
    p = int_matmul_core(aq, bq, block)
    return affine_epilogue(
        p, as_, ac, code_sums(aq, block), bs, bc, code_sums(bq, block), block=block
    )
