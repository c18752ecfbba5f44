"""x86 VNNI integer-affine GEMM on column panels: one ``vpdpbusd`` per K-quad of 8 columns.

The AVX2 panel core (:class:`rqcompile.targets.tvm.x86.panel._Maddwd`) spends ``vpmaddwd`` + ``vpaddd`` on
16 MACs (a K-pair of 8 columns) and is at that instruction ceiling (0.73-0.78x fbgemm's
int8 on Zen 3). ``vpdpbusd`` (AVX-512 VNNI, and the VEX-encoded AVX-VNNI of Alder Lake and
later) multiplies unsigned by signed bytes and adds each group of 4 products into an int32
lane, accumulator included: 32 MACs in one instruction (64 as zmm) where the AVX2 core
needs two (``vpmaddwd`` + ``vpaddd``) for 16, so the dot-product instructions per MAC fall
4x (ymm) or 8x (zmm). Generated inner loops at M=64, N=K=1024, block 128
(``benchmarks/int8_inner_loops.py``, static): AVX2 51 instructions for 256 MACs, AVX-VNNI
35 for 512, AVX-512 19 for 512. **Measured** on Zen 4 (``benchmarks/epilogue_share.py``,
M = 256, K = N = 1024-4096): the dot-product loop alone at 62-63 MACs per cycle of the 64
zmm ``vpdpbusd`` gives; with the per-block epilogue, whose multiplies share its ports, at
51-52, 95-97% of that bound (benchmarks/README.md, "The same targets on Zen 4").

* **Weights** are packed once, at load (:func:`te_pack_vnni_panels`, lifted out of ``main``
  like the AVX2 panels) into ``wp int8 [N/8nv, K/4, nv, 32]``, byte ``4c + t`` of panel
  ``v`` = ``w[8(g·nv + v) + c, 4q + t]``: one 32-byte load is a K-quad of 8 columns.
  Nibble weights (A4W4, A2W2) are unpacked to int8 at pack time, so every integer-affine
  matmul of a VNNI target runs this core.
* **Activations** are offset to unsigned, ``xu = x + 128`` (``vpdpbusd``'s unsigned
  operand); the epilogue folds the offset into the row origin (``bias_x = 128`` of
  :func:`.epilogue.block_term`, as for the 2:4 kernel). One ``vpbroadcastd`` of a
  row's 4 codes feeds the ``nv`` panels.
* **Exactness**: each product is at most ``255·128``, a K-quad ``4·255·128``; ``vpdpbusd``
  adds into int32 without saturation, and the accumulator restarts every block, so it holds
  ``Σ xu·w`` exactly while ``255·128·B < 2³¹`` (B < 65793; the int32 centring that
  ``kernels.int_matmul_packs`` requires already limits 8-bit blocks to B < 256).
* **Register tile** (:func:`vnni_tile`): AVX-VNNI, ymm: ``mr·nv`` accumulators, ``nv``
  weight vectors and one broadcast in 16 registers (2 x 4 panels: per K-quad 8
  ``vpdpbusd``, 4 loads, 2 broadcasts). AVX-512, 32 registers: zmm ``vpdpbusd`` on two
  adjacent panels at once where ``nv`` is even (the pack interleaves them: one 64-byte
  load), e.g. 4 rows x 4 panels: per K-quad 8 zmm ``vpdpbusd`` (512 MACs), 2 loads, 4
  broadcasts; the epilogue then runs on the same zmm vectors (``_panel_body``'s
  ``lanes=16``: splitting them into ymm halves through memory cost 9-10% on Zen 4).

``isa="avx_vnni_emulated"`` / ``"avx512_vnni_emulated"`` (tests only;
``schedules.kernel_options`` never picks them) build that isa's kernel (same tile, same lane
width) with the one instruction replaced by an exact AVX2 sequence of the same semantics
(zero-/sign-extend to int16, ``vpmaddwd`` into pair sums, add adjacent pairs), so the
packing, the tile walk and the epilogue are checked bit-exact on any AVX2 host
(``tests/targets/tvm/x86/test_vnni.py``); ``vpdpbusd`` itself is compiled there for
both targets, and run where the host has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import T, llvm_version_major, te, tirx
from rqcompile.targets.tvm.kernels.common import dim, scratch
from rqcompile.targets.tvm.kernels.epilogue import f32_row_parts, w_code_max
from rqcompile.targets.tvm.x86.panel import (
    _PMADDWD,
    PANEL,
    _bc,
    _check_group,
    _intrin,
    _nibble,
    _panel_body,
    panel_group,
    te_offset_codes,
    te_quad_panels,
)

__all__ = [
    "VNNI_EMULATED",
    "VNNI_ISAS",
    "VNNI_TARGET_ISAS",
    "te_pack_vnni_panels",
    "vnni_crumb_supported",
    "vnni_panel_matmul",
    "vnni_nibble_supported",
    "vnni_panel_supported",
    "vnni_tile",
]

#: ``isa`` values ``schedules.kernel_options`` picks for targets with ``vpdpbusd``.
VNNI_TARGET_ISAS = ("avx512_vnni", "avx_vnni")
#: tests only, runnable on any AVX2 host: each target isa's kernel (same tile, same lane
#: width) with ``vpdpbusd`` replaced by its exact AVX2 emulation
VNNI_EMULATED = {f"{isa}_emulated": isa for isa in VNNI_TARGET_ISAS}
#: every ``isa`` this kernel takes
VNNI_ISAS = (*VNNI_TARGET_ISAS, *VNNI_EMULATED)
_VPDPBUSD = {8: "llvm.x86.avx512.vpdpbusd.256", 16: "llvm.x86.avx512.vpdpbusd.512"}
_YMM = 16
_MAX_ROWS = 8  # rows per tile at one panel: more only lengthens the unrolled body


def vnni_panel_supported(*, n: int, k: int, block: int) -> bool:
    """Whether the VNNI panel kernel handles this shape: whole panels, whole K-quads per
    block, blocks dividing K, and int32 sums ``Σ (x+128)·w`` (``255·128·B < 2³¹``)."""
    return (n % PANEL == 0 and block > 0 and block % 4 == 0 and k % block == 0
            and 255 * 128 * block < 2**31)  # fmt: skip


def _lanes(isa: str, nv: int) -> int:
    """int32 lanes per ``vpdpbusd``: 16 (zmm, two adjacent panels) with AVX-512 where the
    tile has an even number of panels, else 8 (ymm, one panel)."""
    return 2 * PANEL if VNNI_EMULATED.get(isa, isa) == "avx512_vnni" and nv % 2 == 0 else PANEL


def vnni_tile(m: int, n: int, isa: str) -> tuple[int, int]:
    """``(mr, nv)``: the most rows (up to 8) whose accumulators (``mr·nv`` panels), ``nv``
    panels of weights and one broadcast fit the 16 ymm registers of AVX-VNNI; with the 32 of
    AVX-512 the ``mr·nv`` float32x8 sums of the epilogue fit as well (6 x 4 ymm, the integer
    bound alone, spilled some 50 vectors per block in the generated code). A zmm holds two
    panels. ``nv`` is :func:`.panel_group`, the pack's grouping.
    """
    nv = panel_group(n)
    per_reg = _lanes(isa, nv) // PANEL
    if VNNI_EMULATED.get(isa, isa) == "avx512_vnni":
        mr = (2 * _YMM - nv // per_reg - 1) // (nv // per_reg + nv)
    else:
        mr = (_YMM - nv - 1) // nv
    return min(mr, _MAX_ROWS, m), nv


def vnni_nibble_supported(*, k: int, block: int, w_bits: int) -> bool:
    """Whether the nibble panels take this layer: codes of 4 bits or fewer and an even
    number of K-quads per block (a byte's two quads stay in one block)."""
    return w_bits <= 4 and block % 8 == 0 and k % block == 0


def vnni_crumb_supported(*, k: int, block: int, w_bits: int) -> bool:
    """Whether the 2-bit panels take this layer: codes of 2 bits or fewer and whole groups
    of four K-quads per block (a byte's four quads stay in one block)."""
    return w_bits <= 2 and block % 16 == 0 and k % block == 0


def te_pack_vnni_panels(
    wq: Any, *, w_bits: int, w_signed: bool, name: str, attrs: dict[str, Any],
    nibbles: bool = False, crumbs: bool = False,
) -> Any:  # fmt: skip
    """``wp int8 [N/8nv, K/4, nv, 32]`` (module docstring) from ``wq int8 [N, K]`` or nibble
    bytes ``uint8 [N, K/2]`` (unpacked to their int8 values, no bias). ``nibbles``: nibble
    codes kept two per byte, ``uint8 [N/8nv, K/8, nv, 32]``: byte ``4c + t`` of ``[g, h, v]``
    holds ``w[col, 8h + t]`` in its low nibble and ``w[col, 8h + 4 + t]`` in its high one
    (``col = 8(g·nv + v) + c``), each biased to ``0..15`` (+8 when signed). ``crumbs``:
    2-bit codes four per byte, ``uint8 [N/8nv, K/16, nv, 32]``: byte ``4c + t`` of
    ``[g, h, v]`` holds ``w[col, 16h + 4i + t]`` in bits ``2i, 2i + 1`` (``i = 0..3``), each
    biased to ``0..3`` (+2 when signed); ``wq`` is the nibble bytes of the 2-bit codes."""
    nv = panel_group(int(wq.shape[0]))
    if crumbs:
        return _te_pack_crumbs(wq, w_signed=w_signed, nv=nv, name=name, attrs=attrs)
    if not nibbles:
        return te_quad_panels(wq, w_bits=w_bits, w_signed=w_signed, nv=nv, name=name,
                              attrs=attrs)  # fmt: skip
    n, k = int(wq.shape[0]), 2 * int(wq.shape[1])
    bias = 8 if w_signed else 0

    def code(j: Any, kk: Any) -> Any:
        byte = wq[j, kk // 2]
        v = tirx.Select(kk % 2 == 1, _nibble(byte, True, w_signed), _nibble(byte, False, w_signed))
        return v + bias

    def value(g: Any, h: Any, v: Any, e: Any) -> Any:
        j, t = (g * nv + v) * PANEL + e // 4, e % 4
        return (code(j, 8 * h + t) + code(j, 8 * h + 4 + t) * 16).astype("uint8")

    return te.compute((n // (PANEL * nv), k // 8, nv, 4 * PANEL), value, name=f"{name}_wp4",
                      attrs=attrs)  # fmt: skip


def _te_pack_crumbs(wq: Any, *, w_signed: bool, nv: int, name: str, attrs: dict[str, Any]) -> Any:
    n, k = int(wq.shape[0]), 2 * int(wq.shape[1])
    bias = 2 if w_signed else 0

    def code(j: Any, kk: Any) -> Any:
        byte = wq[j, kk // 2]
        v = tirx.Select(kk % 2 == 1, _nibble(byte, True, w_signed), _nibble(byte, False, w_signed))
        return (v + bias).astype("int32")

    def value(g: Any, h: Any, v: Any, e: Any) -> Any:
        j, t = (g * nv + v) * PANEL + e // 4, e % 4
        word = code(j, 16 * h + t)
        for i in range(1, 4):
            word = word + code(j, 16 * h + 4 * i + t) * (1 << (2 * i))
        return word.astype("uint8")

    return te.compute((n // (PANEL * nv), k // 16, nv, 4 * PANEL), value, name=f"{name}_wp2",
                      attrs=attrs)  # fmt: skip


def _i8_operands() -> bool:
    """LLVM 22 declares ``vpdpbusd``'s byte operands ``<32 x i8>``; earlier LLVMs
    ``<8 x i32>`` (checked: a mismatch fails LLVM's module verifier)."""
    return llvm_version_major() >= 22


def _dot_emulated(acc: Any, xv: Any, w: list[Any], w_unsigned: bool = False) -> Any:
    """``acc + vpdpbusd(xv, w)`` in AVX2, ``w`` as 16-byte parts (4 columns each): per part,
    ``vpmaddwd`` of the int16-widened bytes (``u8`` zero-, ``s8`` sign-extended; pair sums
    ≤ 2·255·128, exact) gives each column's two pair sums in adjacent lanes; the even plus
    the odd lanes of all parts sum each column's quad. ``w_unsigned``: ``vpdpbusd(w, xv)``,
    the weights the unsigned operand and ``x`` the signed one.
    """
    xt, wt = ("int8x16", "uint8x16") if w_unsigned else ("uint8x16", "int8x16")
    x16 = tirx.Cast("int16x16", tirx.reinterpret(xt, _bc(xv, 4)))
    pairs = [_intrin("int32x8", _PMADDWD, x16,
                     tirx.Cast("int16x16", tirx.reinterpret(wt, wh))) for wh in w]  # fmt: skip
    cols = 4 * len(w)
    even = tirx.Shuffle(pairs, [2 * c for c in range(cols)])
    odd = tirx.Shuffle(pairs, [2 * c + 1 for c in range(cols)])
    return acc + even + odd


class _Vpdpbusd:
    """VNNI core: per K-quad, per row one broadcast of its 4 unsigned codes, per panel (ymm)
    or pair of adjacent panels (zmm) one ``vpdpbusd`` (or its emulation) into the row's
    int32 accumulators, which sit panel after panel as :func:`._panel_body` reads them."""

    def __init__(self, xu: Any, wp: Any, block: int, isa: str) -> None:
        self.x, self.wp, self.block, self.isa = xu, wp, block, isa

    nibbles = False

    def _panel(self, g: Any, q: Any, v: Any) -> Any:
        """The 32 int8 weights of K-quad ``q`` of panel ``v`` (8 columns x 4)."""
        return self.wp[g, q, v, tirx.Ramp(0, 1, 4 * PANEL)]

    #: ``vpdpbusd(w, x)``: the weights the unsigned operand, the codes ``x`` the signed one
    #: (:class:`_VpdpbusdMasked`); else ``vpdpbusd(x + 128, w)``
    w_unsigned = False

    def _dot(self, acc: Any, xv: Any, g: Any, q: Any, v: Any, lanes: int) -> Any:
        panels = [self._panel(g, q, v + p) for p in range(lanes // 8)]
        if self.isa in VNNI_EMULATED:
            parts = [tirx.Shuffle([panels[h // 2]], list(range(16 * (h % 2), 16 * (h % 2) + 16)))
                     for h in range(lanes // 4)]  # fmt: skip
            return _dot_emulated(acc, xv, parts, w_unsigned=self.w_unsigned)
        w = panels[0] if len(panels) == 1 else tirx.Shuffle(panels, list(range(4 * lanes)))
        ty = f"int8x{4 * lanes}" if _i8_operands() else f"int32x{lanes}"
        xb, w = tirx.reinterpret(ty, _bc(xv, lanes)), tirx.reinterpret(ty, w)  # no-op if ty
        return _intrin(f"int32x{lanes}", _VPDPBUSD[lanes], acc,
                       *((w, xb) if self.w_unsigned else (xb, w)))  # fmt: skip

    #: K-quads per panel byte (1: int8 codes; 2: nibbles; 4: 2-bit codes) and the one of
    #: them :meth:`_panel` unpacks now
    per_byte, part = 1, 0

    def accumulate(self, acc: Any, row0: Any, rows: int, g: Any, nv: int, b: Any) -> None:
        quads, lanes, per = self.block // 4, _lanes(self.isa, nv), self.per_byte
        step, size = lanes // PANEL, rows * nv * PANEL
        sets = self._sets(size, lanes)
        with T.serial(0, quads // per) as s:
            for part in range(per):  # the quads packed in the same bytes, one after another
                self.part = part
                buf, base = (acc, 0) if part == 0 else (sets, (part - 1) * size)
                q = b * quads + per * s + part
                with T.unroll(0, rows) as ii:
                    xv = tirx.reinterpret("int32", self.x[row0 + ii, tirx.Ramp(q * 4, 1, 4)])
                    with T.unroll(0, nv // step) as vs:
                        v = vs * step
                        idx = tirx.Ramp(base + (ii * nv + v) * PANEL, 1, lanes)
                        T.buffer_store(buf, self._dot(buf[idx], xv, g, q, v, lanes), [idx])
        if sets is not None:
            self._combine(acc, sets, size, lanes)

    def _sets(self, size: int, lanes: int) -> Any:
        """Zeroed accumulators for parts ``1 .. per_byte - 1`` (``size`` int32 each), or
        ``None`` where every part goes to ``acc``."""
        return None

    def _combine(self, acc: Any, sets: Any, size: int, lanes: int) -> None:
        """Add what :meth:`_sets` held to ``acc`` at the block's end."""


class _VpdpbusdMasked(_Vpdpbusd):
    """:class:`_Vpdpbusd` on panels of several codes per byte, unpacked by a mask alone:
    the weights are ``vpdpbusd``'s *unsigned* operand and the activation codes, as they
    are (int8), its signed one. Nibble panels (``bits=4``, :func:`te_pack_vnni_panels` with
    ``nibbles``): one 32-byte load holds two K-quads of 8 columns, quad ``2h`` in the low
    nibbles, ``2h + 1`` in the high ones; 2-bit panels (``bits=2``, ``crumbs``): four,
    quad ``4h + i`` in bits ``2i, 2i + 1``. Codes are biased to ``0..2^bits - 1``.

    Part ``i`` of a byte is ``raw & (mask << bits·i)``: its code times ``2^(bits·i)``, an
    unsigned byte (at most 240), so no shift is needed. Each part accumulates in its own
    registers (set ``i`` holds ``2^(bits·i)·Σ x·w`` exactly) and the block ends with
    ``acc += set_i >> bits·i`` (exact: a multiple of ``2^(bits·i)``). Against shifting
    each part down first (``vpsrlw`` or, where LLVM has GFNI, ``vgf2p8affineqb``, which
    shares ``vpdpbusd``'s ports on Zen 4) this drops 1 (nibbles) or 3 (2-bit) operations per
    byte (benchmarks/README.md, "Session 15": with the stack scratch and the group-major
    column parts, the GEMVs 1.3-1.4x faster). Exact: a part's products are at most
    ``240·128``, its block sums far below 2³¹; the outputs equal the int8 panels' to the
    bit (tests/targets/tvm/x86/test_vnni_nibbles.py).
    """

    nibbles, w_unsigned = True, True

    def __init__(self, x: Any, wp: Any, block: int, isa: str, bits: int) -> None:
        super().__init__(x, wp, block, isa)
        self.bits, self.per_byte = bits, 8 // bits

    def _panel(self, g: Any, q: Any, v: Any) -> Any:
        raw = self.wp[g, q // self.per_byte, v, tirx.Ramp(0, 1, 4 * PANEL)]
        mask = ((1 << self.bits) - 1) << (self.bits * self.part)
        return tirx.bitwise_and(raw, tirx.const(mask, "uint8x32"))

    def _sets(self, size: int, lanes: int) -> Any:
        # nibbles: registers (a stack buffer); 2-bit: a workspace buffer, which measured
        # faster in an A/B: promoted to registers, the six more accumulators of the fully
        # unrolled block spill (benchmarks/README.md, "Session 15")
        n = (self.per_byte - 1) * size
        sets = scratch(n, "int32", stack=self.per_byte == 2)
        zero = _bc(tirx.const(0, "int32"), lanes)
        with T.unroll(0, n // lanes) as t:
            T.buffer_store(sets, zero, [tirx.Ramp(t * lanes, 1, lanes)])
        return sets

    def _combine(self, acc: Any, sets: Any, size: int, lanes: int) -> None:
        with T.unroll(0, size // lanes) as t:
            idx = tirx.Ramp(t * lanes, 1, lanes)
            tot = acc[idx]
            for part in range(1, self.per_byte):
                shift = _bc(tirx.const(self.bits * part, "int32"), lanes)
                tot = tot + tirx.shift_right(sets[tirx.Ramp((part - 1) * size + t * lanes, 1,
                                                           lanes)], shift)  # fmt: skip
            T.buffer_store(acc, tot, [idx])


def vnni_panel_matmul(
    xq: Any, wp: Any, row: Sequence[Any], col_t: Sequence[Any], *, block: int, w_bits: int,
    w_signed: bool, isa: str, name: str, attrs: dict[str, Any], nibbles: bool = False,
    crumbs: bool = False,
) -> Any:  # fmt: skip
    """``Y f32 [M, N]`` from codes ``xq int8 [M, K]``, the panels of :func:`te_pack_vnni_panels`
    (built with the same ``nibbles``) and the epilogue's row parts and group-major column
    parts (:mod:`.epilogue`), passed to :func:`rqcompile.targets.tvm.x86.panel._panel_body`
    as they come.

    Raises:
        NumericsError: an unknown ``isa``, or a shape :func:`vnni_panel_supported` rejects.
    """
    if isa not in VNNI_ISAS:
        raise NumericsError(f"{name}: unknown VNNI isa {isa!r}; use one of {VNNI_ISAS}.")
    m, k = (dim(d) for d in xq.shape)
    nv = int(wp.shape[2])
    n = int(wp.shape[0]) * nv * PANEL  # the column parts come from the same weights' pack
    _check_group(name, wp, panel_group(n), n)  # the tile walks panel_group(n) panels
    per = 16 if crumbs else 8 if nibbles else 4  # K per packed step
    if crumbs and not vnni_crumb_supported(k=k, block=block, w_bits=w_bits):
        raise NumericsError(f"{name}: 2-bit panels need codes of <= 2 bits and blocks of "
                            f"whole 16s of K (block={block}, w_bits={w_bits}).")  # fmt: skip
    if nibbles and not vnni_nibble_supported(k=k, block=block, w_bits=w_bits):
        raise NumericsError(f"{name}: nibble panels need codes of <= 4 bits and blocks of "
                            f"whole K-octets (block={block}, w_bits={w_bits}).")  # fmt: skip
    if not vnni_panel_supported(n=n, k=k, block=block) or int(wp.shape[1]) * per != k:
        raise NumericsError(f"{name}: the VNNI panel kernel needs N % 8 == 0, a block of "
                            f"whole K-quads dividing K and weights packed for K={k} "
                            f"(N={n}, block={block}); repack or use the AVX2 path.")  # fmt: skip
    # a symbolic row count (one build for every shape): the full tile, then a row tail
    mr, _ = vnni_tile(m if isinstance(m, int) else _MAX_ROWS, n, isa)
    masked = crumbs or nibbles  # weights the unsigned operand, x as it is (_VpdpbusdMasked)
    # else x + 128 is vpdpbusd's unsigned operand
    bias_x = 0 if masked else 128
    xu = xq if masked else te_offset_codes(xq, 128, name=name)
    bias_w = (2 if crumbs else 8 if nibbles else 0) if w_signed else 0
    bounds = (128, w_code_max(w_bits, w_signed))
    row = f32_row_parts(row, block=block, f32_bounds=bounds, bias_x=bias_x, bias_w=bias_w,
                        name=name)  # fmt: skip

    def body(in_bufs: list[Any], out_bufs: list[Any]) -> Any:
        x, w, *bufs = in_bufs
        core = (_VpdpbusdMasked(x, w, block, isa, 2 if crumbs else 4) if masked
                else _Vpdpbusd(x, w, block, isa))  # fmt: skip
        return _panel_body(core, bufs, out_bufs[0], block=block, mr=mr, nv=nv, bias_x=bias_x,
                           bias_w=bias_w, f32_bounds=bounds,
                           lanes=_lanes(isa, nv))  # fmt: skip

    return te.extern((m, n), [xu, wp, *row, *col_t], body, name=name, dtype="float32",
                     attrs=attrs)  # fmt: skip
