"""The integer matmuls an IR op computes: core + float epilogue fused (``te_<op>``), and the
packed variants (``te_pack_<op>_weights`` once at bind time, ``te_<op>_packed`` per call) with
the predicates ``pack-weights`` asks (``<op>_packs``); ``te_qbmm`` for activation × activation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import te, tirx
from rqcompile.targets.tvm.kernels.common import (
    STAGE_ATTR,
    Tensor,
    _attrs,
    _pack_attrs,
    _shape,
    _stage,
)
from rqcompile.targets.tvm.kernels.cores import (
    _popc,
    te_code_sums,
    te_int_matmul_core,
    te_sparse24_core,
    te_xnor_popcount_core,
)
from rqcompile.targets.tvm.kernels.epilogue import (
    block_term,
    grouped,
    int_type,
    split_parts,
    te_col_parts,
    te_row_parts,
    transposed,
)
from rqcompile.targets.tvm.x86.amx import (
    AMX_ISAS,
    amx_matmul,
    amx_supported,
    te_pack_amx_panels,
)
from rqcompile.targets.tvm.x86.micro import avx2_int_matmul_core, avx2_supported
from rqcompile.targets.tvm.x86.panel import (
    PANEL,
    avx2_panel_matmul,
    avx2_sparse24_matmul,
    panel_supported,
    sparse24_panel_supported,
    te_pack_panels,
    te_pack_sparse24_panels,
)
from rqcompile.targets.tvm.x86.vnni import (
    VNNI_ISAS,
    te_pack_vnni_panels,
    vnni_crumb_supported,
    vnni_nibble_supported,
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
    "int_matmul_packs",
    "narrow_x_offset",
    "sparse24_dense_packs",
    "sparse24_packs",
    "te_pack_sparse24_dense",
    "te_sparse24_dense_packed",
    "te_int_matmul",
    "te_int_matmul_packed",
    "te_pack_int_matmul_weights",
    "te_pack_sparse24_weights",
    "te_pack_xnor_weights",
    "te_qbmm",
    "te_sparse24_matmul",
    "te_sparse24_matmul_packed",
    "te_xnor_popcount_matmul",
    "te_xnor_popcount_matmul_packed",
    "xnor_packs",
]


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
    :func:`int_matmul_packs` allows, so here, unpacked, they take the AVX2 micro-kernel; so
    do the AMX isas (:data:`rqcompile.targets.tvm.x86.amx.AMX_ISAS`).
    """
    a = _attrs("int_matmul", block, w_bits=int(w_bits), w_signed=bool(w_signed))
    wmax = _w_max(w_bits)
    if (
        isa in ("avx2", *VNNI_ISAS, *AMX_ISAS)
        and len(_shape(xq)) == 2
        and avx2_supported(k=_shape(xq)[-1], block=block, w_bits=w_bits)
    ):
        sx = te_code_sums(xq, block=block, name=f"{name}_sx")
        row = te_row_parts(xs, xc, sx, block=block, name=name)
        col = te_col_parts(ws, wc, wsum, block=block, name=name)
        return avx2_int_matmul_core(xq, wq, row, col, block=block, w_bits=w_bits,
                                    w_signed=w_signed, ity=int_type(block, 128, wmax, bias_w=8),
                                    name=name, attrs={**a, STAGE_ATTR: "micro"})  # fmt: skip
    if isa not in ("generic", "avx2", *VNNI_ISAS, *AMX_ISAS):
        raise NumericsError(f"te_int_matmul: unknown isa {isa!r}; use one of "
                            f"{('generic', 'avx2', *VNNI_ISAS, *AMX_ISAS)}.")  # fmt: skip
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
    xq_shape: Sequence[int], n: int, *, block: int, w_bits: int, isa: str,
    nibbles: bool = False, crumbs: bool = False, max_rows: int | None = None,
    min_rows: int | None = None, **_: Any,
) -> bool:  # fmt: skip
    """Whether ``te_int_matmul`` runs as pack + panel kernel (``x86.panel``, or
    ``x86.vnni`` for the VNNI isas).

    The panel kernel wants its weights packed once (:func:`te_pack_int_matmul_weights`, a
    PrimFunc of its own that the build lifts out of ``main``), so the emitter asks this
    before emitting. It needs the AVX2 or a VNNI path, a 2-D ``xq``, ``N % 8 == 0`` and int32
    epilogue integers (``epilogue.int_type``; the VNNI core multiplies ``x + 128``).
    """
    k = int(xq_shape[-1])
    if max_rows is not None and int(xq_shape[0]) > max_rows:
        return False
    if min_rows is not None and int(xq_shape[0]) < min_rows:
        return False
    if isa in AMX_ISAS:  # tdpbusd: x + 128 against int8 (nibbles unpacked at pack time)
        i32 = int_type(block, 128, _w_max(w_bits), bias_x=128) == "int32"
        return (not nibbles and len(xq_shape) == 2 and i32
                and amx_supported(n=n, k=k, block=block))  # fmt: skip
    if nibbles and not (isa in (*VNNI_ISAS, "avx2")
                        and vnni_nibble_supported(k=k, block=block, w_bits=w_bits)):
        return False
    if crumbs and not (isa in VNNI_ISAS and vnni_crumb_supported(k=k, block=block, w_bits=w_bits)):
        return False
    if isa in VNNI_ISAS:
        i32 = int_type(block, 128, _w_max(w_bits), bias_x=128,
                       bias_w=8 if nibbles or crumbs else 0) == "int32"  # fmt: skip
        fits = vnni_panel_supported(n=n, k=k, block=block)
    else:
        i32 = int_type(block, 128, _w_max(w_bits), bias_w=8) == "int32"
        fits = isa == "avx2" and panel_supported(n=n, k=k, block=block, w_bits=w_bits)
    return len(xq_shape) == 2 and i32 and fits


def _packed_col_parts(ws: Tensor, wc: Tensor, wsum: Tensor, *, block: int,
                      name: str) -> list[Tensor]:  # fmt: skip
    """The epilogue's column parts, computed in the pack (once, when weights are bound), so
    a call of the layer does no per-weight work beyond the GEMM itself.

    Stored narrow: the origin ``cw`` (clamped to ``[-128, 127]``) as int8 and the code sum
    ``S_W`` (at most ``255·B`` in magnitude for 8-bit codes) as int16 where ``B <= 128``, so
    a block of a column carries 15 bytes of parts instead of 20 (``epilogue.block_term``
    widens them; the values, and so every result bit, are the same). At ``M = 1`` the
    kernels are bound by the bytes they read, and these parts were 28% of an A2W2 layer's
    bytes and 55% of an A1W1 layer's."""
    ws_, cw, sw, wa, w0 = te_col_parts(ws, wc, wsum, block=block, name=name, stage="pack")
    attrs = {"rq.stage": "pack"}
    cw8 = te.compute(list(cw.shape), lambda *i: cw(*i).astype("int8"), name=f"{name}_cw8",
                     attrs=attrs)  # fmt: skip
    if 255 * block <= 32767:
        sw = te.compute(list(sw.shape), lambda *i: sw(*i).astype("int16"),
                        name=f"{name}_sw16", attrs=attrs)  # fmt: skip
    return [ws_, cw8, sw, wa, w0]


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
    x_range: tuple[int, int] | None = None, nibbles: bool = False, crumbs: bool = False,
    max_rows: int | None = None, min_rows: int | None = None,
) -> tuple[Tensor, ...]:  # fmt: skip
    """Weight-only prep of the panel kernel: ``(wp, *colT)`` (``te_pack_panels``); K-quad
    panels for the narrow-activation core where :func:`narrow_x_offset` allows it. For the
    VNNI isas (any ``x_range``) ``wp`` is the panel array of
    :func:`rqcompile.targets.tvm.x86.vnni.te_pack_vnni_panels` (two nibble codes per byte
    with ``nibbles``, four 2-bit codes per byte with ``crumbs``); the column parts are the
    same."""
    del max_rows, min_rows  # selection rules of the row (int_matmul_packs), not layouts
    col = _packed_col_parts(ws, wc, wsum, block=block, name=name)
    if isa in AMX_ISAS:
        wp = te_pack_amx_panels(wq, w_bits=w_bits, w_signed=w_signed, name=name,
                                attrs=_pack_attrs(block))  # fmt: skip
        return (wp, *transposed(col, name, _pack_attrs(block)))
    if isa in VNNI_ISAS:
        wp = te_pack_vnni_panels(wq, w_bits=w_bits, w_signed=w_signed, name=name,
                                 attrs=_pack_attrs(block), nibbles=nibbles,
                                 crumbs=crumbs)  # fmt: skip
        return (wp, *grouped(col, int(wp.shape[2]) * PANEL, name, _pack_attrs(block)))
    if nibbles:  # the VNNI nibble layout, read by the AVX2 panels' _Maddubsw4 core
        wp = te_pack_vnni_panels(wq, w_bits=w_bits, w_signed=w_signed, name=name,
                                 attrs=_pack_attrs(block), nibbles=True)  # fmt: skip
        return (wp, *grouped(col, int(wp.shape[2]) * PANEL, name, _pack_attrs(block)))
    quads = narrow_x_offset(x_range, block=block, w_bits=w_bits) is not None
    return te_pack_panels(wq, col, w_bits=w_bits, w_signed=w_signed, name=name,
                          attrs=_pack_attrs(block), quads=quads)  # fmt: skip


def te_int_matmul_packed(
    xq: Tensor, xs: Tensor, xc: Tensor, wp: Tensor, *col_t: Tensor, block: int, w_bits: int,
    w_signed: bool, isa: str = "avx2", name: str = "int_matmul",
    x_range: tuple[int, int] | None = None, nibbles: bool = False, crumbs: bool = False,
    max_rows: int | None = None, min_rows: int | None = None,
) -> Tensor:  # fmt: skip
    """``te_int_matmul`` on packed weights (the outputs of :func:`te_pack_int_matmul_weights`,
    built with the same ``isa`` and ``x_range``): the VNNI panel kernel for the VNNI isas
    (``vpdpbusd`` takes any 8-bit ``x``), else the AVX2 one."""
    a = _attrs("int_matmul", block, w_bits=int(w_bits), w_signed=bool(w_signed))
    sx = te_code_sums(xq, block=block, name=f"{name}_sx")
    row = te_row_parts(xs, xc, sx, block=block, name=name)
    if isa in AMX_ISAS:
        return amx_matmul(xq, wp, row, col_t, block=block, w_bits=w_bits, w_signed=w_signed,
                          isa=isa, name=name, attrs={**a, STAGE_ATTR: "micro"})  # fmt: skip
    if isa in VNNI_ISAS:
        return vnni_panel_matmul(xq, wp, row, col_t, block=block, w_bits=w_bits,
                                 w_signed=w_signed, isa=isa, name=name,
                                 attrs={**a, STAGE_ATTR: "micro"}, nibbles=nibbles,
                                 crumbs=crumbs)  # fmt: skip
    x_offset = narrow_x_offset(x_range, block=block, w_bits=w_bits)
    return avx2_panel_matmul(xq, wp, row, col_t, block=block, w_bits=w_bits,
                             w_signed=w_signed, name=name, attrs={**a, STAGE_ATTR: "micro"},
                             x_offset=x_offset, packed_nibbles=nibbles)  # fmt: skip


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


def sparse24_dense_packs(
    xq_shape: Sequence[int], n: int, *, block: int, w_bits: int, isa: str,
    min_rows: int | None = None, max_rows: int | None = None, nibbles: bool = False,
    **_: Any,
) -> bool:  # fmt: skip
    """Whether ``rq.sparse24_matmul`` runs as a dense integer-affine kernel on the 2:4 codes
    unpacked at load (:func:`te_pack_sparse24_dense`), pruned slots 0:

    * the AMX tiles (``nibbles=False``, ``min_rows``): where a dense ``tdpbusd`` does
      16x16x64 MACs per instruction, skipping half the weights with byte shuffles does not
      pay (the AVX2 2:4 panels ran at 0.24-0.43x of ONNX Runtime's int8 there, the dense
      AMX tiles at 0.55-0.64x);
    * the VNNI nibble panels (``nibbles=True``, ``max_rows``; codes of 4 bits or fewer): at
      small M a layer is bound by the bytes it reads, and the 2:4 panels' int8 codes plus an
      index byte per kept pair read 1.8x the dense nibble panels' bytes (4096², M = 1: 17.9
      vs 9.9 MiB with the epilogue parts);
    * the VNNI int8 panels (``nibbles=False``, ``min_rows``) above that: the zmm
      ``vpdpbusd`` panels with their zmm epilogue ran the dense A4W4 layer 1.2x faster than
      the AVX2 2:4 panels ran the 2:4 one (Zen 4, 4096², M = 256: 24.5 vs 29.4 ms)."""
    if nibbles:
        return (isa in VNNI_ISAS and w_bits <= 4
                and int_matmul_packs(xq_shape, n, block=block, w_bits=4, isa=isa,
                                     nibbles=True, max_rows=max_rows))  # fmt: skip
    return isa in (*AMX_ISAS, *VNNI_ISAS) and int_matmul_packs(
        xq_shape, n, block=block, w_bits=8, isa=isa, min_rows=min_rows)  # fmt: skip


def te_pack_sparse24_dense(
    wvals: Tensor, widx: Tensor, ws: Tensor, wc: Tensor, wsum: Tensor, *, block: int,
    w_bits: int, isa: str, name: str = "pack_weights", min_rows: int | None = None,
    max_rows: int | None = None, nibbles: bool = False,
) -> tuple[Tensor, ...]:  # fmt: skip
    """The 2:4 codes (two kept values and their 2-bit slots per group of 4,
    ``quant.bitpack.pack_sparse24``) unpacked to dense codes (pruned slots 0) and packed as
    :func:`te_pack_int_matmul_weights` packs 8-bit codes for ``isa`` (or, ``nibbles``, 4-bit
    codes two per byte, as ``rq.int_matmul`` stores them); once, at load."""
    del w_bits, min_rows, max_rows
    n, half = (int(d) for d in wvals.shape)

    def code(j: Any, kk: Any) -> Any:
        g, slot = kk // 4, kk % 4
        byte = widx[j, g // 2].astype("int32")
        shift = (g % 2) * 4
        t0 = tirx.bitwise_and(tirx.shift_right(byte, shift), 3)
        t1 = tirx.bitwise_and(tirx.shift_right(byte, shift + 2), 3)
        zero = tirx.const(0, "int8")
        return (tirx.Select(t0 == slot, wvals[j, 2 * g], zero)
                + tirx.Select(t1 == slot, wvals[j, 2 * g + 1], zero))  # fmt: skip

    if nibbles:  # element 2t in the low nibble, 2t + 1 in the high one (bitpack.pack_nibbles)
        def byte(j: Any, t: Any) -> Any:
            lo = tirx.bitwise_and(code(j, 2 * t).astype("int32"), 0xF)
            hi = tirx.bitwise_and(code(j, 2 * t + 1).astype("int32"), 0xF)
            return tirx.bitwise_or(lo, tirx.shift_left(hi, 4)).astype("uint8")

        dense = te.compute((n, half), byte, name=f"{name}_dense4", attrs=_pack_attrs(block))
        return te_pack_int_matmul_weights(dense, ws, wc, wsum, block=block, w_bits=4,
                                          w_signed=True, isa=isa, name=name, nibbles=True)  # fmt: skip
    dense = te.compute((n, 2 * half), code, name=f"{name}_dense", attrs=_pack_attrs(block))
    return te_pack_int_matmul_weights(dense, ws, wc, wsum, block=block, w_bits=8,
                                      w_signed=True, isa=isa, name=name)  # fmt: skip


def te_sparse24_dense_packed(
    xq: Tensor, xs: Tensor, xc: Tensor, wp: Tensor, *col_t: Tensor, block: int, w_bits: int,
    isa: str, name: str = "sparse24_matmul", min_rows: int | None = None,
    max_rows: int | None = None, nibbles: bool = False,
) -> Tensor:  # fmt: skip
    """``te_sparse24_matmul`` on :func:`te_pack_sparse24_dense`'s dense tiles or panels."""
    del w_bits, min_rows, max_rows
    return te_int_matmul_packed(xq, xs, xc, wp, *col_t, block=block,
                                w_bits=4 if nibbles else 8, w_signed=True, isa=isa,
                                name=name, nibbles=nibbles)  # fmt: skip


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


def xnor_packs(xq_shape: Sequence[int], n: int, *, block: int, k: int, isa: str, **_: Any) -> bool:
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
