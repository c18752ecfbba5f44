"""TE computes for the integer ops: quantize, integer-affine, XNOR-popcount, 2:4 sparse, qbmm.

Each builder takes TE tensors (placeholders, or the tensors ``relax.BlockBuilder.emit_te``
hands in) and returns TE tensors, so the same code serves standalone kernels
(:func:`prim_func`) and the relax emitter. Semantics are those of
:mod:`rqcompile.quant.reference` (the oracle), storage layouts those of
:mod:`rqcompile.quant.bitpack`; a test checks each against the other:

* integer cores are **bit-exact** (int32 arithmetic, exact for the documented block sizes);
* float epilogues agree to ~1e-6 relative to the output's magnitude (float32 here, float64
  in the reference);
* :func:`te_quantize` codes are bit-exact: the grid is computed with the same float32
  operations as ``primitives.grid`` (binary/ternary means accumulated in float64 and
  rounded once, as there), ``z = (x - b)/s`` in float32, rounding half-to-even with
  ``tirx.nearbyint`` (``round`` would be half-away-from-zero). Ridge statistics are summed
  in float64, so ``scale``/``offset`` are as accurate as torch's float32 means or better.

**Epilogue.** The integer-affine shortcut is one integer GEMM plus rank-1 corrections per
block (METHOD.md §3.2). Every kernel evaluates it with each operand written about its
integer zero point (:mod:`.epilogue`, shared by all of them)::

    I[i,j,b] = P - cx·S_W - cw·(S_X - B·cx)                   (integer, exact)
    Y[i,j]   = Σ_b xs·ws·I + x0·ws·(S_W - B·cw) + w0·(xs·(S_X - B·cx) + B·x0)

which equals the reference's four-term sum exactly in real arithmetic, and in float32 stays
within ~1e-7 of ``Σ|x̂||ŵ|``; operands whose non-zero values never meet give exactly 0, as
the reference does (``test_int_matmul_disjoint_supports_exact_zero``). ``I`` is computed in
int32 where it fits (``epilogue.int_type``: 8-bit codes up to ``B = 32767``), else in int64.

**Finding kernels.** Every output block carries the annotation ``rq.kernel`` (the op kind);
internal blocks carry ``rq.stage`` (``core``, ``sums``, ``prep``, ``grid``, ``codes`` ...).
:func:`prim_func` also sets the PrimFunc attributes ``rq.kernel`` and ``rq.block``;
schedules look for either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.quant.primitives import EPS, QFormat, code_range
from rqcompile.targets.tvm.adapter import te, tirx
from rqcompile.targets.tvm.kernels.epilogue import (
    block_term,
    int_type,
    split_parts,
    te_col_parts,
    te_row_parts,
    transposed,
)
from rqcompile.targets.tvm.x86.micro import avx2_int_matmul_core, avx2_supported
from rqcompile.targets.tvm.x86.panel import (
    avx2_panel_matmul,
    avx2_sparse24_matmul,
    panel_supported,
    sparse24_panel_supported,
    te_pack_panels,
    te_pack_sparse24_panels,
)
from rqcompile.targets.tvm.x86.quant import avx2_quantize, quantize_micro_supported
from rqcompile.targets.tvm.x86.vnni import (
    VNNI_ISAS,
    te_pack_vnni_panels,
    vnni_panel_matmul,
    vnni_panel_supported,
)
from rqcompile.targets.tvm.x86.xnor import XNOR_ISAS, xnor_matmul_micro, xnor_supported
from rqcompile.targets.tvm.x86.xnor_panel import (
    XNOR_PANEL_ISAS,
    te_pack_xnor_panels,
    xnor_panel_matmul,
    xnor_panel_supported,
)

__all__ = [
    "KERNELS",
    "KERNEL_ATTR",
    "STAGE_ATTR",
    "int_matmul_packs",
    "narrow_x_offset",
    "prim_func",
    "sparse24_packs",
    "te_code_sums",
    "te_int_matmul",
    "te_int_matmul_core",
    "te_int_matmul_packed",
    "te_pack_int_matmul_weights",
    "te_pack_sparse24_weights",
    "te_qbmm",
    "te_quantize",
    "te_sparse24_core",
    "te_sparse24_matmul",
    "te_sparse24_matmul_packed",
    "te_xnor_popcount_core",
    "te_xnor_popcount_matmul",
]

KERNEL_ATTR = "rq.kernel"
STAGE_ATTR = "rq.stage"
#: Kernel kinds (values of ``rq.kernel``); the IR op is ``rq.<kind>``.
KERNELS = (
    "quantize",
    "int_matmul_core",
    "int_matmul",
    "xnor_popcount_core",
    "xnor_popcount_matmul",
    "sparse24_core",
    "sparse24_matmul",
    "qbmm",
    "pack_weights",
)
Tensor = Any  # te.Tensor; TVM ships no type stubs


# -- helpers ------------------------------------------------------------------------------


def _f32(v: float) -> Any:
    return tirx.const(v, "float32")


def _f64(v: float) -> Any:
    return tirx.const(v, "float64")


def _shape(t: Tensor) -> list[int]:
    return [int(d) for d in t.shape]


def _nblocks(k: int, block: int, what: str) -> int:
    if block < 1 or k % block:
        raise NumericsError(f"{what}: K={k} is not a multiple of block={block}.")
    return k // block


def _attrs(kernel: str, block: int, **extra: Any) -> dict[str, Any]:
    return {KERNEL_ATTR: kernel, "rq.block": block, **extra}


def _pack_attrs(block: int) -> dict[str, Any]:
    """The stages of a weight-pack PrimFunc (``rq.kernel = "pack_weights"``)."""
    return {**_attrs("pack_weights", block), STAGE_ATTR: "pack"}


def _stage(name: str) -> dict[str, Any]:
    return {STAGE_ATTR: name}


def prim_func(args: Sequence[Tensor], *, name: str, kernel: str, block: int, **attrs: Any) -> Any:
    """``te.create_prim_func(args)`` named ``name`` with attrs ``rq.kernel``/``rq.block``.

    Args:
        args: input placeholders then outputs, in calling order.
        name: the ``global_symbol`` (the function name in the built library).
        kernel: one of :data:`KERNELS`.
        block: block size along K.
        attrs: extra ``rq.*`` attributes (written as given).
    """
    f = te.create_prim_func(list(args))
    return f.with_attrs({"global_symbol": name, KERNEL_ATTR: kernel, "rq.block": block, **attrs})


# -- quantize -----------------------------------------------------------------------------


def te_quantize(
    x: Tensor,
    *,
    bits: float,
    symmetric: bool,
    block: int,
    estimator: str = "ridge",
    ridge_lambda: float = 0.01,
    pack: str = "none",
    isa: str = "generic",
    name: str = "quantize",
) -> tuple[Tensor, Tensor, Tensor]:
    """Dynamic quantization of ``x f32 [..., K]``, the TE twin of ``reference.quantize``.

    ``isa="avx2"`` (chosen by ``schedules.kernel_options`` from the target's features) runs
    affine ridge/ste quantizers (1 bit packed, 2-8 bits) as one micro-kernel
    (:mod:`x86.quant`: same codes, one row per parallel iteration); ``"generic"``
    and every other format use the TE stages below.

    Returns:
        ``(codes, scale f32 [..., nb], offset f32 [..., nb])``; codes are ``int8 [..., K]``
        (8-bit affine stored as ``code - 128``) or ``uint32 [..., K/32]`` for
        ``pack="bits32"``.
    """
    if estimator not in ("ridge", "ste", "gdnsq"):
        raise NumericsError(f"te_quantize: unknown estimator {estimator!r}.")
    if estimator == "gdnsq" and (symmetric or bits == 1.5):
        raise NumericsError("te_quantize: gdnsq quantizes affine operands only.")
    if estimator == "gdnsq" and bits != 1:
        # gdnsq at b >= 2 bits with no clamp is exactly the STE affine quantizer
        # (rqcompile/quant/gdnsq.py): same grid (min, (max-min)/(2^b-1)), codes and dequant.
        estimator = "ste"
    if pack not in ("none", "bits32") or (pack == "bits32" and bits != 1):
        raise NumericsError(
            f"te_quantize: pack={pack!r} needs pack 'none', or 'bits32' with bits=1."
        )
    if isa not in ("generic", "avx2"):
        raise NumericsError(f"te_quantize: unknown isa {isa!r}; use 'generic' or 'avx2'.")
    *lead, k = _shape(x)
    nb = _nblocks(k, block, "te_quantize")
    if isa == "avx2" and quantize_micro_supported(
        bits=bits, symmetric=symmetric, block=block, k=k, estimator=estimator, pack=pack
    ):
        attrs = _attrs("quantize", block, bits=float(bits), symmetric=bool(symmetric))
        return avx2_quantize(x, bits=bits, block=block, estimator=estimator,
                             ridge_lambda=ridge_lambda, pack=pack, name=name,
                             attrs={**attrs, STAGE_ATTR: "micro"})  # fmt: skip
    lo, hi = code_range(QFormat(bits, symmetric))
    bshape = [*lead, nb]
    f64 = "float64"

    def xat(i: Sequence[Any], r: Any) -> Any:  # x at element r of block i = (*lead, b)
        return x[(*i[:-1], i[-1] * block + r)]

    def red(tag: str, stage: str, fn: Callable[..., Any], op: Any = te.sum) -> Tensor:
        r = te.reduce_axis((0, block), name=f"r_{tag}")
        return te.compute(bshape, lambda *i: op(fn(i, r), axis=r), name=f"{name}_{tag}",
                          attrs=_stage(stage))  # fmt: skip

    def per_block(tag: str, stage: str, fn: Callable[..., Any], attrs: Any = None) -> Tensor:
        return te.compute(bshape, fn, name=f"{name}_{tag}", attrs=attrs or _stage(stage))

    # stage 1: the grid (s_f, b_f), with the same float ops as primitives.grid
    b_f: Tensor | None = None
    xsum: Tensor | None = None  # float64 block sums of x, when the grid needs them
    gdnsq1 = estimator == "gdnsq"  # 1 bit: min/max grid, midpoint threshold (quant/gdnsq.py)
    if gdnsq1:
        b_f = red("min", "grid", xat, te.min)
        xmax = red("max", "grid", xat, te.max)
        bmin = b_f
        s_f = per_block("sf", "grid", lambda *i: tirx.max(xmax(*i) - bmin(*i), _f32(EPS)))
    elif bits in (1, 1.5):  # means over kept (non-zero) elements, summed in float64
        kept = red("kept", "grid", lambda i, r: tirx.Select(xat(i, r) != _f32(0), _f64(1), _f64(0)))
        if bits == 1 and not symmetric:
            xsum = red("xsum", "grid", lambda i, r: xat(i, r).astype(f64))
            b_f = per_block("bf", "grid", lambda *i: (xsum(*i) / _f64(block)).astype("float32"))
        bf = b_f
        asum = red(
            "asum",
            "grid",
            lambda i, r: tirx.abs(xat(i, r) - bf(*i) if bf is not None else xat(i, r)).astype(f64),
        )
        s_f = per_block("sf", "grid", lambda *i: tirx.max(
            (asum(*i) / tirx.max(kept(*i), _f64(1))).astype("float32"), _f32(EPS)))  # fmt: skip
    elif symmetric:
        amax = red("amax", "grid", lambda i, r: tirx.abs(xat(i, r)), te.max)
        s_f = per_block("sf", "grid", lambda *i: tirx.max(amax(*i) / _f32(hi), _f32(EPS)))
    else:
        b_f = red("min", "grid", xat, te.min)
        xmax = red("max", "grid", xat, te.max)
        bmin = b_f
        s_f = per_block(
            "sf", "grid", lambda *i: tirx.max((xmax(*i) - bmin(*i)) / _f32(hi), _f32(EPS))
        )

    # stage 2: codes (float32-valued integers), z = (x - b_f) / s_f, round half-to-even
    def code_fn(*idx: Any) -> Any:
        bi = (*idx[:-1], idx[-1] // block)
        z = (x(*idx) - b_f(*bi)) / s_f(*bi) if b_f is not None else x(*idx) / s_f(*bi)
        if gdnsq1:  # code 2·round(z) - 1 with z in [0, 1], rounding half-to-even
            return tirx.Select(tirx.nearbyint(z) >= _f32(1), _f32(1), _f32(-1))
        if bits == 1:
            return tirx.Select(z >= _f32(0), _f32(1), _f32(-1))
        return tirx.min(tirx.max(tirx.nearbyint(z), _f32(lo)), _f32(hi))

    code = te.compute([*lead, k], code_fn, name=f"{name}_code", attrs=_stage("codes"))

    def qat(i: Sequence[Any], r: Any) -> Any:
        return code[(*i[:-1], i[-1] * block + r)]

    # stage 3: the dequantizer (estimators.py); statistics summed in float64, and the
    # exact-zero denominator (λ = 0, constant codes) gives scale 0 as there
    inv_b = _f64(1.0 / block)
    lam = _f64(ridge_lambda)

    def safe_div(num: Any, den: Any) -> Any:
        ok = den != _f64(0)
        return tirx.Select(ok, num / tirx.Select(ok, den, _f64(1)), _f64(0)).astype("float32")

    if gdnsq1:  # ±1 codes: Δ·c + l = (Δ/2)(2c - 1) + (l + Δ/2)
        sf_, bf_ = s_f, b_f
        scale = per_block("scale", "stats", lambda *i: sf_(*i) / _f32(2))
        offset = per_block("offset", "stats", lambda *i: bf_(*i) + sf_(*i) / _f32(2))
    elif estimator == "ste":
        scale = s_f
        offset = b_f if b_f is not None else per_block("zero", "stats", lambda *i: _f32(0))
    elif symmetric:
        qx = red("qx", "stats", lambda i, r: qat(i, r).astype(f64) * xat(i, r).astype(f64))
        qq = red("qq", "stats", lambda i, r: (qat(i, r) * qat(i, r)).astype(f64))
        scale = per_block(
            "scale", "stats", lambda *i: safe_div(qx(*i) * inv_b, qq(*i) * inv_b + lam)
        )
        offset = per_block("offset", "stats", lambda *i: _f32(0))
    else:
        # the same float64 sums as the 1-bit grid's: reuse them (one pass over x fewer)
        xs_ = xsum if xsum is not None else red("xs", "stats", lambda i, r: xat(i, r).astype(f64))
        qs_ = red("qs", "stats", lambda i, r: qat(i, r).astype(f64))

        def dx(i: Sequence[Any], r: Any) -> Any:
            return xat(i, r).astype(f64) - xs_(*i) * inv_b

        def dq(i: Sequence[Any], r: Any) -> Any:
            return qat(i, r).astype(f64) - qs_(*i) * inv_b

        cov = red("cov", "stats", lambda i, r: dx(i, r) * dq(i, r))
        var = red("var", "stats", lambda i, r: dq(i, r) * dq(i, r))
        scale = per_block(
            "scale", "stats", lambda *i: safe_div(cov(*i) * inv_b, var(*i) * inv_b + lam)
        )
        offset = per_block("offset", "stats", lambda *i: (xs_(*i) * inv_b).astype("float32")
                           - scale(*i) * (qs_(*i) * inv_b).astype("float32"))  # fmt: skip

    # stage 4: storage layout
    attrs = _attrs("quantize", block, bits=float(bits), symmetric=bool(symmetric))
    shift = bits == 8 and not symmetric
    if shift:  # METHOD.md §3.2: store code - 128, offset += 128·scale (an exact multiply)
        off = offset
        offset = per_block("offset_s8", "", lambda *i: off(*i) + _f32(128) * scale(*i), attrs)
    if pack == "bits32":
        if k % 32 or block % 32:
            raise NumericsError(f"te_quantize: bits32 packing needs K and block % 32 == 0 (K={k}).")
        t = te.reduce_axis((0, 32), name="bit")
        one, zero = tirx.const(1, "uint32"), tirx.const(0, "uint32")
        codes = te.compute([*lead, k // 32], lambda *i: te.sum(tirx.Select(
            code[(*i[:-1], i[-1] * 32 + t)] > _f32(0), one << t.var.astype("uint32"), zero),
            axis=t), name=f"{name}_bits", attrs=attrs)  # fmt: skip
    else:
        codes = te.compute([*lead, k], lambda *i: (code(*i) - _f32(128) if shift else code(*i))
                           .astype("int8"), name=f"{name}_codes", attrs=attrs)  # fmt: skip
    return codes, scale, offset


# -- integer cores ------------------------------------------------------------------------


def te_code_sums(q: Tensor, *, block: int, name: str = "code_sums") -> Tensor:
    """Per-block sums ``i32 [..., nb]`` of ``int8 [..., K]`` codes."""
    *lead, k = _shape(q)
    nb = _nblocks(k, block, "te_code_sums")
    r = te.reduce_axis((0, block), name="r_sum")
    return te.compute(
        [*lead, nb],
        lambda *i: te.sum(q[(*i[:-1], i[-1] * block + r)].astype("int32"), axis=r),
        name=name,
        attrs=_stage("sums"),
    )


def _nibble(byte: Any, high: bool, signed: bool) -> Any:
    v = byte.astype("int32")
    if signed:  # two's-complement nibble: move it to the top, shift back arithmetically
        return (v << (24 if high else 28)) >> 28
    return (v >> 4) if high else (v & 15)


def te_int_matmul_core(
    xq: Tensor,
    wq: Tensor,
    *,
    block: int,
    w_bits: int = 8,
    w_signed: bool = True,
    name: str = "int_matmul_core",
    attrs: dict[str, Any] | None = None,
) -> Tensor:
    """``P i32 [*batch, M, N, nb]`` from ``xq int8 [*batch, M, K]`` and weights
    ``int8 [*batch, N, K]`` (or ``uint8 [*batch, N, K/2]`` nibbles when ``w_bits <= 4``)."""
    *bt, m, k = _shape(xq)
    nb = _nblocks(k, block, "te_int_matmul_core")
    n = _shape(wq)[-2]
    a = attrs if attrs is not None else _attrs("int_matmul_core", block)
    if w_bits <= 4:
        if block % 2:
            raise NumericsError(f"te_int_matmul_core: nibble weights need an even block ({block}).")
        half = block // 2
        r = te.reduce_axis((0, half), name="r")

        def body(*idx: Any) -> Any:
            *bi, i, j, b = idx
            byte = wq[(*bi, j, b * half + r)]
            x0 = xq[(*bi, i, b * block + 2 * r)].astype("int32")
            x1 = xq[(*bi, i, b * block + 2 * r + 1)].astype("int32")
            return te.sum(
                x0 * _nibble(byte, False, w_signed) + x1 * _nibble(byte, True, w_signed), axis=r
            )

    else:
        r = te.reduce_axis((0, block), name="r")

        def body(*idx: Any) -> Any:
            *bi, i, j, b = idx
            kk = b * block + r
            return te.sum(
                xq[(*bi, i, kk)].astype("int32") * wq[(*bi, j, kk)].astype("int32"), axis=r
            )

    return te.compute([*bt, m, n, nb], body, name=name, attrs={**a, STAGE_ATTR: "core"})


def _popc(v: Any) -> Any:
    return tirx.popcount(v).astype("int32")


def te_xnor_popcount_core(
    xbits: Tensor,
    wbits: Tensor,
    *,
    block: int,
    name: str = "xnor_popcount_core",
    attrs: dict[str, Any] | None = None,
) -> Tensor:
    """``P = 2·popcount(XNOR) - block`` per block, ``i32 [M, N, nb]``, from ``uint32`` words."""
    if block % 32:
        raise NumericsError(f"te_xnor_popcount_core: block must be a multiple of 32 ({block}).")
    m, words = _shape(xbits)
    n = _shape(wbits)[0]
    wpb = block // 32
    nb = _nblocks(words * 32, block, "te_xnor_popcount_core")
    r = te.reduce_axis((0, wpb), name="r")
    pc = te.compute(
        [m, n, nb],
        lambda i, j, b: te.sum(_popc(~(xbits[i, b * wpb + r] ^ wbits[j, b * wpb + r])), axis=r),
        name=f"{name}_pc",
        attrs=_stage("core"),
    )
    a = attrs if attrs is not None else _attrs("xnor_popcount_core", block)
    return te.compute(
        [m, n, nb],
        lambda i, j, b: 2 * pc[i, j, b] - block,
        name=name,
        attrs={**a, STAGE_ATTR: "core_out"},
    )


def te_sparse24_core(
    xq: Tensor,
    wvals: Tensor,
    widx: Tensor,
    *,
    block: int,
    name: str = "sparse24_core",
    attrs: dict[str, Any] | None = None,
) -> Tensor:
    """2:4 sparse core ``i32 [M, N, nb]``: gathers ``xq[i, 4g + idx]`` for each kept slot."""
    m, k = _shape(xq)
    n = _shape(wvals)[0]
    nb = _nblocks(k, block, "te_sparse24_core")
    if block % 4:
        raise NumericsError(f"te_sparse24_core: block must be a multiple of 4 ({block}).")
    half = block // 2
    r = te.reduce_axis((0, half), name="r")

    def body(i: Any, j: Any, b: Any) -> Any:
        s = b * half + r  # kept-slot index: group s >> 1, index field 2·(s & 3) of byte s >> 2
        field = ((widx[j, s >> 2].astype("int32") >> ((s & 3) * 2)) & 3).astype("int32")
        xv = xq[i, (s >> 1) * 4 + field].astype("int32")
        return te.sum(xv * wvals[j, s].astype("int32"), axis=r)

    a = attrs if attrs is not None else _attrs("sparse24_core", block)
    return te.compute([m, n, nb], body, name=name, attrs={**a, STAGE_ATTR: "core"})


# -- epilogue and fused ops ---------------------------------------------------------------


def _w_max(w_bits: int) -> int:
    """Magnitude bound of stored weight codes: nibbles (signed or not) ≤ 15, else int8."""
    return 15 if w_bits <= 4 else 128


def _affine_epilogue(
    p: Tensor,
    xs: Tensor,
    xc: Tensor,
    sx: Tensor,
    ws: Tensor,
    wc: Tensor,
    sw: Tensor,
    *,
    block: int,
    code_max: tuple[int, int],
    name: str,
    attrs: dict[str, Any],
) -> Tensor:
    """Sum over blocks of ``epilogue.block_term``; leading batch dims are shared by all
    operands. ``code_max``: magnitude bounds of the ``x`` and ``w`` codes."""
    *bt, m, n, nb = _shape(p)
    ity = int_type(block, *code_max)
    row = te_row_parts(xs, xc, sx, block=block, name=name)
    col = te_col_parts(ws, wc, sw, block=block, name=name)
    b = te.reduce_axis((0, nb), name="b")

    def body(*idx: Any) -> Any:
        *bi, i, j = idx
        xi, wj = (*bi, i, b), (*bi, j, b)
        term = block_term(p(*bi, i, j, b), [r(*xi) for r in row], [c(*wj) for c in col],
                          block=block, ity=ity)  # fmt: skip
        return te.sum(term, axis=b)

    return te.compute([*bt, m, n], body, name=name, attrs={**attrs, STAGE_ATTR: "epilogue"})


def te_int_matmul(
    xq: Tensor,
    xs: Tensor,
    xc: Tensor,
    wq: Tensor,
    ws: Tensor,
    wc: Tensor,
    wsum: Tensor,
    *,
    block: int,
    w_bits: int,
    w_signed: bool,
    isa: str = "generic",
    name: str = "int_matmul",
) -> Tensor:
    """Fused integer-affine matmul ``f32 [M, N]`` (``reference.int_matmul``).

    ``isa="avx2"`` (chosen by ``schedules.kernel_options`` from the target's features) runs
    core and epilogue as one ``vpmaddwd`` micro-kernel (:mod:`x86.micro`) when the block
    is a multiple of 16; ``"generic"`` is the TE compute any LLVM target can schedule. The
    VNNI isas (:data:`rqcompile.targets.tvm.x86.vnni.VNNI_ISAS`) run the packed VNNI panels where
    :func:`int_matmul_packs` allows, so here, unpacked, they take the AVX2 micro-kernel.
    """
    a = _attrs("int_matmul", block, w_bits=int(w_bits), w_signed=bool(w_signed))
    wmax = _w_max(w_bits)
    if isa in ("avx2", *VNNI_ISAS) and len(_shape(xq)) == 2 and avx2_supported(
        k=_shape(xq)[-1], block=block, w_bits=w_bits
    ):
        sx = te_code_sums(xq, block=block, name=f"{name}_sx")
        row = te_row_parts(xs, xc, sx, block=block, name=name)
        col = te_col_parts(ws, wc, wsum, block=block, name=name)
        return avx2_int_matmul_core(xq, wq, row, col, block=block, w_bits=w_bits,
                                    w_signed=w_signed, ity=int_type(block, 128, wmax, bias_w=8),
                                    name=name, attrs={**a, STAGE_ATTR: "micro"})  # fmt: skip
    if isa not in ("generic", "avx2", *VNNI_ISAS):
        raise NumericsError(f"te_int_matmul: unknown isa {isa!r}; use one of "
                            f"{('generic', 'avx2', *VNNI_ISAS)}.")  # fmt: skip
    p = te_int_matmul_core(
        xq,
        wq,
        block=block,
        w_bits=w_bits,
        w_signed=w_signed,
        name=f"{name}_p",
        attrs=_stage("core"),
    )
    sx = te_code_sums(xq, block=block, name=f"{name}_sx")
    return _affine_epilogue(
        p, xs, xc, sx, ws, wc, wsum, block=block, code_max=(128, wmax), name=name, attrs=a
    )


def int_matmul_packs(
    xq_shape: Sequence[int], n: int, *, block: int, w_bits: int, isa: str, **_: Any
) -> bool:
    """Whether ``te_int_matmul`` runs as pack + panel kernel (``x86.panel``, or
    ``x86.vnni`` for the VNNI isas).

    The panel kernel wants its weights packed once (:func:`te_pack_int_matmul_weights`, a
    PrimFunc of its own that the build lifts out of ``main``), so the emitter asks this
    before emitting. It needs the AVX2 or a VNNI path, a 2-D ``xq``, ``N % 8 == 0`` and int32
    epilogue integers (``epilogue.int_type``; the VNNI core multiplies ``x + 128``).
    """
    k = int(xq_shape[-1])
    if isa in VNNI_ISAS:
        i32 = int_type(block, 128, _w_max(w_bits), bias_x=128) == "int32"
        fits = vnni_panel_supported(n=n, k=k, block=block)
    else:
        i32 = int_type(block, 128, _w_max(w_bits), bias_w=8) == "int32"
        fits = isa == "avx2" and panel_supported(n=n, k=k, block=block, w_bits=w_bits)
    return len(xq_shape) == 2 and i32 and fits


def _packed_col_parts(ws: Tensor, wc: Tensor, wsum: Tensor, *, block: int,
                      name: str) -> list[Tensor]:  # fmt: skip
    """The epilogue's column parts, computed in the pack (once, when weights are bound), so
    a call of the layer does no per-weight work beyond the GEMM itself."""
    return te_col_parts(ws, wc, wsum, block=block, name=name, stage="pack")


def narrow_x_offset(x_range: tuple[int, int] | None, *, block: int, w_bits: int) -> int | None:
    """The offset that maps activation codes in ``x_range`` to ``0..127``, where the panel
    kernel can use it (8-bit weights, whole K-quads per block); else ``None``.

    Codes of 7 bits or fewer fit ``vpmaddubsw``'s unsigned operand without saturating
    (``x86.panel._Maddubs7``); the emitter reads ``x_range`` off the op that
    quantized the activations.
    """
    if x_range is None or w_bits <= 4 or block % 4:
        return None
    lo, hi = x_range
    return -lo if hi - lo <= 127 else None


def te_pack_int_matmul_weights(
    wq: Tensor, ws: Tensor, wc: Tensor, wsum: Tensor, *, block: int, w_bits: int,
    w_signed: bool, isa: str = "avx2", name: str = "pack_weights",
    x_range: tuple[int, int] | None = None,
) -> tuple[Tensor, ...]:  # fmt: skip
    """Weight-only prep of the panel kernel: ``(wp, *colT)`` (``te_pack_panels``); K-quad
    panels for the narrow-activation core where :func:`narrow_x_offset` allows it. For the
    VNNI isas (any ``x_range``) ``wp`` is the panel array of
    :func:`rqcompile.targets.tvm.x86.vnni.te_pack_vnni_panels`; the column parts are the same."""
    col = _packed_col_parts(ws, wc, wsum, block=block, name=name)
    if isa in VNNI_ISAS:
        wp = te_pack_vnni_panels(wq, w_bits=w_bits, w_signed=w_signed, name=name,
                                 attrs=_pack_attrs(block))  # fmt: skip
        return (wp, *transposed(col, name, _pack_attrs(block)))
    quads = narrow_x_offset(x_range, block=block, w_bits=w_bits) is not None
    return te_pack_panels(wq, col, w_bits=w_bits, w_signed=w_signed, name=name,
                          attrs=_pack_attrs(block), quads=quads)  # fmt: skip


def te_int_matmul_packed(
    xq: Tensor, xs: Tensor, xc: Tensor, wp: Tensor, *col_t: Tensor, block: int, w_bits: int,
    w_signed: bool, isa: str = "avx2", name: str = "int_matmul",
    x_range: tuple[int, int] | None = None,
) -> Tensor:  # fmt: skip
    """``te_int_matmul`` on packed weights (the outputs of :func:`te_pack_int_matmul_weights`,
    built with the same ``isa`` and ``x_range``): the VNNI panel kernel for the VNNI isas
    (``vpdpbusd`` takes any 8-bit ``x``), else the AVX2 one."""
    a = _attrs("int_matmul", block, w_bits=int(w_bits), w_signed=bool(w_signed))
    sx = te_code_sums(xq, block=block, name=f"{name}_sx")
    row = te_row_parts(xs, xc, sx, block=block, name=name)
    if isa in VNNI_ISAS:
        return vnni_panel_matmul(xq, wp, row, col_t, block=block, w_bits=w_bits,
                                 w_signed=w_signed, isa=isa, name=name,
                                 attrs={**a, STAGE_ATTR: "micro"})  # fmt: skip
    x_offset = narrow_x_offset(x_range, block=block, w_bits=w_bits)
    return avx2_panel_matmul(xq, wp, row, col_t, block=block, w_bits=w_bits,
                             w_signed=w_signed, name=name, attrs={**a, STAGE_ATTR: "micro"},
                             x_offset=x_offset)  # fmt: skip


def sparse24_packs(
    xq_shape: Sequence[int], n: int, *, block: int, w_bits: int, isa: str, **_: Any
) -> bool:
    """Whether ``rq.sparse24_matmul`` runs as pack + AVX2 ``vpshufb`` kernel."""
    k = int(xq_shape[-1])
    i32 = int_type(block, 128, 15, bias_x=128) == "int32"
    return (isa == "avx2" and len(xq_shape) == 2 and i32
            and sparse24_panel_supported(n=n, k=k, block=block, w_bits=w_bits))  # fmt: skip


def te_pack_sparse24_weights(
    wvals: Tensor, widx: Tensor, ws: Tensor, wc: Tensor, wsum: Tensor, *, block: int,
    w_bits: int, name: str = "pack_weights",
) -> tuple[Tensor, ...]:  # fmt: skip
    """Weight-only prep of the sparse kernel: ``(wv, wc, *colT)``, lifted out of main."""
    col = _packed_col_parts(ws, wc, wsum, block=block, name=name)
    return te_pack_sparse24_panels(wvals, widx, col, name=name, attrs=_pack_attrs(block))


def te_sparse24_matmul_packed(
    xq: Tensor, xs: Tensor, xc: Tensor, wv: Tensor, wctl: Tensor, *col_t: Tensor, block: int,
    w_bits: int, name: str = "sparse24_matmul",
) -> Tensor:  # fmt: skip
    """``te_sparse24_matmul`` on packed weights (:func:`te_pack_sparse24_weights`)."""
    a = _attrs("sparse24_matmul", block, w_bits=int(w_bits))
    sx = te_code_sums(xq, block=block, name=f"{name}_sx")
    row = te_row_parts(xs, xc, sx, block=block, name=name)
    return avx2_sparse24_matmul(xq, wv, wctl, row, col_t, block=block, w_bits=w_bits,
                                name=name, attrs={**a, STAGE_ATTR: "micro"})  # fmt: skip


def _pad_last(t: Tensor, size: int, name: str) -> Tensor:
    """``t`` with its last dim zero-padded to ``size`` (words of sign bits, or blocks).

    Padding words are 0 in both ``x`` and ``w``, so their XOR counts nothing; padding blocks
    have all epilogue parts 0, so their term is ``0·0·I + 0·0 + 0·0 = 0.0`` and ``y`` is
    unchanged to the bit.
    """
    *lead, n = _shape(t)
    zero = tirx.const(0, str(t.dtype))
    return te.compute([*lead, size], lambda *i: tirx.Select(
        i[-1] < n, t[(*i[:-1], tirx.min(i[-1], n - 1))], zero), name=name,
        attrs=_stage("prep"))  # fmt: skip


def _sign_sums(xbits: Tensor, *, block: int, name: str) -> Tensor:
    """``S_X i32 [M, nb]``: per block, the sum of the ±1 codes, ``2·popcount - block``."""
    m, words = _shape(xbits)
    wpb = block // 32
    r = te.reduce_axis((0, wpb), name="r_sx")
    sx_pc = te.compute([m, words // wpb],
                       lambda i, b: te.sum(_popc(xbits[i, b * wpb + r]), axis=r),
                       name=f"{name}_sxpc", attrs=_stage("sums"))  # fmt: skip
    return te.compute([m, words // wpb], lambda i, b: 2 * sx_pc[i, b] - block,
                      name=f"{name}_sx", attrs=_stage("sums"))  # fmt: skip


def xnor_packs(
    xq_shape: Sequence[int], n: int, *, block: int, k: int, isa: str, **_: Any
) -> bool:
    """Whether ``rq.xnor_popcount_matmul`` runs as pack + XNOR panel kernel
    (:mod:`x86.xnor_panel`): an AVX2 or VPOPCNTDQ target, 2-D sign words,
    ``N % 8 == 0`` and whole words per block."""
    return (isa in XNOR_PANEL_ISAS and len(xq_shape) == 2
            and xnor_panel_supported(n=n, k=k, block=block))  # fmt: skip


def te_pack_xnor_weights(
    wbits: Tensor, ws: Tensor, wc: Tensor, wsum: Tensor, *, block: int, k: int, isa: str,
    name: str = "pack_weights",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Weight-only prep of the XNOR panel kernel: ``(wn, *colT)``, lifted out of main."""
    col = _packed_col_parts(ws, wc, wsum, block=block, name=name)
    return te_pack_xnor_panels(wbits, col, isa=isa, name=name, attrs=_pack_attrs(block))


def te_xnor_popcount_matmul_packed(
    xbits: Tensor, xs: Tensor, xc: Tensor, wn: Tensor, *col_t: Tensor, block: int, k: int,
    isa: str, name: str = "xnor_popcount_matmul",
) -> Tensor:  # fmt: skip
    """``te_xnor_popcount_matmul`` on packed weights (:func:`te_pack_xnor_weights`)."""
    a = _attrs("xnor_popcount_matmul", block, k=int(k))
    sx = _sign_sums(xbits, block=block, name=name)
    row = te_row_parts(xs, xc, sx, block=block, name=name)
    return xnor_panel_matmul(xbits, wn, row, col_t, block=block, isa=isa, name=name,
                             attrs={**a, STAGE_ATTR: "micro"})  # fmt: skip


def te_xnor_popcount_matmul(
    xbits: Tensor,
    xs: Tensor,
    xc: Tensor,
    wbits: Tensor,
    ws: Tensor,
    wc: Tensor,
    wsum: Tensor,
    *,
    block: int,
    k: int,
    isa: str = "generic",
    name: str = "xnor_popcount_matmul",
) -> Tensor:
    """Fused A1W1 matmul ``f32 [M, N]`` from sign words (``reference.xnor_popcount_matmul``).

    ``isa`` (chosen by ``schedules.kernel_options`` from the target's features): on
    ``"avx2"`` / ``"avx512_vpopcntdq"`` targets the emitter prefers the packed panel kernel
    (:func:`xnor_packs`, :func:`te_xnor_popcount_matmul_packed`); where it does not fit
    (``N % 8 != 0``) this runs core and epilogue as one XNOR-popcount
    micro-kernel (:mod:`x86.xnor`) when K, zero-padded to whole 256-bit steps
    (:func:`_pad_last`; K=128 in a width-128 model), and the block fit it
    (``xnor_supported``); ``"generic"`` (and any shape the micro-kernel does not take) is
    this TE compute, whose 32-bit ``popcount`` LLVM vectorizes for any target.
    """
    if k != _shape(xbits)[-1] * 32:
        raise NumericsError(
            f"te_xnor_popcount_matmul: k={k} does not match {_shape(xbits)[-1]} words."
        )
    if isa not in ("generic", *XNOR_ISAS):
        raise NumericsError(f"te_xnor_popcount_matmul: unknown isa {isa!r}; use 'generic' "
                            f"or one of {XNOR_ISAS}.")  # fmt: skip
    a = _attrs("xnor_popcount_matmul", block, k=int(k))
    sx = _sign_sums(xbits, block=block, name=name)
    kp = -(-k // 256) * 256  # K padded to whole 256-bit steps of the micro-kernel
    if isa != "generic" and xnor_supported(k=kp, block=block) and kp % block == 0:
        ops = [xbits, wbits, *te_row_parts(xs, xc, sx, block=block, name=name),
               *te_col_parts(ws, wc, wsum, block=block, name=name)]  # fmt: skip
        if kp != k:  # e.g. K=128: zero words, and zero blocks that add exactly 0.0 to y
            ops = [_pad_last(t, kp // (32 if i < 2 else block), f"{name}_pad{i}")
                   for i, t in enumerate(ops)]  # fmt: skip
        row, col = split_parts(ops[2:])
        return xnor_matmul_micro(ops[0], ops[1], row, col, block=block, isa=isa, name=name,
                                 attrs={**a, STAGE_ATTR: "micro"})  # fmt: skip
    p = te_xnor_popcount_core(xbits, wbits, block=block, name=f"{name}_p", attrs={})
    return _affine_epilogue(
        p, xs, xc, sx, ws, wc, wsum, block=block, code_max=(1, 1), name=name, attrs=a
    )


def te_sparse24_matmul(
    xq: Tensor,
    xs: Tensor,
    xc: Tensor,
    wvals: Tensor,
    widx: Tensor,
    ws: Tensor,
    wc: Tensor,
    wsum: Tensor,
    *,
    block: int,
    w_bits: int,
    isa: str = "generic",
    name: str = "sparse24_matmul",
) -> Tensor:
    """Fused 2:4-sparse matmul ``f32 [M, N]`` (``reference.sparse24_matmul``).

    This is the generic TE kernel; on AVX2 targets the emitter uses the packed ``vpshufb``
    kernel instead (:func:`sparse24_packs`), so ``isa`` only names the caller's path.
    """
    a = _attrs("sparse24_matmul", block, w_bits=int(w_bits))
    p = te_sparse24_core(xq, wvals, widx, block=block, name=f"{name}_p", attrs={})
    sx = te_code_sums(xq, block=block, name=f"{name}_sx")
    return _affine_epilogue(
        p, xs, xc, sx, ws, wc, wsum, block=block, code_max=(128, 128), name=name, attrs=a
    )


def te_qbmm(
    aq: Tensor,
    as_: Tensor,
    ac: Tensor,
    bq: Tensor,
    bs: Tensor,
    bc: Tensor,
    *,
    block: int,
    name: str = "qbmm",
) -> Tensor:
    """Batched activation x activation ``[B, M, K] x [B, N, K] → f32 [B, M, N]``."""
    a = _attrs("qbmm", block)
    p = te_int_matmul_core(aq, bq, block=block, name=f"{name}_p", attrs={})
    sa = te_code_sums(aq, block=block, name=f"{name}_sa")
    sb = te_code_sums(bq, block=block, name=f"{name}_sb")
    return _affine_epilogue(
        p, as_, ac, sa, bs, bc, sb, block=block, code_max=(128, 128), name=name, attrs=a
    )
