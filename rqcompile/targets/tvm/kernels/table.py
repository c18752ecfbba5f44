"""The CPU kernel table: every integer kernel of the llvm (and c) targets, one row per ISA.

``select-kernels`` picks a row per op from the target's features (fastest first);
``pack-weights`` picks the weight layout the row offers; the emitter builds what the row
names. This is the one place that maps instruction sets to kernels: adding a kernel is
adding a row. Rows:

======================== ============================== ========================================
row (``rq.kernel``)      requires                       kernel (packed layout where it fits)
======================== ============================== ========================================
quantize.avx2            avx2                           one-pass micro-kernel (x86.quant)
quantize.generic         –                              TE stages
int_matmul.amx           avx2, amx_tile, amx_int8       ``tdpbusd`` tiles (x86.amx), M >= 16
int_matmul.avx512_vnni_w2  (as avx512_vnni)           the same on 2-bit codes four per byte, M <= 16
int_matmul.avx512_vnni_w4  (as avx512_vnni)           the same on 4-bit codes two per byte, M <= 16
int_matmul.avx512_vnni   avx2, avx512_vnni, avx512vl    zmm ``vpdpbusd`` panels, zmm epilogue (x86.vnni)
int_matmul.avx_vnni_w2   (as avx_vnni)                  VEX ``vpdpbusd`` on 2-bit codes four per byte
int_matmul.avx_vnni_w4   (as avx_vnni)                  VEX ``vpdpbusd`` on 4-bit codes two per byte
int_matmul.avx_vnni      avx2, avx_vnni                 VEX ``vpdpbusd`` panels
int_matmul.avx2_w4       avx2                           ``vpmaddubsw``, nibbles two per byte, M<=16
int_matmul.avx2          avx2                           ``vpmaddwd``/``vpmaddubsw`` panels
int_matmul.*_emulated    (tests only: force it)         the VNNI panels (both layouts) with ``vpdpbusd`` emulated
int_matmul.amx_emulated  (tests only: force it)         the AMX tiles with ``tdpbusd`` emulated
int_matmul.generic       –                              TE compute
xnor_popcount_matmul.avx512_vpopcntdq  avx2, avx512_vpopcntdq   zmm XNOR panels, ``vpopcntd`` on two panels
xnor_popcount_matmul.avx2              avx2              XNOR panels, ``vpshufb`` nibble LUT
xnor_popcount_matmul.generic           –                 TE compute (LLVM vectorizes popcount)
sparse24_matmul.amx      avx2, amx_tile, amx_int8       2:4 codes unpacked to dense at load, AMX tiles, M >= 16
sparse24_matmul.avx512_vnni_w4  (as avx512_vnni)       2:4 codes unpacked to dense nibbles at load, VNNI nibble panels, M <= 16
sparse24_matmul.avx_vnni_w4     (as avx_vnni)          the same with VEX ``vpdpbusd``
sparse24_matmul.avx512_vnni  (as avx512_vnni)         2:4 codes unpacked to dense at load, VNNI int8 panels, M >= 16
sparse24_matmul.avx_vnni     (as avx_vnni)            the same with VEX ``vpdpbusd``
sparse24_matmul.avx2     avx2                           ``vpshufb``-gathered 2:4 panels
sparse24_matmul.generic  –                              TE compute
qbmm.generic             –                              TE compute
wo_matmul.avx512         avx2, fma, avx512f             zmm panels of 4-/8-bit codes (x86.wo)
wo_matmul.avx2           avx2, fma                      ymm panels of 4-/8-bit codes
wo_matmul.generic        –                              TE compute (codes unpacked per element)
======================== ============================== ========================================

Where a row's micro-kernel does not take a shape (e.g. ``N % 8 != 0``, K not in whole
words), its builder falls back to the TE compute inside the row; the packed layouts are
chosen by ``pack-weights`` from the predicates here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rqcompile.ir.core import Op
from rqcompile.passes.ir.kernel_table import KernelRow, PackRow, register_kernel_table
from rqcompile.targets.tvm.kernels import integer as K
from rqcompile.targets.tvm.x86.amx import AMX_MIN_ROWS
from rqcompile.targets.tvm.x86.quant import quantize_micro_supported
from rqcompile.targets.tvm.x86.vnni import VNNI_EMULATED

__all__ = ["CPU_KERNELS", "KIND"]

#: The table's name (``select-kernels{table=...}``); the ``c`` target uses it too.
KIND = "llvm"
#: A feature no target has: rows that require it are only chosen when forced.
TEST_ONLY = "rq-test-only"


def _dims(v: Any) -> list[int]:
    return [int(d) for d in v.type.shape]


def _quantize_micro(op: Op) -> bool:
    a = op.attrs_dict
    return quantize_micro_supported(
        bits=float(a["bits"]), symmetric=bool(a["symmetric"]), block=int(a["block"]),
        k=_dims(op.operands[0])[-1], estimator=str(a["estimator"]), pack=str(a["pack"]),
    )  # fmt: skip


def _packs(pred: Callable[..., bool], isa: str, weight: int = 3) -> Callable[[Op, Any], bool]:
    """A pack predicate of ``kernels/integer.py`` (``int_matmul_packs``, ...) on an op's shapes
    (``weight``: the index of the operand whose first dim is N)."""

    def supported(op: Op, x_range: Any) -> bool:
        return bool(pred(_dims(op.operands[0]), _dims(op.operands[weight])[0], isa=isa,
                         **op.attrs_dict))  # fmt: skip

    return supported


def _int_matmul(isa: str, requires: frozenset[str]) -> KernelRow:
    return KernelRow(
        "rq.int_matmul", isa, requires, builder=K.te_int_matmul, options={"isa": isa},
        pack=PackRow("panels", _packs(K.int_matmul_packs, isa), K.te_pack_int_matmul_weights,
                     K.te_int_matmul_packed, uses_x_range=True, options={"isa": isa}),
    )  # fmt: skip


def _wo(isa: str, requires: frozenset[str]) -> KernelRow:
    return KernelRow(
        "rq.wo_matmul", isa, requires, builder=K.te_wo_matmul, options={"isa": isa},
        pack=PackRow("panels", _packs(K.wo_packs, isa, weight=1), K.te_pack_wo_weights,
                     K.te_wo_matmul_packed, options={"isa": isa}),
    )  # fmt: skip


#: The most rows (M) the nibble-panel rows take: they save weight bytes, which bound calls
#: that read every weight once or a few times; larger M is bound by the dot products,
#: which the unpacked panels do with two fewer instructions per 64 MACs.
NIBBLE_MAX_ROWS = 16


def _int_matmul4(isa: str, requires: frozenset[str], bits: int = 4) -> KernelRow:
    """``int_matmul.<isa>_w4``: the VNNI (or AVX2 ``vpmaddubsw``) panels on 4-bit codes kept
    two per byte (A4W4, A2W2 at M <= :data:`NIBBLE_MAX_ROWS`): half the weight bytes of
    ``int_matmul.<isa>``. ``bits=2``: ``int_matmul.<isa>_w2``, the VNNI panels on 2-bit
    codes four per byte (A2W2, ternary weights): a quarter."""
    opts = {"isa": isa, "nibbles" if bits == 4 else "crumbs": True, "max_rows": NIBBLE_MAX_ROWS}
    packs = _packs(K.int_matmul_packs, isa)

    def supported(op: Op) -> bool:
        return packs(op, None) and bool(K.int_matmul_packs(
            _dims(op.operands[0]), _dims(op.operands[3])[0], **{**op.attrs_dict, **opts}))

    base = VNNI_EMULATED.get(isa, isa)
    return KernelRow(
        "rq.int_matmul", f"{base}_w{bits}" + ("_emulated" if isa in VNNI_EMULATED else ""),
        requires, supported, builder=K.te_int_matmul, options={"isa": isa},
        pack=PackRow(f"panels{bits}", lambda op, xr: supported(op),
                     K.te_pack_int_matmul_weights, K.te_int_matmul_packed, options=opts),
    )  # fmt: skip


def _int_matmul_amx(isa: str, requires: frozenset[str]) -> KernelRow:
    """``int_matmul.amx``: ``tdpbusd`` tiles for GEMM-shaped calls (M >= :data:`AMX_MIN_ROWS`);
    smaller M goes on to the VNNI rows (a tile of 16 rows would be mostly padding)."""
    opts = {"isa": isa, "min_rows": AMX_MIN_ROWS}
    packs = _packs(K.int_matmul_packs, isa)

    def supported(op: Op) -> bool:
        return packs(op, None) and int(_dims(op.operands[0])[0]) >= AMX_MIN_ROWS

    return KernelRow(
        "rq.int_matmul", isa, requires, supported, builder=K.te_int_matmul,
        options={"isa": isa},
        pack=PackRow("tiles", lambda op, xr: supported(op), K.te_pack_int_matmul_weights,
                     K.te_int_matmul_packed, options=opts),
    )  # fmt: skip


def _sparse24_dense(name: str, requires: frozenset[str], opts: dict[str, Any], layout: str,
                    supported: Callable[[Op], bool] | None = None) -> KernelRow:  # fmt: skip
    """A ``sparse24_matmul`` row whose 2:4 codes are unpacked to dense codes once, at load
    (``te_pack_sparse24_dense``), and run on a dense ``int_matmul`` layout; ``supported``
    defaults to :func:`kernels.matmul.sparse24_dense_packs` with ``opts``."""

    def packs(op: Op) -> bool:
        return bool(K.sparse24_dense_packs(_dims(op.operands[0]), _dims(op.operands[3])[0],
                                           **{**op.attrs_dict, **opts}))  # fmt: skip

    takes = supported or packs
    return KernelRow(
        "rq.sparse24_matmul", name, requires, takes, builder=K.te_sparse24_matmul,
        pack=PackRow(layout, lambda op, xr: takes(op), K.te_pack_sparse24_dense,
                     K.te_sparse24_dense_packed, options=opts),
    )  # fmt: skip


def _sparse24_amx(isa: str, requires: frozenset[str]) -> KernelRow:
    """``sparse24_matmul.amx``: the 2:4 codes unpacked to dense int8 at load and run on the
    ``tdpbusd`` tiles of ``int_matmul.amx`` (M >= :data:`AMX_MIN_ROWS`): dense AMX beats
    the gathered 2:4 panels there (``kernels.matmul.sparse24_dense_packs``)."""
    packs = _packs(K.sparse24_dense_packs, isa)

    def supported(op: Op) -> bool:
        return packs(op, None) and int(_dims(op.operands[0])[0]) >= AMX_MIN_ROWS

    return _sparse24_dense(isa, requires, {"isa": isa, "min_rows": AMX_MIN_ROWS}, "tiles",
                           supported)  # fmt: skip


def _sparse24_vnni4(isa: str, requires: frozenset[str]) -> KernelRow:
    """``sparse24_matmul.<isa>_w4``: the 2:4 codes unpacked to dense nibbles once, at load,
    and run on the VNNI nibble panels of ``int_matmul.<isa>_w4`` (M <=
    :data:`NIBBLE_MAX_ROWS`, codes of 4 bits or fewer): at small M the layer is bound by
    bytes, and the dense nibble panels read 0.55x the bytes of the 2:4 ``vpshufb`` panels
    (``kernels.matmul.sparse24_dense_packs``)."""
    name = f"{VNNI_EMULATED.get(isa, isa)}_w4" + ("_emulated" if isa in VNNI_EMULATED else "")
    return _sparse24_dense(name, requires,
                           {"isa": isa, "nibbles": True, "max_rows": NIBBLE_MAX_ROWS},
                           "panels4")  # fmt: skip


def _sparse24_vnni(isa: str, requires: frozenset[str]) -> KernelRow:
    """``sparse24_matmul.<isa>``: from :data:`NIBBLE_MAX_ROWS` rows (where the nibble rows,
    listed first, stop), the 2:4 codes unpacked to dense int8 at load and run on the VNNI
    panels of ``int_matmul.<isa>``, as AMX hosts run them on tiles: the layer is bound by its
    dot products there, and the dense ``vpdpbusd`` panels do them faster than the AVX2 2:4
    panels (``kernels.matmul.sparse24_dense_packs``)."""
    return _sparse24_dense(isa, requires, {"isa": isa, "min_rows": NIBBLE_MAX_ROWS}, "panels")


def _xnor(isa: str, requires: frozenset[str]) -> KernelRow:
    return KernelRow(
        "rq.xnor_popcount_matmul", isa, requires, builder=K.te_xnor_popcount_matmul,
        options={"isa": isa},
        pack=PackRow("panels", _packs(K.xnor_packs, isa), K.te_pack_xnor_weights,
                     K.te_xnor_popcount_matmul_packed, options={"isa": isa}),
    )  # fmt: skip


_AVX2 = frozenset({"avx2"})

#: Fastest first per op; each op ends with a row that requires nothing.
CPU_KERNELS: tuple[KernelRow, ...] = (
    KernelRow("rq.quantize", "avx2", _AVX2, _quantize_micro, K.te_quantize, {"isa": "avx2"}),
    KernelRow("rq.quantize", "generic", builder=K.te_quantize),
    _int_matmul_amx("amx", frozenset({"avx2", "amx_tile", "amx_int8"})),
    _int_matmul4("avx512_vnni", frozenset({"avx2", "avx512_vnni", "avx512vl"}), bits=2),
    _int_matmul4("avx512_vnni", frozenset({"avx2", "avx512_vnni", "avx512vl"})),
    _int_matmul("avx512_vnni", frozenset({"avx2", "avx512_vnni", "avx512vl"})),
    _int_matmul4("avx_vnni", frozenset({"avx2", "avx_vnni"}), bits=2),
    _int_matmul4("avx_vnni", frozenset({"avx2", "avx_vnni"})),
    _int_matmul("avx_vnni", frozenset({"avx2", "avx_vnni"})),
    _int_matmul4("avx2", _AVX2),
    _int_matmul("avx2", _AVX2),
    *(_int_matmul4(isa, frozenset({TEST_ONLY}), bits=2) for isa in VNNI_EMULATED),
    *(_int_matmul4(isa, frozenset({TEST_ONLY})) for isa in VNNI_EMULATED),
    *(_int_matmul(isa, frozenset({TEST_ONLY})) for isa in VNNI_EMULATED),
    _int_matmul_amx("amx_emulated", frozenset({TEST_ONLY})),
    KernelRow("rq.int_matmul", "generic", builder=K.te_int_matmul),
    _xnor("avx512_vpopcntdq", frozenset({"avx2", "avx512_vpopcntdq"})),
    _xnor("avx2", _AVX2),
    KernelRow("rq.xnor_popcount_matmul", "generic", builder=K.te_xnor_popcount_matmul),
    _sparse24_amx("amx", frozenset({"avx2", "amx_tile", "amx_int8"})),
    _sparse24_vnni4("avx512_vnni", frozenset({"avx2", "avx512_vnni", "avx512vl"})),
    _sparse24_vnni4("avx_vnni", frozenset({"avx2", "avx_vnni"})),
    *(_sparse24_vnni4(isa, frozenset({TEST_ONLY})) for isa in VNNI_EMULATED),
    _sparse24_vnni("avx512_vnni", frozenset({"avx2", "avx512_vnni", "avx512vl"})),
    _sparse24_vnni("avx_vnni", frozenset({"avx2", "avx_vnni"})),
    *(_sparse24_vnni(isa, frozenset({TEST_ONLY})) for isa in VNNI_EMULATED),
    KernelRow(
        "rq.sparse24_matmul", "avx2", _AVX2, builder=K.te_sparse24_matmul,
        options={"isa": "avx2"},
        pack=PackRow("panels", _packs(K.sparse24_packs, "avx2"), K.te_pack_sparse24_weights,
                     K.te_sparse24_matmul_packed),
    ),
    _sparse24_amx("amx_emulated", frozenset({TEST_ONLY})),
    KernelRow("rq.sparse24_matmul", "generic", builder=K.te_sparse24_matmul),
    KernelRow("rq.qbmm", "generic", builder=K.te_qbmm),
    _wo("avx512", frozenset({"avx2", "fma", "avx512f"})),
    _wo("avx2", frozenset({"avx2", "fma"})),
    KernelRow("rq.wo_matmul", "generic", builder=K.te_wo_matmul),
)

register_kernel_table(KIND, CPU_KERNELS)
