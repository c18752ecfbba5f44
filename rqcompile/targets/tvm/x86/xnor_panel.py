"""x86 XNOR-popcount GEMM on *column panels* (A1W1): the panel layout of :mod:`x86.panel`
applied to sign bits, so the count of every output column lands in its own int32 lane.

The first XNOR micro-kernel (:mod:`x86.xnor`) XORs 256 bits of *one* column per
instruction, then needs a horizontal reduction (``vpsadbw``, two levels of ``vphaddd`` and lane
shuffles) per row and step to bring each column's count into a lane, and its ``2 x 8`` tile of
byte counters does not fit the 16 ymm registers. Here, as in fbgemm-style int8 GEMMs:

* **Weights are packed once** (:func:`te_pack_xnor_panels`, lifted out of ``main`` like the
  integer panels) into ``wn uint32 [N/8nv, K/32, nv, h, 8]``: word ``t`` of the 8 columns of a
  panel side by side. On AVX2 (``h = 2``) each word is pre-split into its low and high nibbles
  (``w & 0x0F0F0F0F``, ``(w >> 4) & 0x0F0F0F0F``), the two ``vpshufb`` indices of the
  nibble-LUT popcount: ``(x ⊕ w) & m = (x & m) ⊕ (w & m)``, so the split costs nothing per
  call. With VPOPCNTDQ (``h = 1``) words stay whole and ``vpopcntd`` counts them.
* **Activations** are split the same way once per call on AVX2 (``xn uint32 [M, K/32, 2]``,
  a tiny prep stage; with VPOPCNTDQ the kernel reads ``xbits`` itself) and each word is
  broadcast to all 8 lanes.
* **zmm with VPOPCNTDQ** (``step = 2``): two adjacent panels, whose packed words lie side
  by side, in one ``vpxord``/``vpopcntd``/``vpaddd`` and one epilogue vector, 6 rows a tile
  (:data:`XNOR_ZMM_ROWS`). On Zen 4 a zmm operation takes two 256-bit ports, so the port
  work is the ymm kernel's, but the instructions are half: that kernel issued ~300 per
  block and tile and was bound by issue as much as by ports (4096²×256: 10.1-10.5 → 7.7-8.3
  ms; benchmarks/README.md, "The same targets on Zen 4").
* **Inner step** (one 32-bit word of K, 8 columns, per row and panel): AVX2
  ``cnt += pshufb(lut, xlo ⊕ wlo) + pshufb(lut, xhi ⊕ whi)``: 6 instructions for 256 binary
  MACs, with byte counters (at most 8 per word) summed over up to 31 words, then widened by
  ``vpmaddubsw`` + ``vpmaddwd`` with ones into the column's int32 lane; VPOPCNTDQ
  ``cnt += vpopcntd(x ⊕ w)`` in int32 lanes.
* **Epilogue**: ``P = B - 2·popcount(x ⊕ w)`` per block goes straight into the block term
  of :mod:`.epilogue`, through the body shared with the integer panels
  (:func:`rqcompile.targets.tvm.x86.panel._panel_body`).

Bit-exact against the reference (``tests/targets/tvm/x86/test_xnor_panel.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import T, te, tirx
from rqcompile.targets.tvm.kernels.common import dim
from rqcompile.targets.tvm.kernels.epilogue import col_count, f32_row_parts, grouped
from rqcompile.targets.tvm.x86.micro import _divisor, _intrin, _lanes
from rqcompile.targets.tvm.x86.panel import (
    _PSHUFB,
    PANEL,
    _bc,
    _check_group,
    _panel_body,
)
from rqcompile.targets.tvm.x86.xnor import byte_counts_to_dwords, nibble_lut

__all__ = [
    "XNOR_PANEL_ISAS",
    "te_pack_xnor_panels",
    "xnor_panel_matmul",
    "xnor_panel_supported",
    "xnor_panel_tile",
]

#: ``isa`` values this kernel takes (``schedules.kernel_options`` picks one per target).
XNOR_PANEL_ISAS = ("avx2", "avx512_vpopcntdq")
_NIBBLES = 0x0F0F0F0F
_BYTE_WORDS = 31  # words one uint8 counter can sum: 31·8 = 248 < 256
#: zmm (VPOPCNTDQ) tile rows, two panels wide (:func:`xnor_panel_tile`). Zen 4, A1W1
#: 4096²×256, one process: 4 rows 8.2-8.3 ms, 6 rows 7.7-7.8, 8 rows 8.0-8.4; four panels
#: wide (two zmm a row) at 3-5 rows 8.2-9.3 (ymm, 4 x 2 panels: 10.1-10.5)
XNOR_ZMM_ROWS = 6


def xnor_panel_supported(*, n: int, k: int, block: int) -> bool:
    """Whether the panel kernel handles this shape: whole panels, whole words per block, and
    an int32 epilogue (``2·B² < 2³¹``)."""
    return (n % PANEL == 0 and block % 32 == 0 and block > 0 and k % block == 0
            and 2 * block * block < 2**31)  # fmt: skip


def xnor_panel_tile(m: int, n: int, isa: str = "avx2") -> tuple[int, int]:
    """``(mr, nv)``: ``mr·nv`` byte counters, the row's two broadcasts, the LUT and the
    weights (loaded as operands) fit the 16 ymm registers. With VPOPCNTDQ (zmm, two panels
    a vector, 32 registers): ``mr x nv`` panels of counters and of float sums, the row's
    broadcast and the weights (:data:`XNOR_ZMM_ROWS` rows)."""
    if isa == "avx512_vpopcntdq" and (n // PANEL) % 2 == 0:
        nv, rows = 2, XNOR_ZMM_ROWS
    else:
        nv = next(v for v in (2, 1) if (n // PANEL) % v == 0)
        rows = {2: 4, 1: 6}[nv]  # a symbolic m (one build for every shape): the full tile
    return (min(rows, m) if isinstance(m, int) else rows), nv


def _halves(isa: str) -> int:
    return 2 if isa == "avx2" else 1


def _split(word: Any, h: Any, halves: int) -> Any:
    """Nibble half ``h`` of each byte of ``word`` (or the word itself with one half)."""
    if halves == 1:
        return word
    return (word >> (h * 4).astype("uint32")) & tirx.const(_NIBBLES, "uint32")


def te_pack_xnor_panels(
    wbits: Any, col: Sequence[Any], *, isa: str, name: str, attrs: dict[str, Any]
) -> tuple[Any, ...]:
    """Weight-only prep: ``(wn, *colG)``; ``wn uint32 [N/8nv, K/32, nv, h, 8]`` and the
    epilogue's column parts group-major, ``[N/8nv, nb, 8nv]`` (``epilogue.grouped``)."""
    n, words = (int(d) for d in wbits.shape)
    nv, halves = xnor_panel_tile(1, n, isa)[1], _halves(isa)
    wn = te.compute((n // (PANEL * nv), words, nv, halves, PANEL),
                    lambda g, t, v, h, c: _split(wbits[(g * nv + v) * PANEL + c, t], h, halves),
                    name=f"{name}_wn", attrs=attrs)  # fmt: skip
    return (wn, *grouped(col, nv * PANEL, name, attrs))


class _XnorCounts:
    """Per block: ``acc += B - 2·popcount(x ⊕ w)`` per (row, panel), 8 columns per lane (with
    VPOPCNTDQ ``acc += popcount(x ⊕ w)``, and the epilogue takes ``P = B - 2·acc``:
    ``p_affine``).
    ``step``: panels per vector, 1 (ymm) or 2 (zmm with VPOPCNTDQ: two adjacent panels,
    whose packed words lie side by side, in one ``vpopcntd``)."""

    #: Rows are walked in chunks of this much ``x``: at M=512, K=4096 all of ``x`` (512 KiB
    #: split) no longer stays in L2 while the groups stream past it (measured ~1.1-1.3x).
    chunk_bytes = 128 * 1024

    def __init__(self, xn: Any, wn: Any, block: int, isa: str, step: int = 1) -> None:
        self.x, self.wn, self.block, self.isa, self.step = xn, wn, block, isa, step
        # VPOPCNTDQ: acc holds the mismatches c and block_term folds P = B - 2c into its
        # FMAs (two integer ops fewer per vector: 1024²×256 469 → 445 µs on Zen 4); the
        # AVX2 kernel keeps P in integers (folded, it measured 2-8% slower there)
        self.p_affine = (block, -2) if isa != "avx2" else None
        # VPOPCNTDQ (zmm): the epilogue adds each block's three products to the running sum
        # one by one (``block_term(into=...)``, three FMAs) instead of adding their sum to it,
        # one vector op fewer (Zen 4, 1 thread: 3-5%, A1W1 4096² M = 256 7.92 → 7.71 ms);
        # built for AVX2 (16 ymm registers) it is 1.3-1.6x slower (the running sums stay
        # live across the products), so that kernel adds the sum
        # (benchmarks/xnor_sum_ab.py, results/xnor_sum_ab_2026-12-07_znver{4,3}.md)
        self.fused_sum = isa != "avx2"
        # AVX2 (16 ymm registers): a tile of more than one row keeps its accumulators in a
        # workspace buffer (_panel_body), which measured 2-3% faster than registers that
        # LLVM spills (built for znver3, on Zen 4, M = 64: 1024² 244 → 237 µs, 4096²
        # 4.23 → 4.14 ms); one row keeps registers (results/panel_kernels_*_znver3_ab.md)
        self.spills = isa == "avx2"
        self.words = block // 32
        self.lut = nibble_lut()
        avx2 = isa == "avx2"
        self.group = _divisor(self.words, _BYTE_WORDS) if avx2 else self.words
        self.cnt_dtype, self.cnt_lanes = ("uint8", 32) if avx2 else ("int32", PANEL * step)

    def _word(self, row: Any, g: Any, t: Any, v: Any) -> Any:
        """Counts of one word of ``8·step`` columns: bytes (AVX2) or int32 lanes (VPOPCNTDQ)."""
        if self.isa != "avx2":  # x is xbits [M, K/32] itself (te_split_words)
            lanes = PANEL * self.step
            panels = [self.wn[g, t, v + p, 0, _lanes(0, PANEL)] for p in range(self.step)]
            w = panels[0] if self.step == 1 else tirx.Shuffle(panels, list(range(lanes)))
            words = _bc(self.x[row, t], lanes) ^ w
            return _intrin(f"int32x{lanes}", "llvm.ctpop",
                           tirx.reinterpret(f"int32x{lanes}", words))  # fmt: skip
        total = None
        for h in (0, 1):
            x = _bc(self.x[row, t, h])
            idx = tirx.reinterpret("uint8x32", x ^ self.wn[g, t, v, h, _lanes(0, 8)])
            c = _intrin("uint8x32", _PSHUFB, self.lut, idx)
            total = c if total is None else total + c
        return total

    def _widen(self, cnt: Any) -> Any:
        return byte_counts_to_dwords(cnt) if self.isa == "avx2" else cnt

    def accumulate(self, acc: Any, row0: Any, rows: int, g: Any, nv: int, b: Any) -> None:
        step, lanes = self.step, self.cnt_lanes
        per_row, width = nv // step, PANEL * step  # vectors per row, int32 lanes per vector
        vecs = rows * per_row
        cnt = T.decl_buffer((vecs * lanes,), self.cnt_dtype, scope="global")
        zero = tirx.const(0, f"{self.cnt_dtype}x{lanes}")
        in_ints = self.p_affine is None  # acc gets P = B - 2c, else c (block_term folds P)
        if in_ints:
            init = _bc(tirx.const(self.block, "int32"), width)
            with T.unroll(0, vecs) as t:
                T.buffer_store(acc, acc[_lanes(t, width)] + init, [_lanes(t, width)])
        with T.serial(0, self.words // self.group) as gi:
            with T.unroll(0, vecs) as t:
                T.buffer_store(cnt, zero, [_lanes(t, lanes)])
            with T.serial(0, self.group) as c:
                word = b * self.words + gi * self.group + c
                with T.unroll(0, rows) as ii, T.unroll(0, per_row) as u:
                    at = _lanes(ii * per_row + u, lanes)
                    T.buffer_store(cnt, cnt[at] + self._word(row0 + ii, g, word, u * step), [at])
            with T.unroll(0, vecs) as t:
                pc = self._widen(cnt[_lanes(t, lanes)])
                if in_ints:
                    pc = pc * _bc(tirx.const(-2, "int32"), width)
                T.buffer_store(acc, acc[_lanes(t, width)] + pc, [_lanes(t, width)])


def te_split_words(xbits: Any, *, isa: str, name: str) -> Any:
    """``xn uint32 [M, K/32, 2]``: the activation words split into nibbles as the packed AVX2
    weights are; with one half (VPOPCNTDQ) ``xbits`` itself, not a copy per call."""
    halves = _halves(isa)
    if halves == 1:
        return xbits
    m, words = (dim(d) for d in xbits.shape)
    return te.compute((m, words, halves), lambda i, t, h: _split(xbits[i, t], h, halves),
                      name=f"{name}_xn", attrs={"rq.stage": "prep"})  # fmt: skip


def xnor_panel_matmul(
    xbits: Any, wn: Any, row: Sequence[Any], col_t: Sequence[Any], *, block: int, isa: str,
    name: str, attrs: dict[str, Any],
) -> Any:  # fmt: skip
    """``Y f32 [M, N]`` from sign words ``xbits uint32 [M, K/32]`` and the packed panels
    (``row``/``col_t``: the epilogue's row parts and group-major column parts).

    Raises:
        NumericsError: an unknown ``isa``, or a shape :func:`xnor_panel_supported` rejects.
    """
    m, words = (dim(d) for d in xbits.shape)
    n = col_count(col_t[0])
    if isa not in XNOR_PANEL_ISAS or not xnor_panel_supported(n=n, k=32 * words, block=block):
        raise NumericsError(f"{name}: the XNOR panel kernel takes isa in {XNOR_PANEL_ISAS}, "
                            f"N % 8 == 0 and whole 32-bit words per block (isa={isa!r}, "
                            f"N={n}, K={32 * words}, block={block}).")  # fmt: skip
    mr, nv = xnor_panel_tile(m, n, isa)
    _check_group(name, wn, nv, n)
    xn = te_split_words(xbits, isa=isa, name=name)
    row = f32_row_parts(row, block=block, f32_bounds=(1, 1), name=name)
    step = 2 if isa == "avx512_vpopcntdq" and nv % 2 == 0 else 1  # zmm: two panels a vector

    def body(in_bufs: list[Any], out_bufs: list[Any]) -> Any:
        x, w, *eps = in_bufs
        core = _XnorCounts(x, w, block, isa, step)
        return _panel_body(core, eps, out_bufs[0], block=block, mr=mr, nv=nv, f32_bounds=(1, 1),
                           lanes=PANEL * step)  # fmt: skip

    return te.extern((m, n), [xn, wn, *row, *col_t], body, name=name, dtype="float32",
                     attrs=attrs)  # fmt: skip
