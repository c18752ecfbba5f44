"""x86 AMX-INT8 integer-affine GEMM: ``tdpbusd`` on 16 x 16 int32 tiles of the result.

AMX (Sapphire Rapids and later) adds eight *tile* registers of up to 16 rows x 64 bytes and
a matrix unit: one ``tdpbusd`` multiplies a 16 x 64 tile of unsigned bytes (16 rows of ``x``,
64 of K) by a 16 x 64 tile of signed bytes (16 K-quads of 16 columns, 4 bytes per column)
and adds each output's 64 products into a 16 x 16 int32 tile: 16·16·64 = 16384 MACs in
one instruction, against 64 for a zmm ``vpdpbusd`` (:mod:`.vnni`). Where the VNNI core is
bound by its dot-product instructions, this one is bound by the float epilogue that runs
once per quantization block, and by getting tiles into the unit. The kernel table takes it
for calls of :data:`AMX_MIN_ROWS` rows or more; fewer rows stay on the VNNI panels.

* **Weights** are packed once, at load, by :func:`te_pack_amx_panels` into
  ``wp int8 [N/16, K/4, 2, 32]`` = ``[N/16, K/4, 64]`` bytes: byte ``4c + t`` of row ``q``
  of column group ``g`` is ``w[16g + c, 4q + t]``, exactly the layout ``tdpbusd`` wants
  for its second operand (16 columns x 4 K-bytes per tile row). A tile of ``s`` K-quads is
  ``s`` contiguous rows of 64 bytes. This is :func:`.panel.te_quad_panels` with two
  8-column panels per group (the VNNI pack with ``nv = 2``), so nibble weights (A4W4,
  A2W2) are unpacked to int8 there as for VNNI.
* **Activations** are offset to unsigned, ``xu = x + 128`` (``tdpbusd``'s unsigned operand,
  as for ``vpdpbusd``), and laid out as A tiles, ``[M/16, K/kstep, 16, kstep]`` bytes
  (:func:`te_tile_codes`), so each tile load reads 1 KiB in a row: rows of ``x`` lie K
  bytes apart, 4 KiB at K = 4096, and 16 rows of one tile would all fall in the same L1
  sets. Rows are padded to whole register tiles (computed, never stored). The epilogue
  folds the offset into the row origin (``bias_x = 128`` of
  :func:`.epilogue.block_term`, passed as float origins by :func:`te_float_origins`), so
  the float epilogue is the one every other integer kernel runs, on the same values in the
  same order: the AMX layer equals the VNNI and AVX2 layers to the bit. The row parts are
  passed transposed, ``[nb, M]``: the epilogue takes a block's rows one after another, and
  ``[M, nb]`` put each row's five scalars on five new cache lines (5 x 32 lines per step,
  from L2 once the chunk's parts outgrow L1); ``[nb, M]`` puts a step's 32 rows on two
  lines per part. Measured (K = N = 4096, M = 256, one thread, the kernel alone):
  11.2 -> 9.6 ms, the same bits.
* **Tile walk** (:func:`amx_tile`): per parallel task one group of ``16·tn`` columns
  (``tn = 2`` where N/16 is even), C tiles ``tmm4..7`` (``tm x tn``, ``tm = 2`` unless M
  fits one tile), A tiles ``tmm0..1``, B tiles ``tmm2..3``; each A tile feeds ``tn``
  ``tdpbusd`` and each B tile ``tm``, each ``tdpbusd`` issued right after the loads it
  needs. Rows go in chunks of 256 (:data:`_CHUNK_ROWS`), blocks outer: per block every
  row tile of the chunk in turn, so the block's B tiles (4 KiB) stay in L1 across the
  chunk, the weights stream from memory once per chunk, and the chunk's float sums (32
  KiB) stay cached across the blocks; the next block's B tiles are prefetched. Per step the C tiles start at zero, take ``block / kstep`` steps
  of K (``kstep`` = 64 bytes where the block allows, else the largest power of two
  dividing it) and are stored to one half of an int32 buffer, whose other half (the
  previous step's sums) goes through the float epilogue meanwhile: the epilogue runs
  behind the next step's ``tdpbusd``, never right after a tile store it would have to
  wait for. The tile configuration (``ldtilecfg``) is loaded once per task and released
  after.
* **Exactness**: each product is at most ``255·128``; ``tdpbusd`` adds into int32 without
  saturation and the accumulators restart every block, so they hold ``Σ xu·w`` exactly
  while ``255·128·B < 2³¹`` (B < 65793; the int32 centring of
  ``kernels.int_matmul_packs`` already limits 8-bit blocks to B < 256).
* **Bound**: ``tdpbusd`` = 16·16·64 = 16384 MACs, one issued every 16 cycles per core
  (1024 MACs/cycle, 16x a zmm ``vpdpbusd`` at one per cycle). At block 128 a 32 x 32
  tile takes 8 ``tdpbusd`` (~128 cycles at peak) per block, while the epilogue of its 1024
  outputs is 64 zmm vectors of 8 float operations (convert, 2 for the integer origin
  terms, 2 multiplies, 2 FMAs, the sum), ~256 cycles on two FMA ports. Measured
  (``benchmarks/amx_gemm.py``, K = N = 4096, M = 256, one thread): the matrix part alone
  ~5 ms (~30% of peak: tile loads and the weights' stream), the epilogue alone ~5.5 ms,
  together their sum, so the float epilogue of the per-block format is half the time. The
  sum is the core's, not the schedule's: ``benchmarks/amx_overlap.c`` shows ``tdpbusd`` and
  zmm float work do not run at the same time on this Sapphire-Rapids-class core (ymm work
  does, at half the lanes), so the bound is tile step + epilogue, ~5.1 ms at that shape
  with every tile in L1 (benchmarks/README.md, GEMM on AMX-INT8).

The OS hands out the tile state only on request (``cpu_features.amx_permission``, asked
by the runtime before loading kernels built with ``amx_tile``).

``isa="amx_emulated"`` (tests only; the kernel table never picks it) builds the same pack,
the same tile walk and the same epilogue with the tile instructions replaced by plain TIR
on the same addresses (``tilezero`` zeroes the C buffer, ``tdpbusd`` is a loop nest of
exact int32 products, the loads and stores disappear), so the layout and the walk are
checked bit-exact on any host (``tests/targets/tvm/x86/test_amx.py``); ``tdpbusd`` itself
is compiled on every host and run where the host has ``amx_int8``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import IRBuilder, T, te, tirx
from rqcompile.targets.tvm.kernels.common import scratch
from rqcompile.targets.tvm.kernels.epilogue import (
    block_term,
    exact_in_f32,
    split_parts,
    transposed,
    w_code_max,
)
from rqcompile.targets.tvm.x86.panel import te_quad_panels

__all__ = [
    "AMX_ISAS",
    "AMX_MIN_ROWS",
    "amx_matmul",
    "amx_supported",
    "amx_tile",
    "te_pack_amx_panels",
]

#: ``isa`` values of this kernel: the target's, and the emulation (tests only).
AMX_ISAS = ("amx", "amx_emulated")
#: Rows (M) from which the kernel table prefers AMX to the VNNI panels. Measured
#: (``benchmarks/amx_gemm.py``, one thread, whole A8W8 layers): K = N = 2048, M = 8 a tie
#: (389 vs 418 µs; A4W4 against the nibble panels 377 vs 370), M = 16 1.5x (469 vs 708);
#: at M = 1 the VNNI panels win (75 vs 114 µs at K = N = 1024: a GEMV reads each weight
#: once, and AMX pads the row to a tile of 16).
AMX_MIN_ROWS = 16
#: Output columns per tile (int32 lanes of a C tile row) and rows per tile.
_COLS, _ROWS = 16, 16
_A, _B, _C = 0, 2, 4  # first tile register of each kind
#: Rows per chunk: the float sums of a chunk (``rows x 16·tn`` float32, 32 KiB) stay cached
#: across the blocks, and the B tiles of one block stay in L1 across the chunk's row tiles.
#: 256 measured 2-4% faster than 128 at K = N = 4096, M = 256 and 512 (one weight stream
#: per 256 rows instead of two), 512 no faster.
_CHUNK_ROWS = 256
_EPILOGUE_LANES = 16


def amx_supported(*, n: int, k: int, block: int) -> bool:
    """Whether the AMX kernel takes this shape: whole 16-column groups, whole K-quads per
    block, blocks dividing K, and int32 sums ``Σ (x+128)·w`` (``255·128·B < 2³¹``)."""
    return (n % _COLS == 0 and block > 0 and block % 4 == 0 and k % block == 0
            and 255 * 128 * block < 2**31)  # fmt: skip


def _kstep(block: int) -> int:
    """K bytes per ``tdpbusd``: 64 (a full tile row) where the block allows, else the
    largest power of two dividing the block (4 at least: one K-quad)."""
    return next(s for s in (64, 32, 16, 8, 4) if block % s == 0)


def amx_tile(n: int, m: int = _CHUNK_ROWS) -> tuple[int, int]:
    """``(tm, tn)``: A tiles (16 rows each) and B tiles (16 columns each) of one register
    tile; ``tm·tn`` C tiles plus ``tm + tn`` operand tiles fit the 8 tile registers. One A
    tile where M fits it (rows are padded to whole register tiles)."""
    return (1 if m <= _ROWS else 2), (2 if (n // _COLS) % 2 == 0 else 1)


def te_pack_amx_panels(wq: Any, *, w_bits: int, w_signed: bool, name: str,
                       attrs: dict[str, Any]) -> Any:  # fmt: skip
    """``wp int8 [N/16, K/4, 2, 32]`` (module docstring) from ``wq int8 [N, K]`` or nibble
    bytes ``uint8 [N, K/2]`` (unpacked to their int8 values)."""
    return te_quad_panels(wq, w_bits=w_bits, w_signed=w_signed, nv=2, name=name, attrs=attrs)


def _i8(v: int) -> Any:
    return tirx.const(v, "int8")


def _amx(name: str, *args: Any) -> None:
    T.evaluate(tirx.call_llvm_intrin("void", f"llvm.x86.{name}", *args))


def _amx_prefetch(ptr: Any) -> None:
    """``prefetcht0`` of the line at ``ptr``."""
    T.evaluate(
        tirx.call_llvm_intrin(
            "void",
            "llvm.prefetch",
            ptr,
            tirx.const(0, "int32"),
            tirx.const(3, "int32"),
            tirx.const(1, "int32"),
        )
    )


def _bc(v: Any, lanes: int) -> Any:
    return tirx.Broadcast(v, lanes)


class _Walk:
    """One task's tile walk (module docstring); ``emulated`` replaces the tile instructions
    by plain TIR on the same buffers and offsets."""

    def __init__(self, x: Any, w: Any, eps: list[Any], y: Any, *, m: int, k: int, block: int,
                 tm: int, tn: int, emulated: bool,
                 f32_bounds: tuple[int, int]) -> None:  # fmt: skip
        self.x, self.w, self.y = x, w, y
        self.rows, self.cols = split_parts(eps)
        # origins as float32 (te_float_origins) where I is evaluated in float32: the same
        # values, without two int-to-float conversions and broadcasts per row and block
        self.bias_x = 0 if str(self.rows[1].dtype) == "float32" else 128
        self.m, self.k, self.block, self.tn = m, k, block, tn
        self.kstep, self.emulated, self.bounds = _kstep(block), emulated, f32_bounds
        self.tm = tm
        self.tile_rows = _ROWS * self.tm
        self.width = _COLS * tn  # columns of a task
        self.half = self.tile_rows * self.width  # int32 sums of one tile
        self.lanes = _EPILOGUE_LANES

    def configure(self, cfg: Any) -> None:
        """Palette 1; A tiles 16 rows x ``kstep`` bytes, B tiles ``kstep/4`` rows x 64 bytes,
        C tiles 16 rows x 64 bytes (``colsb`` little-endian uint16 at ``16 + 2i``, ``rows`` at
        ``48 + i``)."""
        with T.serial(0, 64) as i:
            T.buffer_store(cfg, tirx.const(0, "uint8"), [i])
        T.buffer_store(cfg, tirx.const(1, "uint8"), [0])
        shapes = {_A: (_ROWS, self.kstep), _A + 1: (_ROWS, self.kstep),
                  _B: (self.kstep // 4, 64), _B + 1: (self.kstep // 4, 64)}  # fmt: skip
        shapes.update({_C + t: (_ROWS, 64) for t in range(4)})
        for t, (rows, colsb) in shapes.items():
            T.buffer_store(cfg, tirx.const(colsb, "uint8"), [16 + 2 * t])
            T.buffer_store(cfg, tirx.const(rows, "uint8"), [48 + t])
        if not self.emulated:
            _amx("ldtilecfg", tirx.address_of(cfg[0]))

    def release(self) -> None:
        if not self.emulated:
            _amx("tilerelease")

    def _c_offset(self, a: int, bt: int) -> int:
        """Element offset of C tile ``(a, bt)`` in one half of the int32 buffer
        ``[2, 16·tm, 16·tn]`` (two halves: the tile being computed and the one in the
        epilogue)."""
        return a * _ROWS * self.width + bt * _COLS

    def _dot(self, cbuf: Any, half: Any, row0: Any, g: Any, k0: Any) -> None:
        """``C += A·B`` for the ``tm x tn`` tiles of one K step at ``k0`` (rows from
        ``row0``; the emulation accumulates into half ``half`` of ``cbuf``)."""
        tm, tn, kq = self.tm, self.tn, self.kstep // 4
        if not self.emulated:
            # each tdpbusd right after the loads it needs (A0 B0 C00 B1 C01 A1 C10 C11):
            # tiles are not renamed, so the unit starts as soon as its operands are in
            for a in range(tm):
                tile = self.x[row0 // _ROWS + a, k0 // self.kstep, 0, 0]
                _amx("tileloadd64", _i8(_A + a), tirx.address_of(tile),
                     tirx.const(self.kstep, "int64"))  # fmt: skip
                for bt in range(tn):
                    if a == 0:
                        panel = tirx.address_of(self.w[g * tn + bt, k0 // 4, 0, 0])
                        _amx("tileloadd64", _i8(_B + bt), panel, tirx.const(64, "int64"))
                    _amx("tdpbusd", _i8(_C + 2 * a + bt), _i8(_A + a), _i8(_B + bt))
            return
        # emulation: C[r][c] += Σ_q Σ_t A[r][4q+t]·B[q][4c+t], read where the tiles load from
        for a in range(tm):
            for bt in range(tn):
                with T.serial(0, _ROWS) as r, T.serial(0, kq) as q, T.serial(0, _COLS) as c:
                    idx = half * self.half + self._c_offset(a, bt) + r * self.width + c
                    tot = cbuf[idx]
                    for t in range(4):
                        xv = self.x[row0 // _ROWS + a, k0 // self.kstep, r,
                                    4 * q + t].astype("int32")  # fmt: skip
                        wv = self.w[g * tn + bt, k0 // 4 + q, c // 8, 4 * (c % 8) + t]
                        tot = tot + xv * wv.astype("int32")
                    T.buffer_store(cbuf, tot, [idx])

    def _prefetch_b(self, g: Any, b: Any) -> None:
        """Ask for block ``b``'s B tiles (one 64-byte row per K-quad) while this block runs:
        the weights stream from memory once per chunk of rows, and a tile load that
        misses holds up everything behind it."""
        with T.serial(0, self.block // 4) as q:
            for bt in range(self.tn):
                line = tirx.address_of(self.w[g * self.tn + bt, b * (self.block // 4) + q, 0, 0])
                _amx_prefetch(line)

    def _zero_c(self, cbuf: Any, half: Any) -> None:
        if not self.emulated:
            for a in range(self.tm):
                for bt in range(self.tn):
                    _amx("tilezero", _i8(_C + 2 * a + bt))
            return
        with T.serial(0, self.half // _COLS) as v:
            T.buffer_store(cbuf, _bc(tirx.const(0, "int32"), _COLS),
                           [tirx.Ramp(half * self.half + v * _COLS, 1, _COLS)])  # fmt: skip

    def _store_c(self, cbuf: Any, half: Any) -> None:
        if self.emulated:
            return
        for a in range(self.tm):
            for bt in range(self.tn):
                _amx("tilestored64", _i8(_C + 2 * a + bt),
                     tirx.address_of(cbuf[half * self.half + self._c_offset(a, bt)]),
                     tirx.const(self.width * 4, "int64"))  # fmt: skip

    def _rows(self, row0: Any, rows: int, body: Any) -> None:
        """``body(r)`` for rows ``r < rows`` whose ``row0 + r`` is a row of ``y`` (the
        padding rows are skipped)."""
        with T.serial(0, rows) as r:
            if self.m % self.tile_rows:
                with T.If(row0 + r < self.m), T.Then():
                    body(r)
            else:
                body(r)

    def _epilogue(self, cbuf: Any, half: Any, yacc: Any, row0: Any, yrow0: Any, g: Any,
                  b: Any) -> None:  # fmt: skip
        """Block ``b``'s float terms of the tile at rows ``row0`` (its int32 sums in half
        ``half`` of ``cbuf``) added to ``yacc`` from its row ``yrow0``."""

        lanes = self.lanes

        def body(r: Any) -> None:
            i = row0 + r
            for v in range(self.width // lanes):
                cols = tirx.Ramp(g * self.width + v * lanes, 1, lanes)
                src = tirx.Ramp(half * self.half + r * self.width + v * lanes, 1, lanes)
                dst = tirx.Ramp((yrow0 + r) * self.width + v * lanes, 1, lanes)
                term = block_term(cbuf[src], [p[b, i] for p in self.rows],
                                  [c[b, cols] for c in self.cols], block=self.block,
                                  lanes=lanes, bias_x=self.bias_x,
                                  f32_bounds=self.bounds)  # fmt: skip
                T.buffer_store(yacc, yacc[dst] + term, [dst])

        self._rows(row0, self.tile_rows, body)

    def chunk(self, cbuf: Any, yacc: Any, row0: Any, g: Any, tiles: int) -> None:
        """Rows ``row0 .. row0 + tiles·16·tm`` of column group ``g``: per block, the tiles
        in turn, each tile's epilogue issued after the next step's ``tdpbusd`` (which run
        on the matrix unit meanwhile); the float sums stay in ``yacc`` across blocks and
        are stored once."""
        rows, nb, tr = tiles * self.tile_rows, self.k // self.block, self.tile_rows
        with T.serial(0, rows * self.width // _COLS) as t:
            T.buffer_store(yacc, _bc(tirx.const(0, "float32"), _COLS),
                           [tirx.Ramp(t * _COLS, 1, _COLS)])  # fmt: skip
        # one sequence of (block, tile) steps, so a step's epilogue always follows the
        # next step's tdpbusd: its sums were stored a whole step earlier (a vector load
        # right after a tile store waits for the store)
        with T.serial(0, nb * tiles) as st:
            b, t, half = st // tiles, st % tiles, st % 2
            self._zero_c(cbuf, half)
            with T.unroll(0, self.block // self.kstep) as s:
                self._dot(cbuf, half, row0 + t * tr, g, b * self.block + s * self.kstep)
            if not self.emulated:
                with T.If(tirx.all(t == 0, b + 1 < nb)), T.Then():
                    self._prefetch_b(g, b + 1)
            with T.If(st > 0), T.Then():
                pb, pt = (st - 1) // tiles, (st - 1) % tiles
                self._epilogue(cbuf, 1 - half, yacc, row0 + pt * tr, pt * tr, g, pb)
            self._store_c(cbuf, half)
        last = nb * tiles - 1
        self._epilogue(cbuf, last % 2, yacc, row0 + (tiles - 1) * tr, (tiles - 1) * tr, g,
                       nb - 1)  # fmt: skip

        def store(r: Any) -> None:
            for v in range(self.width // _COLS):
                cols = tirx.Ramp(g * self.width + v * _COLS, 1, _COLS)
                src = tirx.Ramp(r * self.width + v * _COLS, 1, _COLS)
                T.buffer_store(self.y, yacc[src], [row0 + r, cols])

        self._rows(row0, rows, store)


def te_tile_codes(xq: Any, *, kstep: int, rows: int, name: str) -> Any:
    """``xu uint8 [Mp/16, K/kstep, 16, kstep]``: ``xq + 128`` in A tiles, each one contiguous,
    rows padded with zeros to ``Mp``, a multiple of ``rows``. Rows of ``xq`` itself lie K
    bytes apart, so a tile load from it touches 16 addresses 4 KiB apart at K = 4096, which
    all fall in the same L1 sets."""
    m, k = (int(d) for d in xq.shape)
    mp = -(-m // rows) * rows

    def value(ti: Any, ks: Any, r: Any, e: Any) -> Any:
        i = ti * _ROWS + r
        xu = (xq[tirx.min(i, m - 1), ks * kstep + e].astype("int32") + 128).astype("uint8")
        return xu if mp == m else tirx.Select(i < m, xu, tirx.const(0, "uint8"))

    return te.compute((mp // _ROWS, k // kstep, _ROWS, kstep), value, name=f"{name}_xu",
                      attrs={"rq.stage": "prep"})  # fmt: skip


def te_float_origins(row: Sequence[Any], *, bias_x: int, name: str) -> list[Any]:
    """The row parts with ``cx + bias_x`` and ``S̃_X`` as float32 (exact: integers well
    within 2²⁴ wherever :func:`.epilogue.exact_in_f32` holds), for a kernel that passes
    ``bias_x = 0`` to :func:`.epilogue.block_term`: the same float operations on the same
    values."""
    xs, cx, sxt, x0, xk = row
    shape = [int(d) for d in cx.shape]
    cxf = te.compute(shape, lambda *i: (cx(*i) + bias_x).astype("float32"), name=f"{name}_cxf",
                     attrs={"rq.stage": "prep"})  # fmt: skip
    sxf = te.compute(shape, lambda *i: sxt(*i).astype("float32"), name=f"{name}_sxf",
                     attrs={"rq.stage": "prep"})  # fmt: skip
    return [xs, cxf, sxf, x0, xk]


def amx_matmul(
    xq: Any, wp: Any, row: Sequence[Any], col_t: Sequence[Any], *, block: int, w_bits: int,
    w_signed: bool, isa: str, name: str, attrs: dict[str, Any],
) -> Any:  # fmt: skip
    """``Y f32 [M, N]`` from codes ``xq int8 [M, K]``, the panels of :func:`te_pack_amx_panels`
    and the epilogue's row parts and transposed column parts (:mod:`.epilogue`).

    Raises:
        NumericsError: an unknown ``isa``, or a shape :func:`amx_supported` rejects.
    """
    if isa not in AMX_ISAS:
        raise NumericsError(f"{name}: unknown AMX isa {isa!r}; use one of {AMX_ISAS}.")
    m, k = (int(d) for d in xq.shape)
    n = int(wp.shape[0]) * _COLS
    if (int(wp.shape[2]), int(wp.shape[3])) != (2, 32) or int(wp.shape[1]) * 4 != k \
            or not amx_supported(n=n, k=k, block=block):  # fmt: skip
        raise NumericsError(f"{name}: the AMX kernel needs N % 16 == 0, a block of whole "
                            f"K-quads dividing K and weights packed for it with K={k} "
                            f"(N={n}, block={block}, packed {tuple(wp.shape)}).")  # fmt: skip
    tm, tn = amx_tile(n, m)
    xu = te_tile_codes(xq, kstep=_kstep(block), rows=_ROWS * tm, name=name)
    mp = int(xu.shape[0]) * _ROWS
    bounds = (128, w_code_max(w_bits, w_signed))

    def body(in_bufs: list[Any], out_bufs: list[Any]) -> Any:
        x, w, *eps = in_bufs
        walk = _Walk(x, w, eps, out_bufs[0], m=m, k=k, block=block, tm=tm, tn=tn,
                     emulated=isa == "amx_emulated", f32_bounds=bounds)  # fmt: skip
        tiles = _CHUNK_ROWS // walk.tile_rows  # per chunk of rows
        full, rest = divmod(mp // walk.tile_rows, tiles)
        with IRBuilder() as ib, T.parallel(0, n // walk.width) as g:
            cfg = scratch(64, "uint8")
            cbuf = scratch(2 * walk.half, "int32")
            yacc = scratch(min(mp, _CHUNK_ROWS) * walk.width, "float32")
            walk.configure(cfg)
            if full:
                with T.serial(0, full) as c:
                    walk.chunk(cbuf, yacc, c * _CHUNK_ROWS, g, tiles)
            if rest:
                walk.chunk(cbuf, yacc, tirx.const(full * _CHUNK_ROWS, "int32"), g, rest)
            walk.release()
        return ib.get()

    if exact_in_f32(block, *bounds, 128):
        row = te_float_origins(row, bias_x=128, name=name)
    # [nb, M]: the epilogue walks a block's rows in turn (module docstring, row parts)
    row = transposed(row, name, {"rq.stage": "prep"})
    return te.extern((m, n), [xu, wp, *row, *col_t], body, name=name, dtype="float32",
                     attrs=attrs)  # fmt: skip
