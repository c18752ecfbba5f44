"""Weight-only matmul (``rq.wo_matmul``, presets ``W4``/``W8``): float activations times
integer weight codes read packed and dequantized in registers, one TIR kernel.

Batch-1 decode (GEMV, M = 1..8) is bound by the bytes of weights it reads, so the kernel
reads the stored codes, never a float copy of the weights: 4-bit codes two per byte
(K·N/2 bytes, 1/8 of fp32), 8-bit codes one per byte.

* **Panels** (:func:`te_pack_wo_panels`, once, when the weights are bound; the build lifts
  it out of ``main`` like the integer panels): ``wp [N/P, K/e, P]`` with ``P = lanes·nv``
  output columns side by side and ``e`` codes per byte (2 for nibbles, 1 for 8-bit codes).
  8-bit codes: byte ``[g, t, c]`` is code ``t`` of column ``g·P + c``. Nibbles (``nv = 4``):
  byte ``[g, t, 4l + v]`` holds codes ``2t`` (low nibble) and ``2t + 1`` of column
  ``g·P + v·lanes + l``, so the 32-bit word ``l`` of a step holds one byte of each of the
  ``nv`` column vectors; signed nibbles are stored offset to ``0..15`` (``wc`` absorbs the
  offset, ``wc - 8·ws``). One step of K reads ``P`` contiguous bytes, and a group's panel
  streams sequentially through memory (each block prefetches the block two ahead). The
  block scale and offset are transposed to ``[nb, N]``.
* **Inner step**, 8-bit codes (per code of K, per ``lanes`` columns): one widening load
  (``vpmovsxbd``), ``cvtdq2ps``, and per row one FMA with the broadcast activation.
  Nibbles (per two codes of K, per ``P`` columns): one load of ``P`` bytes as ``lanes``
  words and one ``>> 4`` of them; vector ``v``'s low / high codes are the word / shifted word
  masked with ``15 << 8v`` and converted in place: ``cvtdq2ps`` gives ``q·2^(8v)``
  (``<= 15·2^24``: exact in int32 and float32), so each code costs a mask, a convert and
  an FMA (an 8-bit code: a widening load, a convert and an FMA) for half the bytes. The
  products and sums of vector ``v`` are those of ``q`` times ``2^(8v)`` exactly (a power of
  two; only an activation beyond ~1e30 would overflow), and the block sum is scaled back by
  ``2^(-8v)``. The scale is not applied per element: each block's sum ``Σ_k x·q`` is scaled
  once, ``y += ws_b·Σ_k x·q + wc_b·Σ_k x`` (``Σ_k x`` per row and block is a small TE
  stage), so the dequantized weight ``ws·q + wc`` is never formed. A 16-entry float table
  (``vpermps`` indexed by the nibble) was the alternative: on AVX-512 it costs the same
  per code (a shift to bring each nibble down, the permute, the FMA), and AVX2's ``vpermps``
  indexes only 8 entries.
* **Tile**: ``mr`` rows x ``nv`` vectors of ``lanes`` float32 accumulators; with one row the
  codes of a byte go to separate accumulators (``nv·e`` independent FMA chains instead of
  ``nv``); the inner loop is unrolled 4 steps. AVX-512 (``isa="avx512"``): zmm, 16 lanes,
  ``nv = 4`` (64 columns per panel),
  up to 4 rows; AVX2: ymm, 8 lanes, ``nv = 4`` (32 columns), up to 2 rows. Any M runs (a
  row tile is a divisor of M).
* **GEMM walk** (from :data:`GEMM_MIN_ROWS` rows): the GEMV walk would decode every code
  again for each row tile, so instead each block of a panel is decoded once per chunk of
  128 rows into a float32 tile in L1 and the row tiles run a plain FMA GEMM on it (16 FMAs,
  4 loads and 4 broadcasts per code step on AVX-512), then the same block term. The same
  products in the same order: the two walks give the same bits. W4, K = N = 4096, one
  thread: 1.16-1.19x the GEMV walk at M = 16, 64, 256, ~150 GFLOP/s, about torch's fp32
  GEMM (``benchmarks/wo_walks.py``).
* **Threads**: a ``parallel`` loop over the column panels; the runtime runs a call on one
  thread when its work is small (``targets/tvm/threads.py``).

No x86 instruction is named: the TIR uses vector types and LLVM's target-independent
``llvm.prefetch`` only, so LLVM selects the instructions for the target, and every row builds
and runs on any x86 host (an AVX-512 row on an AVX2 host splits each zmm operation in two);
no emulated row is needed. Numerics: the reference (``quant.reference.wo_matmul``)
dequantizes in float64; this kernel sums in float32 per block (and rounds ``wc - 8·ws``
once for signed nibbles), so the two agree to float32 rounding of ``Σ|x|·(|ws·q| + |wc|)``.
"""

from __future__ import annotations

from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import IRBuilder, T, te, tirx
from rqcompile.targets.tvm.kernels.common import scratch

__all__ = ["GEMM_MIN_ROWS", "WO_ISAS", "te_pack_wo_panels", "wo_geometry", "wo_panel_matmul",
           "wo_panel_supported"]  # fmt: skip

#: ``isa`` → (float32 lanes per vector, vectors per panel, most rows per tile)
_GEOMETRY = {"avx512": (16, 4, 4), "avx2": (8, 4, 2)}
WO_ISAS = tuple(_GEOMETRY)
#: steps of K per trip of the inner loop (its counter and address updates are ~9
#: instructions a trip, against 25 that decode and multiply one 4-bit step)
_UNROLL = 4
#: blocks ahead that a block prefetches (a line at a time, outside the inner loop): the
#: hardware prefetcher alone left W4 at ~2.5 GB/s from DRAM; 2 blocks ahead measured ~10%
#: faster cold (1 block about the same), see benchmarks/README.md
_PREFETCH = 2
#: Rows from which a call decodes each block of a panel once into a float tile (and runs a
#: plain FMA GEMM on it) instead of decoding per row tile (:func:`_gemm_walk`). The GEMV
#: walk decodes every code again for each tile of ``max_rows`` rows: at 4 rows, 2 of every
#: 6 vector operations are decode. Measured (``benchmarks/wo_walks.py``, W4, K = N = 4096,
#: one thread): 1.18x at M = 16, 1.19x at 64, 1.16x at 256.
GEMM_MIN_ROWS = 16
#: Rows per chunk of the GEMM walk: the chunk's float sums (``rows x 64`` float32, 32 KiB)
#: stay cached across the blocks, and each decoded block is used by every row of the chunk.
_GEMM_CHUNK_ROWS = 128
#: Column panels per parallel task of the GEMM walk where the activations outgrow
#: :data:`_GEMM_X_CACHED` bytes: a task then runs each block of the chunk's rows through
#: this many panels in turn, so that block of ``x`` is read from memory once per 4 panels
#: instead of once per panel (the row tile's broadcasts read ``x``; at M = 256, K = 4096
#: that is 4 MiB, more than L2, streamed again for each 64-column panel). Measured
#: (K = N = 4096, one thread, one process, interleaved): M = 256 70.1 -> 66.7 ms, 2048 x 256
#: 15.6 -> 15.0; M = 64 (1 MiB) 16.8 -> 16.5; the same bits.
_GEMM_PANEL_SET = 4
_GEMM_X_CACHED = 1 << 20


def wo_geometry(isa: str) -> tuple[int, int, int]:
    """``(lanes, nv, max_rows)`` of the tile for ``isa`` (panel width ``lanes·nv``)."""
    if isa not in _GEOMETRY:
        raise NumericsError(f"wo_matmul: unknown isa {isa!r}; use one of {WO_ISAS}.")
    return _GEOMETRY[isa]


def _per_byte(w_bits: int) -> int:
    return 2 if w_bits <= 4 else 1


def wo_panel_supported(*, n: int, k: int, block: int, w_bits: int, isa: str) -> bool:
    """Whether the panel kernel takes this shape: whole panels of columns, blocks of whole
    bytes dividing K."""
    lanes, nv, _ = wo_geometry(isa)
    e = _per_byte(w_bits)
    return n % (lanes * nv) == 0 and block % e == 0 and block > 0 and k % block == 0


def te_pack_wo_panels(
    wq: Any, ws: Any, wc: Any, *, block: int, w_bits: int, isa: str, name: str,
    attrs: dict[str, Any], w_signed: bool = False,
) -> tuple[Any, Any, Any]:  # fmt: skip
    """``(wp, ws_t, wc_t)``: the panels of the module docstring from ``wq`` (``int8 [N, K]``
    or nibble bytes ``uint8 [N, K/2]``), and ``ws``/``wc`` as ``[nb, N]``.

    8-bit codes keep their bytes, column ``c`` of a panel at byte ``c``. Nibble bytes go in
    word order (:func:`_nibble_word`): byte ``4l + v`` of a step holds column ``v·lanes + l``,
    so the little-endian 32-bit word ``l`` holds the bytes of columns ``l, lanes + l, ...``;
    signed nibbles are stored offset to ``0..15`` (``q + 8``, i.e. ``byte ^ 0x88``) and the
    offset goes into the block term, ``wc_t = wc - 8·ws``."""
    lanes, nv, _ = wo_geometry(isa)
    p = lanes * nv
    n, kb = (int(d) for d in wq.shape)  # kb: bytes per row
    nb = int(ws.shape[1])
    if n % p:
        raise NumericsError(f"{name}: N={n} is not a multiple of the {p}-column panel.")
    if w_bits > 4:
        wp = te.compute((n // p, kb, p), lambda g, t, c: wq[g * p + c, t], name=f"{name}_wp",
                        attrs=attrs)  # fmt: skip
    else:
        flip = tirx.const(0x88 if w_signed else 0, "uint8")
        wp = te.compute((n // p, kb, p), lambda g, t, c: tirx.bitwise_xor(
            wq[g * p + (c % nv) * lanes + c // nv, t], flip), name=f"{name}_wp",
            attrs=attrs)  # fmt: skip
    ws_t = te.compute((nb, n), lambda b, j: ws[j, b], name=f"{name}_ws_t", attrs=attrs)
    if w_bits <= 4 and w_signed:
        wc_t = te.compute((nb, n), lambda b, j: wc[j, b] - tirx.const(8.0, "float32") * ws[j, b],
                          name=f"{name}_wc_t", attrs=attrs)  # fmt: skip
    else:
        wc_t = te.compute((nb, n), lambda b, j: wc[j, b], name=f"{name}_wc_t", attrs=attrs)
    return wp, ws_t, wc_t


def _decode8(raw: Any, lanes: int) -> Any:
    """The float32 codes of ``lanes`` int8 bytes."""
    return tirx.Cast(f"float32x{lanes}", tirx.Cast(f"int32x{lanes}", raw))


def _nibble_word(raw: Any, lanes: int, v: int, high: bool) -> Any:
    """The nibble codes of column vector ``v`` (low nibble: code ``2s``, high: ``2s + 1``)
    from the ``4·lanes`` bytes ``raw`` of a step, as float32 **times** ``2^(8v)``: the word
    (``raw >> 4`` for the high nibbles) masked with ``15 << 8v`` and converted, no shift to
    the bottom. Exact: ``q·2^(8v) <= 15·2^24`` is an int32 and a float32; the block sum is
    scaled back by ``2^(-8v)`` (an exact power of two)."""
    word = tirx.reinterpret(f"uint32x{lanes}", raw)
    if high:
        word = tirx.shift_right(word, tirx.Broadcast(tirx.const(4, "uint32"), lanes))
    masked = tirx.bitwise_and(word, tirx.Broadcast(tirx.const(15 << (8 * v), "uint32"), lanes))
    return tirx.Cast(f"float32x{lanes}", tirx.reinterpret(f"int32x{lanes}", masked))


def _divisor(n: int, want: int) -> int:
    return next(d for d in range(min(want, n), 0, -1) if n % d == 0)


def wo_panel_matmul(
    x: Any, wp: Any, ws_t: Any, wc_t: Any, *, block: int, w_bits: int, w_signed: bool,
    isa: str, name: str, attrs: dict[str, Any],
) -> Any:  # fmt: skip
    """``Y f32 [M, N]`` from ``x f32 [M, K]`` and the outputs of :func:`te_pack_wo_panels`
    (built with the same ``isa``).

    From :data:`GEMM_MIN_ROWS` rows, where a row tile has more than one row, the GEMM walk
    (:func:`_gemm_walk`: each block decoded once per chunk of rows); else the GEMV walk
    below (decoded in registers per row tile). Both give the same bits (same products,
    same order of the sums, the same :func:`_add_block_sum`).

    Raises:
        NumericsError: a shape :func:`wo_panel_supported` rejects, or panels of another isa.
    """
    lanes, nv, max_rows = wo_geometry(isa)
    pw = lanes * nv
    m, k = (int(d) for d in x.shape)
    groups, steps_k, p_in = (int(d) for d in wp.shape)
    n = groups * pw
    e = _per_byte(w_bits)
    if p_in != pw or steps_k * e != k or not wo_panel_supported(n=n, k=k, block=block,
                                                                w_bits=w_bits, isa=isa):
        raise NumericsError(f"{name}: panels {tuple(int(d) for d in wp.shape)} do not fit "
                            f"x [{m}, {k}] at block {block} for isa {isa!r}; repack.")  # fmt: skip
    nb = k // block
    r = te.reduce_axis((0, block), name="r_xsum")
    xsum = te.compute((m, nb), lambda i, b: te.sum(x[i, b * block + r], axis=r),
                      name=f"{name}_xsum", attrs={"rq.stage": "sums"})  # fmt: skip
    if m >= GEMM_MIN_ROWS:  # any M: its row tiles end with a shorter one where needed
        body_gemm = _gemm_walk(m=m, k=k, groups=groups, block=block, e=e, lanes=lanes, nv=nv,
                               mr=max_rows)  # fmt: skip
        return te.extern((m, n), [x, wp, ws_t, wc_t, xsum], body_gemm, name=name,
                         dtype="float32", attrs=attrs)  # fmt: skip
    mr = _divisor(m, max_rows)
    split = e if mr == 1 else 1  # one row: a chain per code of the byte
    steps = block // e
    unroll = _divisor(steps, _UNROLL)

    def vec(i: Any) -> Any:
        return _vec(i, lanes)

    def body(ins: list[Any], outs: list[Any]) -> Any:
        xb, w, wst, wct, xs = ins
        y = outs[0]
        zero = tirx.Broadcast(tirx.const(0.0, "float32"), lanes)
        with IRBuilder() as ib, T.parallel(0, groups) as g:
            acc = scratch(mr * nv * split * lanes, "float32")
            yacc = scratch(mr * nv * lanes, "float32")
            with T.serial(0, m // mr) as io:
                with T.unroll(0, mr * nv) as t:
                    T.buffer_store(yacc, zero, [vec(t)])
                with T.serial(0, nb) as b:
                    with T.unroll(0, mr * nv * split) as t:
                        T.buffer_store(acc, zero, [vec(t)])
                    if _PREFETCH:  # the next block's panel bytes, a line at a time
                        with T.serial(0, steps * pw // 64) as li:
                            T.evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0",
                                tirx.call_intrin("handle", "tirx.address_of", w[
                                    g, (b + _PREFETCH) * steps + li * (64 // pw),
                                    0]),
                                tirx.const(0, "int32"), tirx.const(3, "int32"),
                                tirx.const(1, "int32")))  # fmt: skip
                    with T.serial(0, steps // unroll) as so, T.unroll(0, unroll) as si:
                        step = b * steps + so * unroll + si
                        if e == 2:  # one load of 4·lanes bytes: 2 codes x nv vectors
                            raw = w[g, step, tirx.Ramp(0, 1, nv * lanes)]
                        for v in range(nv):
                            if e == 2:
                                codes = [_nibble_word(raw, lanes, v, h) for h in (False, True)]
                            else:
                                codes = [_decode8(w[g, step, tirx.Ramp(v * lanes, 1, lanes)],
                                                  lanes)]  # fmt: skip
                            with T.unroll(0, mr) as ii:
                                for c, wv in enumerate(codes):
                                    xv = tirx.Broadcast(xb[io * mr + ii, step * e + c], lanes)
                                    a = vec((ii * nv + v) * split + (c if split > 1 else 0))
                                    T.buffer_store(acc, acc[a] + wv * xv, [a])
                    with T.unroll(0, mr) as ii:
                        for v in range(nv):
                            tot = acc[vec((ii * nv + v) * split)]
                            for c in range(1, split):
                                tot = tot + acc[vec((ii * nv + v) * split + c)]
                            if e == 2 and v:  # the nibbles of vector v sat 8v bits up
                                tot = tot * tirx.Broadcast(
                                    tirx.const(2.0 ** (-8 * v), "float32"), lanes)
                            _add_block_sum(yacc, vec(ii * nv + v), wst, wct, xs, tot,
                                           row=io * mr + ii, col=g * pw + v * lanes, b=b,
                                           lanes=lanes)  # fmt: skip
                with T.unroll(0, mr) as ii, T.unroll(0, nv) as v:
                    T.buffer_store(y, yacc[vec(ii * nv + v)],
                                   [io * mr + ii, tirx.Ramp(g * pw + v * lanes, 1, lanes)])
        return ib.get()

    return te.extern((m, n), [x, wp, ws_t, wc_t, xsum], body, name=name, dtype="float32",
                     attrs=attrs)  # fmt: skip


def _vec(i: Any, lanes: int) -> Any:
    """Float32 vector ``i`` of a buffer of ``lanes``-wide vectors."""
    return tirx.Ramp(i * lanes, 1, lanes)


def _add_block_sum(yacc: Any, t: Any, wst: Any, wct: Any, xs: Any, tot: Any, *, row: Any,
                   col: Any, b: Any, lanes: int) -> None:  # fmt: skip
    """``y += ws_b·Σ_k x·q + wc_b·Σ_k x`` for the ``lanes`` columns from ``col`` of ``row``,
    into vector ``t`` of ``yacc``: block ``b``'s term, written once for both walks, whose
    equal bits rest on this one expression."""
    cols = tirx.Ramp(col, 1, lanes)
    xsv = tirx.Broadcast(xs[row, b], lanes)
    T.buffer_store(yacc, yacc[t] + wst[b, cols] * tot + wct[b, cols] * xsv, [t])


def _decode_step(raw: Any, lanes: int, v: int, high: bool) -> Any:
    """The true nibble codes (``0..15``) of column vector ``v`` from the ``4·lanes`` bytes
    ``raw`` of a step, as float32: the word shifted down by ``8v`` (``+ 4`` for the high
    nibbles) and masked."""
    word = tirx.reinterpret(f"uint32x{lanes}", raw)
    shift = 8 * v + (4 if high else 0)
    if shift:
        word = tirx.shift_right(word, tirx.Broadcast(tirx.const(shift, "uint32"), lanes))
    masked = tirx.bitwise_and(word, tirx.Broadcast(tirx.const(15, "uint32"), lanes))
    return tirx.Cast(f"float32x{lanes}", tirx.reinterpret(f"int32x{lanes}", masked))


def _gemm_walk(*, m: int, k: int, groups: int, block: int, e: int, lanes: int, nv: int,
               mr: int) -> Any:  # fmt: skip
    """The GEMM walk of :func:`wo_panel_matmul`: per set of column panels (parallel; one
    panel unless ``x`` outgrows :data:`_GEMM_X_CACHED`) and chunk of up to
    :data:`_GEMM_CHUNK_ROWS` rows (a divisor of M), each block of a panel's codes is decoded
    once into a float32 tile ``[block, lanes·nv]`` (32 KiB at block 128 on AVX-512: it
    stays in L1), and every ``mr``-row tile of the chunk (the last one shorter where ``mr``
    does not divide the chunk) runs on it with one FMA per code, row and vector (the GEMV
    walk adds a mask and a convert per code and vector for each row tile). The block sum of
    each accumulator gets ``ws·Σ x·q + wc·Σ x`` into the chunk's float sums, as in the GEMV
    walk, on the same products in the same order: the same bits."""
    pw = lanes * nv
    nb, steps = k // block, block // e
    chunk = _divisor(m, _GEMM_CHUNK_ROWS)
    full, tail = divmod(chunk, mr)  # row tiles of mr rows, and one of the rest
    gset = _divisor(groups, _GEMM_PANEL_SET if m * k * 4 > _GEMM_X_CACHED else 1)
    unroll = _divisor(block, _UNROLL)

    def vec(i: Any) -> Any:
        return _vec(i, lanes)

    def body(ins: list[Any], outs: list[Any]) -> Any:
        xb, w, wst, wct, xs = ins
        y = outs[0]
        zero = tirx.Broadcast(tirx.const(0.0, "float32"), lanes)

        def row_tile(acc: Any, yacc: Any, wf: Any, g: Any, b: Any, row0: Any, yrow0: Any,
                     rows: int) -> None:  # fmt: skip
            """``rows`` rows from ``row0`` (``yrow0`` in the chunk) times the decoded block."""
            with T.unroll(0, rows * nv) as t:
                T.buffer_store(acc, zero, [vec(t)])
            with T.serial(0, block // unroll) as ko, T.unroll(0, unroll) as ki:
                kk = ko * unroll + ki
                for v in range(nv):
                    wv = wf[vec(kk * nv + v)]
                    with T.unroll(0, rows) as ii:
                        xv = tirx.Broadcast(xb[row0 + ii, b * block + kk], lanes)
                        a = vec(ii * nv + v)
                        T.buffer_store(acc, acc[a] + wv * xv, [a])
            with T.unroll(0, rows) as ii:
                for v in range(nv):
                    _add_block_sum(yacc, vec((yrow0 + ii) * nv + v), wst, wct, xs,
                                   acc[vec(ii * nv + v)], row=row0 + ii,
                                   col=g * pw + v * lanes, b=b, lanes=lanes)  # fmt: skip

        with IRBuilder() as ib, T.parallel(0, groups // gset) as gs:
            wf = scratch(block * pw, "float32")
            acc = scratch(mr * nv * lanes, "float32")
            yacc = scratch(gset * chunk * pw, "float32")
            with T.serial(0, m // chunk) as c:
                with T.serial(0, gset * chunk * nv) as t:
                    T.buffer_store(yacc, zero, [vec(t)])
                with T.serial(0, nb) as b, T.serial(0, gset) as gi:
                    g = gs * gset + gi
                    with T.serial(0, steps) as st:  # decode the block once
                        step = b * steps + st
                        if e == 2:
                            raw = w[g, step, tirx.Ramp(0, 1, nv * lanes)]
                        for v in range(nv):
                            for h in range(e):
                                if e == 2:
                                    code = _decode_step(raw, lanes, v, bool(h))
                                else:
                                    code = _decode8(w[g, step, tirx.Ramp(v * lanes, 1, lanes)],
                                                    lanes)  # fmt: skip
                                T.buffer_store(wf, code, [vec((st * e + h) * nv + v)])
                    if full:
                        with T.serial(0, full) as io:
                            row_tile(acc, yacc, wf, g, b, c * chunk + io * mr,
                                     gi * chunk + io * mr, mr)  # fmt: skip
                    if tail:
                        row_tile(acc, yacc, wf, g, b, c * chunk + full * mr,
                                 gi * chunk + full * mr, tail)  # fmt: skip
                with T.serial(0, gset) as gi, T.serial(0, chunk) as r, T.unroll(0, nv) as v:
                    T.buffer_store(y, yacc[vec((gi * chunk + r) * nv + v)],
                                   [c * chunk + r,
                                    tirx.Ramp((gs * gset + gi) * pw + v * lanes, 1, lanes)])
        return ib.get()

    return body
