"""x86 AVX2 micro-kernels for the fused integer-affine matmul, written in TIR with LLVM intrinsics.

These K-lane kernels need no weight packing; the emitter prefers the packed-panel kernels of
:mod:`x86.panel` (about 2x faster at batch >= 64) and uses these where the panels do
not fit (``N % 8 != 0``, batched operands, blocks beyond an int32 epilogue).

Why hand-written TIR: LLVM's loop vectorizer turns the TE reduction of :mod:`.kernels` into
``vpmovsxbd`` + ``vpmulld`` (8 MACs per multiply). These kernels call the AVX2 dot-product
instructions through ``tirx.call_llvm_pure_intrin`` and keep an ``mr x nr`` register tile of
accumulators. They are built with TVM's IR builder as a ``te.extern`` stage, so everything
around them (code sums, epilogue operands) stays TE and the relax emitter is unchanged.

* **8-bit weights** (:class:`_Pmaddwd`): ``vpmovsxbw`` both operands, ``vpmaddwd`` (16 int16
  MACs into 8 int32 lanes, no saturation). ``vpmaddubsw`` (32 MACs) is **not** exact here:
  a u8 x s8 pair can reach ``2·255·128`` and int16 saturates.
* **Nibble weights** (``w_bits <= 4``, :class:`_Pmaddubsw`): ``vpmaddubsw`` with the weight
  as the unsigned operand, exact because ``|w| <= 15`` keeps pair sums within ``±3840``.

**Layout.** No weight repacking: lanes run along K, and each block's 8 int32 lanes are
reduced once (``llvm.vector.reduce.add``) before the epilogue. Nibble bytes (``k = 2t`` low,
``2t + 1`` high) unpack to ``[evens | odds]`` order and x is permuted the same way, since a
dot product does not depend on the order of its terms.

**Epilogue.** The block term of :mod:`.epilogue` (``epilogue.block_term``, summed over
blocks in block order) is evaluated per tile right after each block's integer dot
products, so ``P`` never goes to memory. Integer results are
bit-exact (``tests/targets/tvm/kernels/test_integer.py::test_avx2_int_matmul_core_exact``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.targets.tvm.adapter import IRBuilder, T, te, tirx
from rqcompile.targets.tvm.kernels.common import dim, scratch
from rqcompile.targets.tvm.kernels.epilogue import block_term, split_parts, transposed, w_code_max

__all__ = ["AVX2_CHUNK", "avx2_int_matmul_core", "avx2_supported"]

#: K elements per ``vpmaddwd`` step (16 int16 lanes of a ymm register).
AVX2_CHUNK = 16
_PMADDWD = "llvm.x86.avx2.pmadd.wd"
_PMADDUBSW = "llvm.x86.avx2.pmadd.ub.sw"
_REDUCE_ADD = "llvm.vector.reduce.add"


def avx2_supported(*, k: int, block: int, w_bits: int = 8) -> bool:
    """Whether the AVX2 micro-kernel handles this shape (else the generic schedule is used).

    8-bit weights step 16 K elements at a time, nibble weights 32.
    """
    step = 32 if w_bits <= 4 else AVX2_CHUNK
    return block % step == 0 and k % block == 0


def _divisor(n: int, want: int) -> int:
    return next(d for d in range(min(want, n), 0, -1) if n % d == 0)


def _lanes(t: Any, width: int) -> Any:
    return tirx.Ramp(t * width, 1, width)


def _intrin(dtype: str, name: str, *args: Any) -> Any:
    return tirx.call_llvm_pure_intrin(dtype, name, *args)


class _Pmaddwd:
    """8-bit weights: ``vpmovsxbw`` both operands, ``vpmaddwd``, 8 int32 lanes per output."""

    lanes, acc_dtype = 8, "int32x8"

    def __init__(self, x: Any, w: Any, block: int) -> None:
        self.x, self.w, self.block = x, w, block

    def accumulate(self, acc: Any, rows: Any, cols: Any, b: Any, mr: int, nr: int) -> None:
        with T.serial(0, self.block // 16) as c:
            col = b * self.block + c * 16
            with T.unroll(0, mr) as ii:
                xv = tirx.Cast("int16x16", self.x[rows(ii), tirx.Ramp(col, 1, 16)])
                with T.unroll(0, nr) as jj:
                    wv = tirx.Cast("int16x16", self.w[cols(jj), tirx.Ramp(col, 1, 16)])
                    t = _lanes(ii * nr + jj, 8)
                    T.buffer_store(acc, acc[t] + _intrin("int32x8", _PMADDWD, xv, wv), [t])

    def p(self, acc: Any, t: Any) -> Any:
        return _intrin("int32", _REDUCE_ADD, acc[_lanes(t, 8)])


class _Pmaddubsw:
    """Nibble weights: ``vpmaddubsw(w as u8, x as s8)``, exact because ``|w| <= 15``.

    32 K elements per step: 16 weight bytes unpack to ``[w_0, w_2, .., w_30 | w_1, .., w_31]``
    (low nibbles, then high), and the 32 x codes are permuted the same way. The int16 pair
    sums are at most ``2·15·128 = 3840``, so 8 steps add up in int16 without overflow before
    ``vpmaddwd`` with ones widens them to int32. Signed nibbles are biased by +8 (to 0..15)
    and ``8·Σx`` (the block's code sum ``S_X``) is subtracted afterwards.
    """

    lanes, acc_dtype = 8, "int32x8"
    _PERM = (*range(0, 32, 2), *range(1, 32, 2))

    def __init__(self, x: Any, w: Any, block: int, signed: bool) -> None:
        self.x, self.w, self.block, self.signed = x, w, block, signed
        steps = block // 32
        self.group = next(g for g in range(min(8, steps), 0, -1) if steps % g == 0)

    def _w32(self, row: Any, col: Any) -> Any:
        v = self.w[row, tirx.Ramp(col // 2, 1, 16)]
        if self.signed:  # two's-complement nibble + 8 = (nibble XOR 8): 0..15
            v = tirx.bitwise_xor(v, tirx.const(0x88, "uint8x16"))
        lo = tirx.bitwise_and(v, tirx.const(15, "uint8x16"))
        hi = tirx.shift_right(v, tirx.const(4, "uint8x16"))
        return tirx.Shuffle([lo, hi], list(range(32)))

    def accumulate(self, acc: Any, rows: Any, cols: Any, b: Any, mr: int, nr: int) -> None:
        tile = mr * nr
        acc16 = scratch(tile * 16, "int16")
        ones = tirx.Broadcast(tirx.const(1, "int16"), 16)
        with T.serial(0, self.block // 32 // self.group) as g:
            with T.unroll(0, tile) as t:
                T.buffer_store(acc16, tirx.Broadcast(tirx.const(0, "int16"), 16), [_lanes(t, 16)])
            with T.serial(0, self.group) as c:
                col = b * self.block + (g * self.group + c) * 32
                with T.unroll(0, mr) as ii:
                    xv = tirx.Shuffle([self.x[rows(ii), tirx.Ramp(col, 1, 32)]], list(self._PERM))
                    with T.unroll(0, nr) as jj:
                        t = _lanes(ii * nr + jj, 16)
                        prod = _intrin("int16x16", _PMADDUBSW, self._w32(cols(jj), col), xv)
                        T.buffer_store(acc16, acc16[t] + prod, [t])
            with T.unroll(0, tile) as t:
                wide = _intrin("int32x8", _PMADDWD, acc16[_lanes(t, 16)], ones)
                T.buffer_store(acc, acc[_lanes(t, 8)] + wide, [_lanes(t, 8)])

    def p(self, acc: Any, t: Any) -> Any:
        return _intrin("int32", _REDUCE_ADD, acc[_lanes(t, 8)])


def _tiled(core: Any, y: Any, eps: list[Any], *, block: int, ity: str, mr: int, nr: int,
           w_max: int, bias_w: int = 0) -> Any:  # fmt: skip
    """TIR statement: for each ``mr x nr`` tile and block, ``core`` accumulates the block's
    integer dot products, then ``epilogue.block_term`` adds the block's term to ``y``.

    ``eps`` = the row parts then the column parts of :mod:`.epilogue` (``[M, nb]``,
    ``[N, nb]``); ``bias_w``: the +8 bias of signed nibbles in the core's weights; ``w_max``:
    the weight codes' magnitude bound (``x`` codes are int8).
    """
    row_parts, col_parts = split_parts(eps)
    m, n = (dim(d) for d in y.shape)
    nb, tile = int(row_parts[0].shape[1]), mr * nr
    zero = tirx.Broadcast(tirx.const(0, "int32"), core.lanes)
    with IRBuilder() as ib, T.parallel(0, n // nr) as jo:
        acc = scratch(tile * core.lanes, "int32")
        yacc = scratch(tile, "float32")
        with T.serial(0, m // mr) as io:
            rows = lambda ii: io * mr + ii  # noqa: E731
            cols = lambda jj: jo * nr + jj  # noqa: E731
            with T.unroll(0, tile) as t:
                T.buffer_store(yacc, tirx.const(0, "float32"), [t])
            with T.serial(0, nb) as b:
                with T.unroll(0, tile) as t:
                    T.buffer_store(acc, zero, [_lanes(t, core.lanes)] if core.lanes > 1
                                   else [t])  # fmt: skip
                core.accumulate(acc, rows, cols, b, mr, nr)
                with T.unroll(0, mr) as ii, T.unroll(0, nr) as jj:
                    i, j, t = rows(ii), cols(jj), ii * nr + jj
                    term = block_term(core.p(acc, t), [r[i, b] for r in row_parts],
                                      [c[j, b] for c in col_parts], block=block, ity=ity,
                                      bias_w=bias_w, f32_bounds=(128, w_max))  # fmt: skip
                    T.buffer_store(yacc, yacc[t] + term, [t])
            with T.unroll(0, mr) as ii, T.unroll(0, nr) as jj:
                T.buffer_store(y, yacc[ii * nr + jj], [rows(ii), cols(jj)])
    return ib.get()


def _hsum8(vs: list[Any]) -> Any:
    """``[Σ v_0, .., Σ v_7]`` (int32x8) of eight int32x8 vectors: a ``vphaddd`` tree.

    ``vphaddd`` adds neighbours within each 128-bit half, so two levels leave the low- and
    high-half partial sums of v_0..v_3 in one vector and of v_4..v_7 in another; one
    cross-half shuffle pair and an add finish. 9 instructions instead of 8 reductions.
    """
    hadd = "llvm.x86.avx2.phadd.d"
    h = [_intrin("int32x8", hadd, vs[i], vs[i + 1]) for i in range(0, 8, 2)]
    q0 = _intrin("int32x8", hadd, h[0], h[1])
    q1 = _intrin("int32x8", hadd, h[2], h[3])
    lo = tirx.Shuffle([q0, q1], [0, 1, 2, 3, 8, 9, 10, 11])
    hi = tirx.Shuffle([q0, q1], [4, 5, 6, 7, 12, 13, 14, 15])
    return lo + hi


def _tiled_vec8(core: Any, y: Any, eps: list[Any], *, block: int, mr: int, w_max: int,
                bias_w: int = 0) -> Any:  # fmt: skip
    """:func:`_tiled` with 8 output columns per tile and the epilogue in float32x8.

    ``eps`` = the row parts ``[M, nb]`` then the column parts transposed to ``[nb, N]``, so
    8 columns load as one vector. Same operations per element as the scalar epilogue.
    """
    row_parts, col_t = split_parts(eps)
    m, n = (dim(d) for d in y.shape)
    nb, nr = int(row_parts[0].shape[1]), 8

    def bc(v: Any) -> Any:
        return tirx.Broadcast(v, 8)

    with IRBuilder() as ib, T.parallel(0, n // nr) as jo:
        acc = scratch(mr * nr * 8, "int32")
        yacc = scratch(mr * 8, "float32")
        with T.serial(0, m // mr) as io:
            rows = lambda ii: io * mr + ii  # noqa: E731
            cols = lambda jj: jo * nr + jj  # noqa: E731
            jv = tirx.Ramp(jo * nr, 1, 8)
            with T.unroll(0, mr) as ii:
                T.buffer_store(yacc, bc(tirx.const(0, "float32")), [_lanes(ii, 8)])
            with T.serial(0, nb) as b:
                with T.unroll(0, mr * nr) as t:
                    T.buffer_store(acc, bc(tirx.const(0, "int32")), [_lanes(t, 8)])
                core.accumulate(acc, rows, cols, b, mr, nr)
                with T.unroll(0, mr) as ii:
                    i = rows(ii)
                    p = _hsum8([acc[_lanes(ii * nr + jj, 8)] for jj in range(nr)])
                    term = block_term(p, [r[i, b] for r in row_parts], [c[b, jv] for c in col_t],
                                      block=block, lanes=8, bias_w=bias_w,
                                      f32_bounds=(128, w_max))  # fmt: skip
                    T.buffer_store(yacc, yacc[_lanes(ii, 8)] + term, [_lanes(ii, 8)])
            with T.unroll(0, mr) as ii:
                T.buffer_store(y, yacc[_lanes(ii, 8)], [rows(ii), jv])
    return ib.get()


def avx2_int_matmul_core(
    xq: Any,
    wq: Any,
    row: Sequence[Any],
    col: Sequence[Any],
    *,
    block: int,
    w_bits: int,
    w_signed: bool,
    ity: str,
    name: str,
    attrs: dict[str, Any],
    mr: int = 2,
    nr: int = 4,
) -> Any:
    """``Y f32 [M, N]``: integer core + epilogue (:mod:`.epilogue`), one AVX2 TIR kernel.

    With ``N % 8 == 0`` and an int32 epilogue, tiles are ``1 x 8`` and the epilogue runs in
    float32x8 (:func:`_tiled_vec8`): at block 128 the scalar per-block epilogue was about
    40% of the kernel. Otherwise tiles are ``mr x nr`` with a scalar epilogue.

    ``xq int8 [M, K]``, ``wq`` int8 ``[N, K]`` or nibble bytes ``uint8 [N, K/2]``
    (``w_bits <= 4``); ``row``/``col``: the parts of :mod:`.epilogue` (``[M, nb]``,
    ``[N, nb]``).

    Raises:
        NumericsError: the block is not a multiple of 16 (callers check
            :func:`avx2_supported` and use the generic kernel instead).
    """
    m, k = (dim(d) for d in xq.shape)
    n = int(wq.shape[0])
    if not avx2_supported(k=k, block=block, w_bits=w_bits):
        raise NumericsError(f"{name}: the AVX2 kernel needs block % 16 (8-bit weights) or "
                            f"% 32 (nibbles) == 0 (block={block}).")  # fmt: skip
    vec8 = n % 8 == 0 and ity == "int32"
    if vec8:  # weight-side epilogue operands as [nb, N]: 8 columns per vector load
        col = transposed(col, name, {"rq.stage": "prep"})
    ins = [xq, wq, *row, *col]
    # a symbolic row count (one build for every shape): tiles of one row, any count
    mr, nr = _divisor(m, mr) if isinstance(m, int) else 1, _divisor(n, nr)

    def body(in_bufs: list[Any], out_bufs: list[Any]) -> Any:
        x, w, *eps = in_bufs
        if w_bits <= 4:
            core: Any = _Pmaddubsw(x, w, block, bool(w_signed))
            bias = 8 if w_signed else 0
        else:
            core, bias = _Pmaddwd(x, w, block), 0
        w_max = w_code_max(w_bits, w_signed)
        if vec8:
            return _tiled_vec8(core, out_bufs[0], eps, block=block, mr=1, w_max=w_max,
                               bias_w=bias)  # fmt: skip
        return _tiled(core, out_bufs[0], eps, block=block, ity=ity, mr=mr, nr=nr, w_max=w_max,
                      bias_w=bias)  # fmt: skip

    return te.extern((m, n), ins, body, name=name, dtype="float32", attrs=attrs)


