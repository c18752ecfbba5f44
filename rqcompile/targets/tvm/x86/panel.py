"""x86 AVX2 integer-affine GEMM on *column panels*: weights packed once, 8 outputs per lane.

The first AVX2 kernel (:mod:`x86.micro`) runs its lanes along K: every output needs a
horizontal sum per block, and every weight vector is sign-extended again for every row tile.
This one is laid out like fbgemm's and oneDNN's int8 GEMMs:

* **Weights are packed into panels** of 8 output columns, ``wp int8 [N/8, K/2, 16]`` with
  ``wp[g, p, 2c + t] = w[8g + c, 2p + t]``: one 16-byte load is a K-pair of 8 columns.
  Nibble weights (``w_bits <= 4``) are unpacked into the same int8 panels, so A4W4 and A2W2
  run this kernel too. :func:`te_pack_panels` is a separate PrimFunc that depends on the
  weights only; the build lifts it out of ``main`` (``relax.transform.LiftTransformParams``)
  and the runtime runs it once, when the weights are bound.
* **Activations are paired**: ``xp int32 [M, K/2]`` holds the int16 codes ``x[2p]`` (low
  half) and ``x[2p+1]`` (high half), so one ``vpbroadcastd`` feeds ``vpmaddwd`` the same
  K-pair for all 8 columns of a panel.
* **Inner step** (one K-pair): ``nv`` weight loads (``vpmovsxbw``), ``mr`` broadcasts and
  ``mr·nv`` ``vpmaddwd`` + ``vpaddd`` into an ``mr x nv`` tile of int32x8 accumulators.
  ``vpmaddwd`` adds two int16 products into int32 without saturation: exact for int8 codes.
* **Epilogue** per tile and block, in float32x8 over the 8 columns: the block term of
  :mod:`.epilogue` (``epilogue.block_term``, shared with every other integer kernel), so
  ``P`` never goes to memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import IRBuilder, T, te, tirx
from rqcompile.targets.tvm.kernels.common import dim, scratch
from rqcompile.targets.tvm.kernels.epilogue import (
    block_term,
    col_count,
    f32_row_parts,
    grouped,
    split_parts,
    w_code_max,
)

__all__ = [
    "PANEL",
    "avx2_panel_matmul",
    "avx2_sparse24_matmul",
    "panel_group",
    "panel_supported",
    "panel_tile",
    "sparse24_panel_supported",
    "sparse24_tile",
    "te_pack_panels",
    "te_pack_sparse24_panels",
    "te_quad_panels",
]

#: Output columns per panel (int32 lanes of a ymm register).
PANEL = 8
_PMADDWD = "llvm.x86.avx2.pmadd.wd"
_PMADDUBSW = "llvm.x86.avx2.pmadd.ub.sw"
_PSHUFB = "llvm.x86.avx2.pshuf.b"


def panel_supported(*, n: int, k: int, block: int, w_bits: int = 8) -> bool:
    """Whether the panel kernel handles this shape (else another kernel is used).

    8-bit weights step one K-pair at a time, nibble weights one K-quad.
    """
    return n % PANEL == 0 and block % (4 if w_bits <= 4 else 2) == 0 and k % block == 0


def panel_group(n: int) -> int:
    """``nv``: 8-column panels per register tile (and per packed weight group); divides N/8."""
    return next(v for v in (4, 3, 2, 1) if (n // PANEL) % v == 0)


def panel_tile(m: int, n: int) -> tuple[int, int]:
    """``(mr, nv)``: rows and 8-column vectors per register tile.

    ``mr·nv`` accumulators, ``nv`` weight and one broadcast register must fit the 16 ymm
    registers. Rows that do not fill a tile get a smaller one.
    """
    nv = panel_group(n)
    rows = {4: 2, 3: 3, 2: 5, 1: 6}[nv]  # a symbolic m: the full tile (and a row tail)
    return (min(rows, m) if isinstance(m, int) else rows), nv


def narrow_tile(m: int, n: int) -> tuple[int, int]:
    """``(mr, nv)`` of the narrow-``x`` core (:class:`_Maddubs7`): each step needs a
    ``vpmaddubsw`` result and its widened copy besides the accumulators, so groups are at
    most 2 panels wide. K = N = 1024, M = 64 measured 74 GMAC/s at 3 x 2, 69 at 2 x 2 and
    5 x 1, 56 at 2 x 4 (the dense tile: two accumulators spilled), 52 at 4 x 2."""
    nv = 2 if (n // PANEL) % 2 == 0 else 1
    rows = 3 if nv == 2 else 5
    return (min(rows, m) if isinstance(m, int) else rows), nv


def _nibble(byte: Any, high: bool, signed: bool) -> Any:
    """A nibble of ``byte`` as int32: two's complement when ``signed``, else 0..15."""
    v = byte.astype("int32")
    if signed:
        return (v << (24 if high else 28)) >> 28
    return (v >> 4) if high else (v & 15)


def te_quad_panels(wq: Any, *, w_bits: int, w_signed: bool, nv: int, name: str,
                   attrs: dict[str, Any], biased_nibbles: bool = False) -> Any:  # fmt: skip
    """Weights as K-quad panels, ``[N/8nv, K/4, nv, 32]``: byte ``4c + t`` of ``[g, q, v]``
    is ``w[8(g·nv + v) + c, 4q + t]``, so one 32-byte load is a K-quad of 8 columns.

    ``wq`` is ``int8 [N, K]`` or nibble bytes ``uint8 [N, K/2]``; nibbles become ``int8``
    values, or with ``biased_nibbles`` ``uint8`` biased to 0..15 (+8 when signed), the
    unsigned operand of ``vpmaddubsw``. Shared by the nibble and narrow-``x`` panels here
    and the VNNI panels (``x86.vnni``), which differ only in ``nv`` and the bias.
    """
    n = int(wq.shape[0])
    if w_bits <= 4:
        k = 2 * int(wq.shape[1])
        bias, dtype = (8 if w_signed else 0, "uint8") if biased_nibbles else (0, "int8")

        def value(j: Any, kk: Any) -> Any:
            byte = wq[j, kk // 2]
            v = tirx.Select(kk % 2 == 1, _nibble(byte, True, w_signed),
                            _nibble(byte, False, w_signed))  # fmt: skip
            return (v + bias).astype(dtype)
    else:
        k = int(wq.shape[1])

        def value(j: Any, kk: Any) -> Any:
            return wq[j, kk]

    return te.compute((n // (PANEL * nv), k // 4, nv, 4 * PANEL),
                      lambda g, q, v, e: value((g * nv + v) * PANEL + e // 4, 4 * q + e % 4),
                      name=f"{name}_wp", attrs=attrs)  # fmt: skip


def te_pack_panels(
    wq: Any, col: Sequence[Any], *, w_bits: int, w_signed: bool, name: str,
    attrs: dict[str, Any] | None = None, quads: bool = False,
) -> tuple[Any, ...]:
    """Weight-only prep of the panel kernel: ``(wp, *colT)``.

    ``wp`` is ``int8 [N/8nv, K/2, nv, 16]`` (8-bit weights; pre-widening them to int16 measured no
    faster: ``vpmaddwd``, one per cycle on Zen 3, is the bound, not the ``vpmovsxbw``) or
    ``uint8 [N/8nv, K/4, nv, 32]`` (nibble weights, biased by +8 when signed), with the
    ``nv`` panels of one register tile (:func:`panel_group`) interleaved, so a tile's step
    reads one contiguous run and the whole group streams sequentially. ``wq`` is
    ``int8 [N, K]`` or nibble bytes ``uint8 [N, K/2]``. ``quads``: 8-bit weights in the
    K-quad layout of the nibbles too, ``int8 [N/8nv, K/4, nv, 32]``, for the narrow-``x``
    core (:class:`_Maddubs7`). The epilogue's column parts
    (``epilogue.te_col_parts``) are group-major, ``[N/8nv, nb, 8nv]`` (``epilogue.grouped``):
    a register tile's columns load as vectors, and the group's blocks follow each other.
    """
    n = int(wq.shape[0])
    nv = narrow_tile(1, n)[1] if quads and w_bits > 4 else panel_group(n)
    attrs = attrs if attrs is not None else {"rq.stage": "pack"}
    if w_bits <= 4 or quads:
        wp = te_quad_panels(wq, w_bits=w_bits, w_signed=w_signed, nv=nv, name=name,
                            attrs=attrs, biased_nibbles=True)  # fmt: skip
    else:
        k = int(wq.shape[1])
        wp = te.compute((n // (PANEL * nv), k // 2, nv, 2 * PANEL),
                        lambda g, p, v, e: wq[(g * nv + v) * PANEL + e // 2, 2 * p + e % 2],
                        name=f"{name}_wp", attrs=attrs)  # fmt: skip
    return (wp, *grouped(col, nv * PANEL, name, attrs))


def te_pair_codes(xq: Any, *, name: str) -> Any:
    """``xp int32 [M, K/2]``: int16 codes ``x[2p]`` (low half) and ``x[2p+1]`` (high half)."""
    m, k = (dim(d) for d in xq.shape)
    return te.compute(
        (m, k // 2),
        lambda i, p: (xq[i, 2 * p + 1].astype("int32") << 16)
        | (xq[i, 2 * p].astype("int32") & 0xFFFF),
        name=f"{name}_xp",
        attrs={"rq.stage": "prep"},
    )


def _row_bytes(x: Any) -> int:
    """Bytes of one row (all dims after the first) of the activation buffer ``x``."""
    size = int(x.dtype.itemsize)
    for d in x.shape[1:]:
        size *= int(d)
    return size


def _bc(v: Any, lanes: int = 8) -> Any:
    return tirx.Broadcast(v, lanes)


def _intrin(dtype: str, name: str, *args: Any) -> Any:
    return tirx.call_llvm_pure_intrin(dtype, name, *args)


class _Maddwd:
    """8-bit weights: per K-pair, ``vpmaddwd(bcast(x pair), w panel)`` (16 MACs, exact)."""

    def __init__(self, xp: Any, wp: Any, block: int) -> None:
        self.xp, self.wp, self.block = xp, wp, block

    def accumulate(self, acc: Any, row0: Any, rows: int, g: Any, nv: int, b: Any) -> None:
        pairs = self.block // 2
        with T.serial(0, pairs) as q:
            p = b * pairs + q
            with T.unroll(0, rows) as ii:
                xb = tirx.reinterpret("int16x16", _bc(self.xp[row0 + ii, p]))
                with T.unroll(0, nv) as v:
                    wv = tirx.Cast("int16x16", self.wp[g, p, v, tirx.Ramp(0, 1, 16)])
                    lanes = tirx.Ramp((ii * nv + v) * 8, 1, 8)
                    T.buffer_store(acc, acc[lanes] + _intrin("int32x8", _PMADDWD, xb, wv), [lanes])


class _Int16Groups:
    """``vpmaddubsw`` cores: each step adds int16 pair sums per (row, panel); ``group`` steps
    add up in int16 (``group·pair_max < 2^15``) before ``vpmaddwd`` with ones widens each
    column's two pair lanes into its int32 lane. Subclasses say what one step multiplies.
    """

    step_k = 4  # K elements per step

    def __init__(self, block: int, pair_max: int) -> None:
        self.block, steps = block, block // self.step_k
        cap = max(1, 32767 // pair_max)
        self.group = next(g for g in range(min(cap, steps), 0, -1) if steps % g == 0)

    def product(self, row: Any, g: Any, q: Any, v: Any) -> Any:
        raise NotImplementedError

    def accumulate(self, acc: Any, row0: Any, rows: int, g: Any, nv: int, b: Any) -> None:
        tile, steps = rows * nv, self.block // self.step_k
        acc16 = scratch(tile * 16, "int16")
        ones = _bc(tirx.const(1, "int16"), 16)
        with T.serial(0, steps // self.group) as gi:
            with T.unroll(0, tile) as t:
                T.buffer_store(acc16, _bc(tirx.const(0, "int16"), 16), [tirx.Ramp(t * 16, 1, 16)])
            with T.serial(0, self.group) as c:
                q = b * steps + gi * self.group + c
                with T.unroll(0, rows) as ii, T.unroll(0, nv) as v:
                    lanes = tirx.Ramp((ii * nv + v) * 16, 1, 16)
                    prod = self.product(row0 + ii, g, q, v)
                    T.buffer_store(acc16, acc16[lanes] + prod, [lanes])
            with T.unroll(0, tile) as t:
                wide = _intrin("int32x8", _PMADDWD, acc16[tirx.Ramp(t * 16, 1, 16)], ones)
                lanes = tirx.Ramp(t * 8, 1, 8)
                T.buffer_store(acc, acc[lanes] + wide, [lanes])


class _Maddubsw(_Int16Groups):
    """Nibble weights (biased to 0..15): per K-quad, ``vpmaddubsw(w panel, bcast(x quad))``,
    32 MACs per instruction; pair sums are at most ``2·15·|x|max``."""

    def __init__(self, xq: Any, wp: Any, block: int, x_max: int) -> None:
        super().__init__(block, 2 * 15 * x_max)
        self.xq, self.wp = xq, wp

    def product(self, row: Any, g: Any, q: Any, v: Any) -> Any:
        xv = tirx.reinterpret("int32", self.xq[row, tirx.Ramp(q * 4, 1, 4)])
        xb = tirx.reinterpret("int8x32", _bc(xv))
        return _intrin("int16x16", _PMADDUBSW, self.wp[g, q, v, tirx.Ramp(0, 1, 32)], xb)


class _Maddubsw4(_Maddubsw):
    """:class:`_Maddubsw` on nibble panels (``te_pack_vnni_panels(nibbles=True)``, the
    layout of the VNNI ``_w4`` rows): one 32-byte load holds two K-quads of 8 columns, quad
    ``2h`` in the low nibbles and ``2h + 1`` in the high ones, biased to ``0..15``;
    ``vpand`` / ``vpsrlw`` + ``vpand`` give each quad's unsigned bytes for ``vpmaddubsw``
    (exact). Half the weight bytes per MAC, three more instructions per 64 MACs of a panel:
    for GEMV-sized calls (A4W4, A2W2 at small M), which read every weight once."""

    def product(self, row: Any, g: Any, q: Any, v: Any) -> Any:  # pragma: no cover
        raise NotImplementedError  # accumulate below takes both quads of a byte

    def accumulate(self, acc: Any, row0: Any, rows: int, g: Any, nv: int, b: Any) -> None:
        tile, octets = rows * nv, self.block // 8
        group = next(d for d in range(min(max(1, self.group // 2), octets), 0, -1)
                     if octets % d == 0)  # fmt: skip
        acc16 = scratch(tile * 16, "int16")
        ones = _bc(tirx.const(1, "int16"), 16)
        mask = tirx.const(15, "uint8x32")
        with T.serial(0, octets // group) as gi:
            with T.unroll(0, tile) as t:
                T.buffer_store(acc16, _bc(tirx.const(0, "int16"), 16), [tirx.Ramp(t * 16, 1, 16)])
            with T.serial(0, group) as c:
                h = b * octets + gi * group + c
                with T.unroll(0, nv) as v:
                    raw = self.wp[g, h, v, tirx.Ramp(0, 1, 32)]
                    halves = (tirx.bitwise_and(raw, mask),
                              tirx.bitwise_and(tirx.shift_right(raw, tirx.const(4, "uint8x32")),
                                               mask))  # fmt: skip
                    with T.unroll(0, rows) as ii:
                        lanes = tirx.Ramp((ii * nv + v) * 16, 1, 16)
                        tot = acc16[lanes]
                        for half, w in enumerate(halves):
                            xv = tirx.reinterpret("int32", self.xq[row0 + ii, tirx.Ramp(
                                (2 * h + half) * 4, 1, 4)])  # fmt: skip
                            xb = tirx.reinterpret("int8x32", _bc(xv))
                            tot = tot + _intrin("int16x16", _PMADDUBSW, w, xb)
                        T.buffer_store(acc16, tot, [lanes])
            with T.unroll(0, tile) as t:
                wide = _intrin("int32x8", _PMADDWD, acc16[tirx.Ramp(t * 16, 1, 16)], ones)
                lanes = tirx.Ramp(t * 8, 1, 8)
                T.buffer_store(acc, acc[lanes] + wide, [lanes])


class _Maddubs7(_Int16Groups):
    """8-bit weights against activation codes that span at most 128 values (7 bits or
    fewer), offset to ``0..127``: per K-quad, ``vpmaddubsw(bcast(x quad), w panel)`` then
    ``vpmaddwd`` with ones, 32 MACs per three instructions (the pair ``vpmaddwd`` +
    ``vpaddd`` of :class:`_Maddwd` does 16). Exact: a pair sum is at most ``2·127·128 <
    2^15``, so ``vpmaddubsw`` never saturates, and each step is widened at once. This is
    fbgemm's int8 arithmetic (torch's dynamic int8 quantizes activations to 7 bits,
    ``reduce_range=True``, for the same reason)."""

    def __init__(self, xu: Any, wp: Any, block: int) -> None:
        super().__init__(block, 2 * 127 * 128)
        self.xu, self.wp = xu, wp

    def product(self, row: Any, g: Any, q: Any, v: Any) -> Any:
        xv = tirx.reinterpret("int32", self.xu[row, tirx.Ramp(q * 4, 1, 4)])
        xb = tirx.reinterpret("int8x32", _bc(xv))
        return _intrin("int16x16", _PMADDUBSW, xb, self.wp[g, q, v, tirx.Ramp(0, 1, 32)])


def te_offset_codes(xq: Any, offset: int, *, name: str) -> Any:
    """``xq + offset`` as ``uint8``: the unsigned operand of ``vpmaddubsw``."""
    m, k = (dim(d) for d in xq.shape)
    return te.compute((m, k), lambda i, j: (xq[i, j].astype("int32") + offset).astype("uint8"),
                      name=f"{name}_xu", attrs={"rq.stage": "prep"})  # fmt: skip


class _Sparse24(_Int16Groups):
    """2:4-sparse nibble weights: per 8 K (two groups of 4), the 4 kept weights of each of 8
    columns against the 4 ``x`` codes they select, gathered by ``vpshufb``.

    ``x`` is offset to unsigned (``x + 128``, the unsigned operand of ``vpmaddubsw``); the
    ``128·S_W`` this adds is removed in the epilogue. The 8 codes ``x[8t : 8t+8]`` are
    broadcast to every 8-byte quarter of a ymm register; the packed control bytes (built
    from the 2-bit indices at pack time) pick each column's kept codes, so one
    ``vpmaddubsw`` does the 32 kept MACs of 64 dense ones. Pair sums are at most
    ``2·255·|w|max``.
    """

    step_k = 8

    def __init__(self, xu: Any, wv: Any, wc: Any, block: int, w_max: int) -> None:
        super().__init__(block, 2 * 255 * w_max)
        self.xu, self.wv, self.wc = xu, wv, wc

    def product(self, row: Any, g: Any, q: Any, v: Any) -> Any:
        x8 = tirx.reinterpret("int64", self.xu[row, tirx.Ramp(q * 8, 1, 8)])
        xb = tirx.reinterpret("int8x32", _bc(x8, 4))
        picked = _intrin("int8x32", _PSHUFB, xb, self.wc[g, q, v, tirx.Ramp(0, 1, 32)])
        return _intrin("int16x16", _PMADDUBSW, picked, self.wv[g, q, v, tirx.Ramp(0, 1, 32)])


def _panel_body(core: Any, eps: list[Any], y: Any, *, block: int, mr: int, nv: int,
                f32_bounds: tuple[int, int], bias_x: int = 0, bias_w: int = 0,
                lanes: int = PANEL) -> Any:  # fmt: skip
    """Per group ``g`` of ``nv`` panels, per tile of ``mr`` rows: for each block, ``core``
    accumulates the block's integer products and ``epilogue.block_term`` adds the block's
    float term to ``mr x nv`` panels of float32 registers; the tile is stored once. ``eps``
    are the row parts ``[M, nb]`` then the group-major column parts ``[N/8nv, nb, 8nv]``
    of :mod:`.epilogue` (``grouped``); ``bias_x``/``bias_w``: the offsets the core adds to
    ``x`` (+128, unsigned operands) or to ``w`` codes (+8, signed nibbles; 0 for the
    masked VNNI cores, whose weights are the unsigned operand); ``f32_bounds``: the codes'
    magnitude bounds. ``lanes``: the epilogue's vector width, 8 (a panel per ymm) or 16 (two
    adjacent panels per zmm, ``nv`` even; the accumulators are laid out panel after panel
    either way, so the core may fill them 8 or 16 lanes at a time).

    Rows are the outer loop: the group's packed weights stream sequentially once per row
    tile (from L2 at large K), ``x`` rows stream sequentially, and nothing else touches
    memory. (Blocks outer, accumulating ``y`` in memory, measured no faster at K = 1024 and
    far slower at K = 4096, M = 512, where rows 4 KiB apart all map to the same L1 sets.)
    Floats are added in block order from zero, as in :func:`kernels._affine_epilogue`.
    """
    row_parts, col_parts = split_parts(eps)
    m, n = (dim(d) for d in y.shape)
    nb = int(row_parts[0].shape[1])
    if (nv * PANEL) % lanes:
        raise NumericsError(f"_panel_body: {nv} panels of {PANEL} columns do not split into "
                            f"vectors of {lanes} lanes.")  # fmt: skip
    per_row = nv * PANEL // lanes  # vectors per row of the tile
    fused = getattr(core, "fused_sum", False)  # block_term(into=...): see the core

    def vec(t: Any) -> Any:
        return tirx.Ramp(t * lanes, 1, lanes)

    def cols(g: Any, u: Any) -> Any:
        return tirx.Ramp(g * nv * PANEL + u * lanes, 1, lanes)

    def col(c: Any, g: Any, b: Any, u: Any) -> Any:
        """Vector ``u`` of group ``g``'s column part ``c`` (``epilogue.grouped``) at block ``b``."""
        return c[g, b, tirx.Ramp(u * lanes, 1, lanes)]

    def tile(row0: Any, rows: int, g: Any, acc: Any, yacc: Any) -> None:
        with T.unroll(0, rows * per_row) as t:
            T.buffer_store(yacc, _bc(tirx.const(0, "float32"), lanes), [vec(t)])
        with T.serial(0, nb) as b:
            with T.unroll(0, rows * per_row) as t:
                T.buffer_store(acc, _bc(tirx.const(0, "int32"), lanes), [vec(t)])
            core.accumulate(acc, row0, rows, g, nv, b)
            with T.unroll(0, rows) as ii, T.unroll(0, per_row) as u:
                i, t = row0 + ii, ii * per_row + u
                into = yacc[vec(t)] if fused else None
                term = block_term(acc[vec(t)], [r[i, b] for r in row_parts],
                                  [col(c, g, b, u) for c in col_parts], block=block,
                                  lanes=lanes, bias_x=bias_x, bias_w=bias_w,
                                  f32_bounds=f32_bounds, into=into,
                                  p_affine=getattr(core, "p_affine", None))  # fmt: skip
                T.buffer_store(yacc, term if fused else yacc[vec(t)] + term, [vec(t)])
        with T.unroll(0, rows) as ii, T.unroll(0, per_row) as u:
            T.buffer_store(y, yacc[vec(ii * per_row + u)], [row0 + ii, cols(g, u)])

    def buffers() -> tuple[Any, Any]:
        """The tile's integer and float accumulators: on the stack (registers), or a
        workspace where the core says its multi-row tiles spill (``core.spills``)."""
        stack = not (getattr(core, "spills", False) and mr > 1)
        return (scratch(mr * nv * 8, "int32", stack=stack),
                scratch(mr * nv * 8, "float32", stack=stack))  # fmt: skip

    if not isinstance(m, int):  # a symbolic build: whole row tiles, then a one-row tail
        with IRBuilder() as ib, T.parallel(0, n // (PANEL * nv)) as g:
            acc, yacc = buffers()
            full = m // mr
            with T.serial(0, full) as t:
                tile(t * mr, mr, g, acc, yacc)
            with T.serial(0, m - full * mr) as r:
                tile(full * mr + r, 1, g, acc, yacc)
        return ib.get()

    full, rest = divmod(m, mr)
    # rows in chunks of about ``core.chunk_bytes`` of x (which then stays in L2 while every
    # group's weights stream past it); the integer cores measured fastest unchunked. The
    # remainder rows go last, in the last chunk, while the group's weights are still cached.
    chunk_bytes = getattr(core, "chunk_bytes", 0)
    per_chunk = max(1, min(full, chunk_bytes // (mr * _row_bytes(core.x))) if chunk_bytes else full)
    chunks = max(1, -(-full // per_chunk))

    with IRBuilder() as ib, T.serial(0, chunks) as ch, T.parallel(0, n // (PANEL * nv)) as g:
        acc, yacc = buffers()
        if full:
            with T.serial(0, per_chunk) as io:
                t = ch * per_chunk + io
                if full % per_chunk:
                    with T.If(t < full), T.Then():
                        tile(t * mr, mr, g, acc, yacc)
                else:
                    tile(t * mr, mr, g, acc, yacc)
        if rest and chunks == 1:
            tile(tirx.const(full * mr, "int32"), rest, g, acc, yacc)
        elif rest:
            with T.If(ch == chunks - 1), T.Then():
                tile(tirx.const(full * mr, "int32"), rest, g, acc, yacc)
    return ib.get()


def _check_group(name: str, packed: Any, nv: int, n: int) -> None:
    """Packed weights must interleave the ``nv`` panels the kernel's tile walks."""
    if int(packed.shape[2]) != nv:
        raise NumericsError(f"{name}: weights packed in groups of {int(packed.shape[2])} "
                            f"panels, the kernel wants {nv} for N={n}; repack them.")  # fmt: skip


def avx2_panel_matmul(
    xq: Any, wp: Any, row: Sequence[Any], col_t: Sequence[Any], *, block: int, w_bits: int,
    w_signed: bool, name: str, attrs: dict[str, Any], x_offset: int | None = None,
    packed_nibbles: bool = False,
) -> Any:  # fmt: skip
    """``Y f32 [M, N]`` from codes ``xq int8 [M, K]`` and the panels of :func:`te_pack_panels`
    (``row``: the epilogue's row parts, ``col_t``: its group-major column parts).
    ``x_offset``: with 8-bit weights packed as ``quads``, the codes span at most 128 values
    and ``xq + x_offset`` lies in ``0..127`` (the :class:`_Maddubs7` core).
    ``packed_nibbles``: 4-bit codes two per byte (``x86.vnni.te_pack_vnni_panels`` with
    ``nibbles``; the :class:`_Maddubsw4` core, blocks of whole K-octets).

    Raises:
        NumericsError: a shape :func:`panel_supported` rejects.
    """
    m, k = (dim(d) for d in xq.shape)
    n = col_count(col_t[0])
    nibbles = w_bits <= 4
    narrow = x_offset is not None and not nibbles
    if packed_nibbles and not (nibbles and block % 8 == 0):
        raise NumericsError(f"{name}: nibble panels need codes of <= 4 bits and blocks of "
                            f"whole K-octets (block={block}, w_bits={w_bits}).")  # fmt: skip
    if not panel_supported(n=n, k=k, block=block, w_bits=4 if narrow else w_bits):
        raise NumericsError(f"{name}: the AVX2 panel kernel needs N % 8 == 0 and a block "
                            f"of whole K-quads dividing K (N={n}, K={k}, "
                            f"block={block}).")  # fmt: skip
    mr, nv = narrow_tile(m, n) if narrow else panel_tile(m, n)
    _check_group(name, wp, nv, n)
    x_off = int(x_offset or 0) if narrow else 0
    if narrow:
        xin = te_offset_codes(xq, x_off, name=name)
    else:
        xin = xq if nibbles else te_pair_codes(xq, name=name)

    bias, bounds = 8 if nibbles and w_signed else 0, (128, w_code_max(w_bits, w_signed))
    row = f32_row_parts(row, block=block, f32_bounds=bounds, bias_x=x_off, bias_w=bias,
                        name=name)  # fmt: skip

    def body(in_bufs: list[Any], out_bufs: list[Any]) -> Any:
        x, w, *eps = in_bufs
        if narrow:
            core: Any = _Maddubs7(x, w, block)
        else:
            maddubsw = _Maddubsw4 if packed_nibbles else _Maddubsw
            core = maddubsw(x, w, block, x_max=128) if nibbles else _Maddwd(x, w, block)
        return _panel_body(core, eps, out_bufs[0], block=block, mr=mr, nv=nv, bias_w=bias,
                           bias_x=x_off, f32_bounds=bounds)  # fmt: skip

    return te.extern((m, n), [xin, wp, *row, *col_t], body, name=name, dtype="float32",
                     attrs=attrs)  # fmt: skip


def sparse24_panel_supported(*, n: int, k: int, block: int, w_bits: int) -> bool:
    """Whether :func:`avx2_sparse24_matmul` handles this shape (nibble values, 8-K steps)."""
    return w_bits <= 4 and n % PANEL == 0 and block % 8 == 0 and k % block == 0


def sparse24_tile(m: int, n: int) -> tuple[int, int]:
    """``(mr, nv)`` of the 2:4 kernel: each panel needs two registers (values and ``vpshufb``
    controls) besides its ``mr`` accumulators, so groups are at most 2 panels wide: 2 x 4
    (the dense tile) spilled accumulators to the stack and ran only 1.14x dense at
    K=N=4096, M=64; 4 x 2 runs 1.2-1.3x (1 x 4..8, 3 x 2, 2 x 2 measured no better)."""
    nv = 2 if (n // PANEL) % 2 == 0 else 1
    rows = 4 if nv == 2 else 6
    return (min(rows, m) if isinstance(m, int) else rows), nv


def te_pack_sparse24_panels(
    wvals: Any, widx: Any, col: Sequence[Any], *, name: str, attrs: dict[str, Any],
) -> tuple[Any, ...]:  # fmt: skip
    """``(wv, wc, *colG)``: values and ``vpshufb`` controls of the sparse kernel, and the
    column parts group-major (``epilogue.grouped``).

    ``wv int8 [N/8nv, K/8, nv, 32]``: the 4 kept values of column ``c`` for K-step ``t`` at
    bytes ``4c .. 4c+3``; ``wc uint8`` (same shape): the byte each one multiplies within the
    8 broadcast codes, ``4·(slot // 2) + index`` (the index is the slot's 2-bit field of
    ``widx``, see ``bitpack.pack_sparse24``).
    """
    n, half = (int(d) for d in wvals.shape)
    nv = sparse24_tile(1, n)[1]
    shape = (n // (PANEL * nv), half // 4, nv, 4 * PANEL)

    def column(g: Any, v: Any, e: Any) -> Any:
        return (g * nv + v) * PANEL + e // 4

    wv = te.compute(shape, lambda g, t, v, e: wvals[column(g, v, e), 4 * t + e % 4],
                    name=f"{name}_wv", attrs=attrs)  # fmt: skip

    def ctrl(g: Any, t: Any, v: Any, e: Any) -> Any:
        r = e % 4
        field = (widx[column(g, v, e), t].astype("int32") >> (2 * r)) & 3
        return (4 * (r // 2) + field).astype("uint8")

    wc = te.compute(shape, ctrl, name=f"{name}_wc", attrs=attrs)
    return (wv, wc, *grouped(col, nv * PANEL, name, attrs))


def avx2_sparse24_matmul(
    xq: Any, wv: Any, wc: Any, row: Sequence[Any], col_t: Sequence[Any], *, block: int,
    w_bits: int, name: str, attrs: dict[str, Any],
) -> Any:  # fmt: skip
    """``Y f32 [M, N]`` of the 2:4-sparse layer from codes and :func:`te_pack_sparse24_panels`."""
    m, k = (dim(d) for d in xq.shape)
    n = col_count(col_t[0])
    if not sparse24_panel_supported(n=n, k=k, block=block, w_bits=w_bits):
        raise NumericsError(f"{name}: the AVX2 2:4 kernel needs nibble values, N % 8 == 0 "
                            f"and block % 8 == 0 (N={n}, K={k}, block={block}).")  # fmt: skip
    mr, nv = sparse24_tile(m, n)
    _check_group(name, wv, nv, n)
    xu = te_offset_codes(xq, 128, name=name)
    bounds = (128, 2**w_bits - 1)
    row = f32_row_parts(row, block=block, f32_bounds=bounds, bias_x=128, name=name)

    def body(in_bufs: list[Any], out_bufs: list[Any]) -> Any:
        x, v, c, *eps = in_bufs
        core = _Sparse24(x, v, c, block, w_max=2**w_bits - 1)
        return _panel_body(core, eps, out_bufs[0], block=block, mr=mr, nv=nv, bias_x=128,
                           f32_bounds=bounds)  # fmt: skip

    return te.extern((m, n), [xu, wv, wc, *row, *col_t], body, name=name, dtype="float32",
                     attrs=attrs)  # fmt: skip
