"""x86 XNOR-popcount micro-kernel for the fused A1W1 matmul (AVX2, AVX-512 VPOPCNTDQ), in TIR.

The emitter prefers :mod:`x86.xnor_panel` (weights packed once, 1.5-2x faster); this
kernel, which needs no packing, serves the shapes the panels do not take (``N % 8 != 0``).

Why hand-written: the generic TE kernel popcounts one 32-bit word per (row, column, word)
and reduces it to int32 at once (LLVM vectorizes that into the ``vpshufb`` LUT sequence,
but across output columns with a word-sized reduction per step), then the epilogue is a
separate loop nest. Here one ``mr x 8`` tile of outputs (``mr`` rows, 8 columns: one
float32x8 epilogue vector per row) walks K in 256-bit steps:

* **Core.** Per step, ``x`` (``mr`` rows) and ``w`` (8 columns) are each loaded once as
  uint32x8 vectors of packed sign words, with no weight repacking. Each pair is XORed and
  popcounted into one vector of partial counts:
  ``avx2``: nibble-LUT ``vpshufb`` byte counts, summed in bytes over up to 31 steps (bytes
  hold 255 ≥ 31·8) and widened once per block by ``vpsadbw`` (64-bit lanes) or, for
  32-bit blocks, ``vpmaddubsw`` + ``vpmaddwd`` (32-bit lanes);
  ``avx512_vpopcntdq``: ``llvm.ctpop`` on 64- (or 32-) bit lanes, i.e. ``vpopcntq``/``d``.
* **Block sums.** The 8 per-column count vectors of a row go through one or two levels of
  ``vphaddd`` and a lane shuffle, which leaves ``popcount(x ⊕ w)`` of each block covered
  by the step as one int32x8 vector over the 8 columns (:func:`_block_sums`; the lane
  layout is derived, and checked, at build time). A 256-bit step covers ``256/block``
  blocks (block ≤ 256), or a block spans ``block/256`` steps.
* **Epilogue.** ``P = block - 2·popcount(x ⊕ w)`` (= ``2·popcount(XNOR) - block``) feeds the
  block term of :mod:`.epilogue` right away, per tile and block, in float32x8 (accumulated
  in block order), so ``P`` never goes to memory. The epilogue's column parts are
  transposed into a stack buffer once per column group, so GEMV (``M = 1``) streams ``w``
  and them exactly once, with software prefetches one column group ahead
  (:func:`_prefetch`).

Integer results are bit-exact (``tests/targets/tvm/x86/test_xnor.py``). Shapes the
kernel does not take (:func:`xnor_supported`) use the generic TE kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import IRBuilder, T, te, tirx
from rqcompile.targets.tvm.kernels.common import dim
from rqcompile.targets.tvm.kernels.epilogue import block_term, split_parts
from rqcompile.targets.tvm.x86.micro import _divisor, _intrin, _lanes

__all__ = ["XNOR_ISAS", "xnor_matmul_micro", "xnor_supported"]

#: ``isa`` values of the micro-kernel (``schedules.kernel_options`` picks one per target).
XNOR_ISAS = ("avx2", "avx512_vpopcntdq")
_NR = 8  # output columns per tile: one float32x8 epilogue vector per row
_STEP = 8  # uint32 words per 256-bit step
_PHADDD = "llvm.x86.avx2.phadd.d"


def xnor_supported(*, k: int, block: int) -> bool:
    """Whether the micro-kernel handles ``K``/``block`` (else the generic kernel is used).

    K must be whole 256-bit steps, and a block either a divisor of 256 bits (32, 64, 128,
    256) or a multiple; the epilogue must fit int32 (``2·B² < 2³¹``).
    """
    fits = block in (32, 64, 128) or block % 256 == 0
    return fits and block > 0 and k % block == 0 and k % 256 == 0 and 2 * block * block < 2**31


def nibble_lut() -> Any:
    """The ``vpshufb`` table ``popcount(i & 15)`` for every byte (LLVM folds it to a constant)."""
    ramp = tirx.Ramp(tirx.const(0, "uint8"), tirx.const(1, "uint8"), 32)
    return _intrin("uint8x32", "llvm.ctpop", tirx.bitwise_and(ramp, _u8(15)))


def byte_counts_to_dwords(acc: Any) -> Any:
    """int32x8 sums of each 4-byte group of the uint8x32 counts ``acc``: ``vpmaddubsw`` then
    ``vpmaddwd`` with ones."""
    pairs = _intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", acc, tirx.const(1, "int8x32"))
    return _intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs, tirx.const(1, "int16x16"))


class _LutPopcount:
    """AVX2: ``vpshufb`` nibble-LUT byte counts; widened by ``vpsadbw`` or madd (32-bit)."""

    elem, lanes, max_steps = "uint8", 32, 31

    def __init__(self, dword: bool) -> None:
        self.dword = dword
        self.lut = nibble_lut()

    def count(self, v: Any) -> Any:
        b = tirx.reinterpret("uint8x32", v)
        lo = tirx.bitwise_and(b, _u8(15))
        hi = tirx.shift_right(b, _u8(4))
        shuf = "llvm.x86.avx2.pshuf.b"
        return _intrin("uint8x32", shuf, self.lut, lo) + _intrin("uint8x32", shuf, self.lut, hi)

    def finish(self, acc: Any) -> Any:
        if self.dword:
            return byte_counts_to_dwords(acc)
        sad = _intrin("int64x4", "llvm.x86.avx2.psad.bw", acc, _u8(0))
        return tirx.reinterpret("int32x8", sad)


class _Vpopcnt:
    """AVX-512 VPOPCNTDQ: ``llvm.ctpop`` on 64-bit (``vpopcntq``) or 32-bit lanes."""

    max_steps = 1 << 20  # 64-bit lanes: no overflow to worry about

    def __init__(self, dword: bool) -> None:
        self.elem, self.lanes = ("uint32", 8) if dword else ("uint64", 4)

    def count(self, v: Any) -> Any:
        dt = f"{self.elem}x{self.lanes}"
        return _intrin(dt, "llvm.ctpop", tirx.reinterpret(dt, v))

    def finish(self, acc: Any) -> Any:
        return tirx.reinterpret("int32x8", acc)


def _u8(v: int) -> Any:
    return tirx.const(v, "uint8x32")


def _hadd_labels(a: list[frozenset], b: list[frozenset]) -> list[frozenset]:
    """Lane contents of ``vphaddd(a, b)``: neighbour sums within each 128-bit half."""
    out = []
    for h in (0, 4):
        out += [a[h] | a[h + 1], a[h + 2] | a[h + 3], b[h] | b[h + 1], b[h + 2] | b[h + 3]]
    return out


def _block_sums(vecs: list[Any], words: int) -> list[Any]:
    """Per-block sums over 8 columns from 8 per-column int32x8 count vectors.

    ``vecs[j]`` lane ``l`` holds the count of word ``l`` of column ``j`` (zero lanes are
    fine: 64-bit counts sit in even lanes). Returns one int32x8 per block of ``words``
    32-bit words (``8 // words`` of them; ``words >= 8`` means the whole step is one
    block): ``log2(words)`` (at most 2) ``vphaddd`` levels, then lane shuffles, derived
    by tracking which (column, word) counts every lane holds.
    """
    g = min(words, _STEP)
    labels = [[frozenset({(j, w)}) for w in range(_STEP)] for j in range(_NR)]
    for _ in range({1: 0, 2: 1, 4: 2, 8: 2}[g]):
        vecs = [_intrin("int32x8", _PHADDD, vecs[i], vecs[i + 1]) for i in range(0, len(vecs), 2)]
        labels = [_hadd_labels(labels[i], labels[i + 1]) for i in range(0, len(labels), 2)]
    out = []
    for t in range(_STEP // g):
        parts: list[list[int]] = []  # parts[p][j]: flat (vector, lane) index of part p
        for j in range(_NR):
            want = {(j, w) for w in range(t * g, t * g + g)}
            idx = [v * 8 + ln for v, lab in enumerate(labels) for ln, s in enumerate(lab)
                   if s and s <= want]  # fmt: skip
            got = set().union(*(labels[i // 8][i % 8] for i in idx))
            if got != want:  # pragma: no cover - a layout bug, caught at build time
                raise NumericsError(f"xnor micro-kernel: lanes {idx} do not cover {want}")
            for p, i in enumerate(idx):
                parts.extend([] for _ in range(p + 1 - len(parts)))
                parts[p].append(i)
        total = None
        for idx in parts:
            used = sorted({i // 8 for i in idx})
            sel = [used.index(i // 8) * 8 + i % 8 for i in idx]
            v = tirx.Shuffle([vecs[u] for u in used], sel)
            total = v if total is None else total + v
        out.append(total)
    return out


def _kernel(pop: Any, x: Any, w: Any, eps: list[Any], y: Any, *, block: int, mr: int) -> Any:
    """TIR statement: ``mr x 8`` tiles, 256-bit steps, block sums, epilogue (module doc)."""
    row_parts, col_parts = split_parts(eps)
    m, n = (dim(d) for d in y.shape)
    nwords, g = int(x.shape[1]), block // 32
    nb = nwords // g
    per_step = max(1, _STEP // g)  # blocks per 256-bit step
    steps = max(1, g // _STEP)  # steps per block
    grp = _divisor(steps, pop.max_steps)  # steps summed in the narrow counter
    chunk = max(_STEP, g)  # words per iteration of the chunk loop
    acc_vec = f"{pop.elem}x{pop.lanes}"

    def bc(v: Any) -> Any:
        return tirx.Broadcast(v, _NR)

    with IRBuilder() as ib, T.parallel(0, (n + _NR - 1) // _NR) as jo:

        def col(jj: int) -> Any:
            return jo * _NR + jj if n % _NR == 0 else tirx.min(jo * _NR + jj, n - 1)

        # "global", not "local": TVM 0.27 serves every "local" allocation with a heap
        # workspace call per loop iteration, which LLVM cannot promote to registers; small
        # "global" ones become stack allocas that it does (2.6x faster kernel)
        col_t = [T.decl_buffer((nb * _NR,), str(c.dtype), scope="global") for c in col_parts]
        xv = T.decl_buffer((mr * _STEP,), "uint32", scope="global")
        wv = T.decl_buffer((_NR * _STEP,), "uint32", scope="global")
        cnt = T.decl_buffer((mr * _NR * pop.lanes,), pop.elem, scope="global")
        tot = T.decl_buffer((mr * _NR * 8,), "int32", scope="global")
        yacc = T.decl_buffer((mr * _NR,), "float32", scope="global")
        with T.serial(0, (nb + 15) // 16) as bl:  # the next group's operands, a line each
            for jj in range(_NR):
                for arr in col_parts:
                    _prefetch(arr, tirx.min(jo * _NR + _NR + jj, n - 1), bl * 16)
        with T.serial(0, nb) as b:  # the column parts of the epilogue, transposed to [nb, 8]
            for jj in range(_NR):
                for src, dst in zip(col_parts, col_t, strict=True):
                    T.buffer_store(dst, src[col(jj), b], [b * _NR + jj])
        with T.serial(0, m // mr) as io:
            for ii in range(mr):
                T.buffer_store(yacc, bc(tirx.const(0, "float32")), [_lanes(ii, _NR)])
            with T.serial(0, nwords // chunk) as c:
                if steps > grp:
                    for t in range(mr * _NR):
                        T.buffer_store(tot, bc(tirx.const(0, "int32")), [_lanes(t, 8)])
                with T.serial(0, steps // grp) as gs:
                    if grp > 1:
                        for t in range(mr * _NR):
                            T.buffer_store(cnt, tirx.const(0, acc_vec), [_lanes(t, pop.lanes)])
                    with T.serial(0, grp) as st:
                        base = c * chunk + (gs * grp + st) * _STEP
                        for ii in range(mr):
                            T.buffer_store(xv, x[io * mr + ii, tirx.Ramp(base, 1, _STEP)],
                                           [_lanes(ii, _STEP)])  # fmt: skip
                        for jj in range(_NR):
                            T.buffer_store(wv, w[col(jj), tirx.Ramp(base, 1, _STEP)],
                                           [_lanes(jj, _STEP)])  # fmt: skip
                        for jj in range(_NR):  # the next column group's words
                            _prefetch(w, tirx.min(jo * _NR + _NR + jj, n - 1), base)
                        for ii in range(mr):
                            for jj in range(_NR):
                                t = _lanes(ii * _NR + jj, pop.lanes)
                                v = pop.count(tirx.bitwise_xor(xv[_lanes(ii, _STEP)],
                                                               wv[_lanes(jj, _STEP)]))  # fmt: skip
                                T.buffer_store(cnt, cnt[t] + v if grp > 1 else v, [t])
                    for t in range(mr * _NR):
                        wide = pop.finish(cnt[_lanes(t, pop.lanes)])
                        T.buffer_store(tot, tot[_lanes(t, 8)] + wide if steps > grp else wide,
                                       [_lanes(t, 8)])  # fmt: skip
                for ii in range(mr):
                    i = io * mr + ii
                    pcs = _block_sums([tot[_lanes(ii * _NR + jj, 8)] for jj in range(_NR)], g)
                    for t, pc in enumerate(pcs):
                        b = c * per_step + t
                        jv = _lanes(b, _NR)
                        p = bc(tirx.const(block, "int32")) - pc * bc(tirx.const(2, "int32"))
                        term = block_term(p, [r[i, b] for r in row_parts],
                                          [c[jv] for c in col_t], block=block, lanes=_NR,
                                          f32_bounds=(1, 1))  # fmt: skip
                        yl = _lanes(ii, _NR)
                        T.buffer_store(yacc, yacc[yl] + term, [yl])
            for ii in range(mr):
                _store_row(y, yacc, io * mr + ii, ii, jo, n)
    return ib.get()


def _prefetch(buf: Any, *idx: Any) -> None:
    """``llvm.prefetch`` (read, keep in all levels) of ``buf[idx]``'s cache line.

    GEMV streams ``w`` and its epilogue operands once, in rows of a few hundred bytes per
    column: too short for the hardware prefetcher. Prefetching the next column group's
    rows made the M=1, K=N=4096 kernel 1.5x faster; at M >= 64 it costs nothing measurable.
    """
    one = tirx.const(1, "int32")
    T.evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch", tirx.address_of(buf[idx]),
                                     tirx.const(0, "int32"), tirx.const(3, "int32"), one))


def _store_row(y: Any, yacc: Any, i: Any, ii: int, jo: Any, n: int) -> None:
    """``y[i, 8·jo : 8·jo + 8] = yacc[ii]``, lane by lane in a partial last column group."""
    full = tirx.Ramp(jo * _NR, 1, _NR)
    if n % _NR == 0:
        T.buffer_store(y, yacc[_lanes(ii, _NR)], [i, full])
        return
    with T.If(jo < n // _NR):
        with T.Then():
            T.buffer_store(y, yacc[_lanes(ii, _NR)], [i, full])
        with T.Else():
            for jj in range(n % _NR):
                T.buffer_store(y, yacc[ii * _NR + jj], [i, jo * _NR + jj])


def xnor_matmul_micro(
    xbits: Any,
    wbits: Any,
    row: Sequence[Any],
    col: Sequence[Any],
    *,
    block: int,
    isa: str,
    name: str,
    attrs: dict[str, Any],
    mr: int = 2,
) -> Any:
    """``Y f32 [M, N]``: XNOR-popcount core + epilogue (:mod:`.epilogue`), one TIR kernel.

    Args:
        xbits, wbits: ``uint32 [M, K/32]``, ``uint32 [N, K/32]`` sign words (bitpack.py).
        row, col: the epilogue's row and column parts (:mod:`.epilogue`), ``[M, nb]`` and
            ``[N, nb]``.
        isa: one of :data:`XNOR_ISAS`.
        mr: rows per register tile (clamped to a divisor of M).

    Raises:
        NumericsError: unknown ``isa`` or a shape :func:`xnor_supported` rejects.
    """
    m, nwords = (dim(d) for d in xbits.shape)
    if isa not in XNOR_ISAS or not xnor_supported(k=nwords * 32, block=block):
        raise NumericsError(f"{name}: the XNOR micro-kernel takes isa in {XNOR_ISAS} and "
                            f"K % 256 == 0 with block 32/64/128 or a multiple of 256 "
                            f"(isa={isa!r}, K={nwords * 32}, block={block}).")  # fmt: skip
    dword = block == 32
    pop = _LutPopcount(dword) if isa == "avx2" else _Vpopcnt(dword)
    rows = _divisor(m, mr) if isinstance(m, int) else 1  # symbolic m: one-row tiles

    def body(ins: list[Any], outs: list[Any]) -> Any:
        x, w, *eps = ins
        return _kernel(pop, x, w, eps, outs[0], block=block, mr=rows)

    ins = [xbits, wbits, *row, *col]
    return te.extern((m, int(wbits.shape[0])), ins, body, name=name, dtype="float32",
                     attrs=attrs)  # fmt: skip
