"""The integer kernels of the rq IR as upstream MLIR: ``linalg.generic`` on i8/i32 + ``arith``.

Each rq integer op becomes the same three steps as its oracle in
:mod:`rqcompile.quant.reference` (see that module's docstring for the identity):

1. **unpack** the stored weight layout (:mod:`rqcompile.quant.bitpack`) with shifts and masks;
2. **integer core** per block, ``P[m, n, b]`` as ``i32``: a ``linalg.contract`` of i8 × i8
   → i32 over the block's ``k`` (integer-affine; codes sign-extended), a ``linalg.generic``
   summing ``2·ctpop(¬(x ⊕ w)) − 32`` per 32-bit word (XNOR-popcount), or a 2-of-4 gather
   with ``tensor.extract`` (2:4 sparse);
3. **float epilogue**: ``Σ_b (xs·ws)·P + (xc·ws)·wsum + (xs·S_X)·wc + (block·xc)·wc``, in
   ``f64`` in the oracle's term order, then ``arith.truncf`` to ``f32`` once.

``S_X`` (activation code sums per block) is its own reduction. Everything is a structured
``linalg`` op, so any MLIR pipeline can tile, fuse and vectorize it.

Numerics: the integer tensors are exact. The epilogue does the oracle's float64 arithmetic
term for term; only the order of the sum over blocks can differ, which changes a float32
result by at most 1 ulp (and never when the terms are exact dyadic values, as in the tests).
"""

from __future__ import annotations

from collections.abc import Callable

from rqcompile.ir.core import Op
from rqcompile.targets.mlir.text import Writer, tensor_type

__all__ = ["INT_KERNELS", "emit_int_op", "pack_signs"]

I32, F64 = "i32", "f64"


def _shape(op: Op, i: int) -> tuple[int, ...]:
    return tuple(int(d) for d in op.operands[i].type.shape)  # type: ignore[arg-type]


def _blocked(w: Writer, x: str, shape: tuple[int, ...], el: str, parts: tuple[int, ...]) -> str:
    """View the last dim of ``x`` as ``parts`` (e.g. K → (nb, B)) with ``tensor.expand_shape``."""
    lead = len(shape) - 1
    groups = [[i] for i in range(lead)] + [list(range(lead, lead + len(parts)))]
    g = "[" + ", ".join("[" + ", ".join(str(i) for i in grp) + "]" for grp in groups) + "]"
    dst = (*shape[:-1], *parts)
    return w.expand(x, tensor_type(shape, el), tensor_type(dst, el), g, dst)


def _sums(w: Writer, xb: str, shape: tuple[int, ...], el: str, body: list[str], why: str) -> str:
    """Reduce the last dim of the blocked ``[..., nb, B]`` tensor into ``i32 [..., nb]``."""
    r = len(shape)
    out_t = tensor_type(shape[:-1], I32)
    return w.generic(
        [(xb, tensor_type(shape, el), el)],
        (w.zeros(out_t, I32), out_t, I32),
        [tuple(range(r)), tuple(range(r - 1))],
        ["parallel"] * (r - 1) + ["reduction"],
        body,
        comment=why,
    )


def code_sums(w: Writer, xq: str, shape: tuple[int, ...], block: int) -> str:
    """``S[..., b] = Σ_{k∈b} xq[..., k]`` from ``i8`` codes (sign-extended)."""
    nb = shape[-1] // block
    xb = _blocked(w, xq, shape, "i8", (nb, block))
    body = [
        "%b_x = arith.extsi %in0 : i8 to i32",
        "%b_s = arith.addi %out, %b_x : i32",
        "linalg.yield %b_s : i32",
    ]
    return _sums(w, xb, (*shape[:-1], nb, block), "i8", body, "code sums S_X per block")


def sign_sums(w: Writer, bits: str, shape: tuple[int, ...], block: int) -> str:
    """Code sums of ±1 codes from sign words: ``Σ_words 2·ctpop(word) − 32``."""
    wpb = block // 32
    nb = shape[-1] // wpb
    xb = _blocked(w, bits, shape, "i32", (nb, wpb))
    body = [
        "%b_pc = math.ctpop %in0 : i32",
        "%b_two = arith.constant 2 : i32",
        "%b_32 = arith.constant 32 : i32",
        "%b_d = arith.muli %b_pc, %b_two : i32",
        "%b_e = arith.subi %b_d, %b_32 : i32",
        "%b_s = arith.addi %out, %b_e : i32",
        "linalg.yield %b_s : i32",
    ]
    return _sums(
        w, xb, (*shape[:-1], nb, wpb), "i32", body, "±1 code sums S_X = 2·popcount − 32 per word"
    )


def pack_signs(w: Writer, codes: str, shape: tuple[int, ...]) -> str:
    """±1 ``i8`` codes ``[..., K]`` → sign words ``i32 [..., K/32]`` (bit k%32 set ↔ +1)."""
    xb = _blocked(w, codes, shape, "i8", (shape[-1] // 32, 32))
    r = len(shape) + 1
    out_t = tensor_type((*shape[:-1], shape[-1] // 32), I32)
    return w.generic(
        [(xb, tensor_type((*shape[:-1], shape[-1] // 32, 32), "i8"), "i8")],
        (w.zeros(out_t, I32), out_t, I32),
        [tuple(range(r)), tuple(range(r - 1))],
        ["parallel"] * (r - 1) + ["reduction"],
        [
            f"%b_k = linalg.index {r - 1} : index",
            "%b_k32 = arith.index_cast %b_k : index to i32",
            "%b_one = arith.constant 1 : i8",
            "%b_pos = arith.cmpi eq, %in0, %b_one : i8",
            "%b_bit = arith.extui %b_pos : i1 to i32",
            "%b_sh = arith.shli %b_bit, %b_k32 : i32",
            "%b_w = arith.ori %out, %b_sh : i32",
            "linalg.yield %b_w : i32",
        ],
        comment="pack ±1 codes into 32-bit sign words (bit k%32 of word k/32; 1 ↔ +1)",
    )


def unpack_nibbles(w: Writer, packed: str, shape: tuple[int, ...], signed: bool) -> str:
    """``i8 [N, K/2]`` nibble bytes → ``i8 [N, K]`` codes (low nibble first)."""
    n, half = shape
    out3 = tensor_type((n, half, 2), "i8")
    # Signed: move bit 3 to the top and shift back arithmetically (two's complement).
    ext = ["%b_h = arith.shli %b_lo, %b_4 : i8", "%b_c = arith.shrsi %b_h, %b_4 : i8"]
    code = "%b_c" if signed else "%b_lo"
    g = w.generic(
        [(packed, tensor_type(shape, "i8"), "i8")],
        (w.empty(out3), out3, "i8"),
        [(0, 1), (0, 1, 2)],
        ["parallel"] * 3,
        [
            "%b_t = linalg.index 2 : index",
            "%b_ti = arith.index_cast %b_t : index to i8",
            "%b_4 = arith.constant 4 : i8",
            "%b_15 = arith.constant 15 : i8",
            "%b_sh = arith.muli %b_ti, %b_4 : i8",
            "%b_v = arith.shrui %in0, %b_sh : i8",
            "%b_lo = arith.andi %b_v, %b_15 : i8",
            *(ext if signed else []),
            f"linalg.yield {code} : i8",
        ],
        comment=f"unpack 4-bit codes ({'sign' if signed else 'zero'}-extended), low nibble first",
    )
    return w.collapse(g, out3, tensor_type((n, 2 * half), "i8"), "[[0], [1, 2]]")


def _core(
    w: Writer,
    x: tuple[str, tuple[int, ...], str],
    wt: tuple[str, tuple[int, ...], str],
    block: int,
    *,
    lead_w: bool,
    body: list[str] | None,
    why: str,
) -> str:
    """Blocked contraction ``P[..., m, n, b] = Σ_k body(x[..., m, b, k], w[(...,) n, b, k])``.

    ``body=None`` is the plain multiply-accumulate of sign-extended codes, written as the
    named ``linalg.contract`` (i8 × i8 → i32); other bodies (XNOR-popcount) as
    ``linalg.generic``.
    """
    (xs, xshape, xel), (ws, wshape, wel) = x, wt
    *lead, m, kx = xshape
    n, kw = wshape[-2], wshape[-1]
    nb = kx // (block if xel == "i8" else block // 32)  # i32 operands hold 32 codes a word
    inner = kx // nb
    xb = _blocked(w, xs, xshape, xel, (nb, inner))
    wb = _blocked(w, ws, wshape, wel, (nb, kw // nb))
    L = len(lead)
    dm, dn, db, dk = L, L + 1, L + 2, L + 3
    lead_dims = tuple(range(L))
    out_t = tensor_type((*lead, m, n, nb), I32)
    xt = tensor_type((*lead, m, nb, inner), xel)
    wtt = tensor_type((*wshape[:-1], nb, kw // nb), wel)
    maps = [
        (*lead_dims, dm, db, dk),
        ((*lead_dims, dn, db, dk) if lead_w else (dn, db, dk)),
        (*lead_dims, dm, dn, db),
    ]
    init = w.zeros(out_t, I32)
    if body is None:
        return w.contract([(xb, xt), (wb, wtt)], (init, out_t), maps, comment=why)
    return w.generic(
        [(xb, xt, xel), (wb, wtt, wel)],
        (init, out_t, I32),
        maps,
        ["parallel"] * (L + 3) + ["reduction"],
        body,
        comment=why,
    )


_XNOR = [
    "%b_m1 = arith.constant -1 : i32",
    "%b_two = arith.constant 2 : i32",
    "%b_32 = arith.constant 32 : i32",
    "%b_xor = arith.xori %in0, %in1 : i32",
    "%b_xnor = arith.xori %b_xor, %b_m1 : i32",
    "%b_pc = math.ctpop %b_xnor : i32",
    "%b_d = arith.muli %b_pc, %b_two : i32",
    "%b_dot = arith.subi %b_d, %b_32 : i32",
    "%b_s = arith.addi %out, %b_dot : i32",
    "linalg.yield %b_s : i32",
]


def epilogue(
    w: Writer,
    p: str,
    lead: tuple[int, ...],
    m: int,
    n: int,
    nb: int,
    block: int,
    xparams: tuple[str, str, str],
    wparams: tuple[str, str, str],
    *,
    lead_w: bool,
) -> str:
    """``Y = Σ_b (xs·ws)·P + (xc·ws)·wsum + (xs·S_X)·wc + (block·xc)·wc`` in f64 → f32."""
    L = len(lead)
    ld = tuple(range(L))
    dm, dn, db = L, L + 1, L + 2
    xt = tensor_type((*lead, m, nb), "f32")
    wshape = (*lead, n, nb) if lead_w else (n, nb)
    wt = tensor_type(wshape, "f32")
    xs, xc, sx = xparams
    ws, wc, wsum = wparams
    acc_t = tensor_type((*lead, m, n), F64)
    xmap, wmap = (*ld, dm, db), ((*ld, dn, db) if lead_w else (dn, db))
    acc = w.generic(
        [
            (p, tensor_type((*lead, m, n, nb), I32), I32),
            (xs, xt, "f32"),
            (xc, xt, "f32"),
            (sx, tensor_type((*lead, m, nb), I32), I32),
            (ws, wt, "f32"),
            (wc, wt, "f32"),
            (wsum, tensor_type(wshape, I32), I32),
        ],
        (w.zeros(acc_t, F64), acc_t, F64),
        [(*ld, dm, dn, db), xmap, xmap, xmap, wmap, wmap, wmap, (*ld, dm, dn)],
        ["parallel"] * (L + 2) + ["reduction"],
        [
            f"%b_blk = arith.constant {float(block)!r} : f64",
            "%b_p = arith.sitofp %in0 : i32 to f64",
            "%b_xs = arith.extf %in1 : f32 to f64",
            "%b_xc = arith.extf %in2 : f32 to f64",
            "%b_sx = arith.sitofp %in3 : i32 to f64",
            "%b_ws = arith.extf %in4 : f32 to f64",
            "%b_wc = arith.extf %in5 : f32 to f64",
            "%b_wsum = arith.sitofp %in6 : i32 to f64",
            "%b_a = arith.mulf %b_xs, %b_ws : f64",
            "%b_t1 = arith.mulf %b_a, %b_p : f64",
            "%b_b = arith.mulf %b_xc, %b_ws : f64",
            "%b_t2 = arith.mulf %b_b, %b_wsum : f64",
            "%b_c = arith.mulf %b_xs, %b_sx : f64",
            "%b_t3 = arith.mulf %b_c, %b_wc : f64",
            "%b_d = arith.mulf %b_blk, %b_xc : f64",
            "%b_t4 = arith.mulf %b_d, %b_wc : f64",
            "%b_s12 = arith.addf %b_t1, %b_t2 : f64",
            "%b_s123 = arith.addf %b_s12, %b_t3 : f64",
            "%b_y = arith.addf %b_s123, %b_t4 : f64",
            "%b_acc = arith.addf %out, %b_y : f64",
            "linalg.yield %b_acc : f64",
        ],
        comment="affine epilogue: scaled integer GEMM + rank-1 corrections, summed over blocks",
    )
    out_t = tensor_type((*lead, m, n), "f32")
    r = L + 2
    return w.generic(
        [(acc, acc_t, F64)],
        (w.empty(out_t), out_t, "f32"),
        [tuple(range(r)), tuple(range(r))],
        ["parallel"] * r,
        ["%b_y = arith.truncf %in0 : f64 to f32", "linalg.yield %b_y : f32"],
    )


def _int_matmul(w: Writer, a: list[str], op: Op) -> str:
    xq, xs, xc, wq, ws, wc, wsum = a
    block, bits, signed = int(op.attr("block")), int(op.attr("w_bits")), bool(op.attr("w_signed"))  # type: ignore[arg-type]
    xshape, wshape = _shape(op, 0), _shape(op, 3)
    if bits <= 4:
        wq = unpack_nibbles(w, wq, wshape, signed)
        wshape = (wshape[0], wshape[1] * 2)
    p = _core(
        w,
        (xq, xshape, "i8"),
        (wq, wshape, "i8"),
        block,
        lead_w=False,
        body=None,
        why="integer core P[m, n, b] = Σ_k∈b xq·wq (i8 × i8 → i32)",
    )
    sx = code_sums(w, xq, xshape, block)
    m, k = xshape
    return epilogue(
        w, p, (), m, wshape[0], k // block, block, (xs, xc, sx), (ws, wc, wsum), lead_w=False
    )


def _xnor(w: Writer, a: list[str], op: Op) -> str:
    xb, xs, xc, wb, ws, wc, wsum = a
    block = int(op.attr("block"))  # type: ignore[arg-type]
    xshape, wshape = _shape(op, 0), _shape(op, 3)
    p = _core(
        w,
        (xb, xshape, "i32"),
        (wb, wshape, "i32"),
        block,
        lead_w=False,
        body=_XNOR,
        why="XNOR-popcount core P[m, n, b] = Σ_words 2·ctpop(¬(x ⊕ w)) − 32 (±1 dot products)",
    )
    sx = sign_sums(w, xb, xshape, block)
    m, words = xshape
    return epilogue(
        w,
        p,
        (),
        m,
        wshape[0],
        words * 32 // block,
        block,
        (xs, xc, sx),
        (ws, wc, wsum),
        lead_w=False,
    )


def _sparse24(w: Writer, a: list[str], op: Op) -> str:
    from rqcompile.targets.mlir.sparse import sparse24_core

    xq, xs, xc, wv, wi, ws, wc, wsum = a
    block = int(op.attr("block"))  # type: ignore[arg-type]
    xshape, vshape = _shape(op, 0), _shape(op, 3)
    p = sparse24_core(w, xq, xshape, wv, wi, vshape[0], block)
    sx = code_sums(w, xq, xshape, block)
    m, k = xshape
    return epilogue(
        w, p, (), m, vshape[0], k // block, block, (xs, xc, sx), (ws, wc, wsum), lead_w=False
    )


def _qbmm(w: Writer, a: list[str], op: Op) -> str:
    aq, as_, ac, bq, bs, bc = a
    block = int(op.attr("block"))  # type: ignore[arg-type]
    ashape, bshape = _shape(op, 0), _shape(op, 3)
    p = _core(
        w,
        (aq, ashape, "i8"),
        (bq, bshape, "i8"),
        block,
        lead_w=True,
        body=None,
        why="batched integer core P[.., m, n, b] = Σ_k∈b aq·bq (i8 × i8 → i32)",
    )
    sa, sb = code_sums(w, aq, ashape, block), code_sums(w, bq, bshape, block)
    *lead, m, k = ashape
    return epilogue(
        w,
        p,
        tuple(lead),
        m,
        bshape[-2],
        k // block,
        block,
        (as_, ac, sa),
        (bs, bc, sb),
        lead_w=True,
    )


#: rq op name → emitter ``(writer, operand SSA names, op) -> result SSA name``.
INT_KERNELS: dict[str, Callable[[Writer, list[str], Op], str]] = {
    "rq.int_matmul": _int_matmul,
    "rq.xnor_popcount_matmul": _xnor,
    "rq.sparse24_matmul": _sparse24,
    "rq.qbmm": _qbmm,
}


def emit_int_op(w: Writer, operands: list[str], op: Op) -> str:
    """Write ``op`` (a key of :data:`INT_KERNELS`) into ``w``; returns its result's SSA name."""
    return INT_KERNELS[op.name](w, operands, op)
