"""x86 AVX2 micro-kernels for dynamic activation quantization (binary and 2-8 bit affine), in TIR.

Why hand-written: ``kernels.te_quantize`` is a chain of TE stages (grid, codes, ridge
statistics, packing), each re-reading the row; even scheduled (``schedules._schedule_quantize``)
it measured ~1.2-1.6 ns per element on Zen 3, about a quarter of the A1W1 char transformer.
Here one parallel iteration quantizes one row, block by block: the block is read from memory
once, then from L1, and every per-block scalar is computed once.

**Binary affine** (``bits=1``, ``pack="bits32"``; :func:`_sign_rows`), three passes per block:

1. ``Σx`` in float64 (``vcvtps2pd`` from memory + ``vaddpd``, 16 float64 lanes);
   ``b = f32(Σx / B)``, the grid's offset;
2. ``Σ|x - b|``: float32 lanes (32 per row) of at most ``_DEV_GROUP = 4`` terms each, each
   lane then added into float64 (a quarter of the conversions of summing in float64
   directly: 13-15% faster kernel); ``s = max(f32(Σ|x - b| / B), EPS)``: activation blocks
   are dense, so every element counts, zeros (after a ReLU) included (docs/method.md#grids);
3. the codes ``fl((x - b)/s) >= 0`` as two ordered compares with per-block bounds
   (:func:`_sign_bounds`: exact, including the ``-0`` a tiny negative quotient underflows
   to, code +1 as in the reference; NaN → -1), so no ``vdivps`` (measured 30% of the
   kernel); when the bounds are trivial (``s < 2`` and finite, the usual case) the codes
   are just ``x >= b``, one compare per vector (10-16% faster kernel at K = 128);
   ``vmovmskps`` turns 8 compares into 8 sign bits: four make one packed ``uint32``
   word (bit t ↔ element ``32w + t``, the layout of ``bitpack.pack_signs``).

**Binary affine, {0, 1} min/max grid** (``ridge_minmax``, ``gdnsq``, ``ste_minmax``;
:func:`_sign_rows` with ``zero_one``), two passes per block: min and max (and, for ridge,
``Σx`` in float64); then (:func:`_zero_one_words`) the codes ``fl(x - min) > s/2``
(exactly ``round(fl(x - min)/s) >= 1``, docs/method.md#deployment-of-the-grids), packed as
above, and for ridge the +1 count and ``Σ(x - mid)·q`` summed as pass 2's ``Σ|x - b|``
(the terms are ``|x - mid|``, but for codes within an ulp of the threshold), so
``C·B = Σ(x - mid)·q + S·(mid - Σx/B)``; the fit on ±1 codes takes ``4λ``.

**2-8 bit affine** (``pack="none"``; :func:`_affine_rows`), two passes per block: min and
max; then ``q = clip(nearbyint((x - min)/s), 0, 2^b - 1)`` (the same float32 operations as
``primitives``; ``vroundps`` rounds half to even), stored as int8 (``q - 128`` at 8 bits),
and for ridge ``Σq``, ``Σq²`` (int32 lanes), ``Σx`` and ``Σx·q`` (float64; products of a
float32 and a code ≤ 255 are exact there). ``x`` is widened to float64 once per element:
``vcvtps2pd`` is what bounds these kernels on Zen 3.

**Numerics.** Codes are bit-exact: min/max are order-free and the binary grid's float64 sums
of float32 values are rounded once to float32 (the reference sums in another order, as the TE
kernel did). The ridge statistics (docs/method.md#the-ridge-dequantizer, ``C = mean((x-x̄)(q-q̄))``,
``V = mean((q-q̄)²)``) come from the sums in float64, with ``S = Σq``::

    C·B = Σx·q - Σx·S/B,   V·B = Σq² - S²/B
    scale = f32(C / (V + λ)) (0 when V + λ = 0),   offset = f32(Σx/B) - scale·f32(S/B)

For ±1 codes ``q = sign(x - b)`` so ``Σ(x - b)·q = Σ|x - b|`` (pass 2's sum) and
``C·B = Σ|x - b| + S·(b - Σx/B)``: no extra pass. Each ``x - b`` is rounded in float32
(relative error ≤ 2⁻²⁴, and exact near ``b``) and summed in float32 lanes of at most 4
non-negative terms (relative error ≤ 3·2⁻²⁴), so ``C`` and ``s`` agree with the exact
values to ~2.4e-7 relative (measured ~9e-8); like the TE kernel's statistics,
scale/offset agree with the float32 reference to ~1e-7 (tests use 1e-6). The grid's
offset ``b`` needs the exact sum (codes depend on it), so pass 1 stays in float64.

**Measured** (one thread, Zen 3, M=2048 and 64, K=128..4096, block 128; TE stages in
brackets): 1-bit ridge 0.5 ns/element (1.1-1.5; 0.38-0.45 with pass 2's float32 lanes
and pass 3's plain compare), 2-8 bit ridge 0.65-0.75 (1.1-1.3), STE
0.3-0.35 (0.6-0.7). The float64 sums bound them: ``vcvtps2pd`` ymm issues every 2 cycles on
Zen 3 (0.17 ns/element for convert + add alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.quant.primitives import EPS
from rqcompile.targets.tvm.adapter import IRBuilder, T, te, tirx
from rqcompile.targets.tvm.kernels.common import dim
from rqcompile.targets.tvm.x86.micro import _intrin

__all__ = ["RowSource", "avx2_quantize", "quantize_micro_supported"]

_CMP_PS = "llvm.x86.avx.cmp.ps.256"
_MOVMSK_PS = "llvm.x86.avx.movmsk.ps.256"
_GE_OQ = 0x1D  # vcmpps predicate "greater or equal, ordered, quiet": NaN compares false
_STEP = 32  # binary: elements per step, four float32x8 vectors, one packed sign word
_ASTEP = 16  # affine: elements per step, two float32x8 vectors
_F32, _F64 = "float32", "float64"
#: binary pass 2: steps (32 elements each) summed per float32 lane before the float64 flush
_DEV_GROUP = 4
_GT_OQ = 0x1E  # vcmpps "greater than, ordered, quiet"
#: 1-bit quantizers of the {0, 1}-code min/max grid → whether they ridge-fit (else STE)
_ZERO_ONE = {"ridge_minmax": True, "ste_minmax": False, "gdnsq": False}


def quantize_micro_supported(
    *, bits: float, symmetric: bool, block: int, k: int, estimator: str, pack: str
) -> bool:
    """Whether :func:`avx2_quantize` takes this quantizer (else the TE kernel is used).

    Affine (not symmetric) codes with the ``ridge`` or ``ste`` dequantizer: binary packed
    into words (``pack="bits32"``, blocks of whole words), or 2-8 bits unpacked (blocks a
    multiple of 16). At 1 bit also the {0, 1}-code min/max grid (:data:`_ZERO_ONE`:
    ``ridge_minmax``, and ``gdnsq``/``ste_minmax``, its STE quantizer).
    """
    if symmetric or block < 1 or k % block:
        return False
    if bits == 1:
        return (estimator in ("ridge", "ste", *_ZERO_ONE) and pack == "bits32"
                and block % _STEP == 0)  # fmt: skip
    if estimator not in ("ridge", "ste"):
        return False
    return bits in (2, 3, 4, 5, 6, 7, 8) and pack == "none" and block % _ASTEP == 0


def _bc(v: Any, n: int = 8) -> Any:
    return tirx.Broadcast(v, n)


def _f64x4(v: Any, half: int) -> Any:
    """Lanes ``4·half .. 4·half + 3`` of a float32x8, widened to float64x4 (``vcvtps2pd``)."""
    return tirx.Cast("float64x4", tirx.Shuffle([v], list(range(4 * half, 4 * half + 4))))


def _unravel(r: Any, lead: list[int]) -> list[Any]:
    """Indices into the leading dims ``lead`` of flat row ``r`` (row-major)."""
    idx = []
    for d in reversed(lead[1:]):
        idx.append(r % d)
        r = r // d
    return [r, *reversed(idx)] if lead else []


class _Sum64:
    """16 float64 partial sums (four float64x4 accumulators).

    Four accumulators keep four ``vaddpd`` chains in flight; the final sum adds the 16 lanes
    in a fixed order (any order is exact enough: see the module docstring). "global", not
    "local", buffers: TVM 0.27 serves each "local" one with a heap workspace call per
    parallel iteration (``x86.xnor`` says more); these become registers.
    """

    def __init__(self) -> None:
        self.buf = T.decl_buffer((16,), _F64, scope="global")

    def zero(self) -> None:
        for a in range(4):
            T.buffer_store(self.buf, _bc(tirx.const(0, _F64), 4), [tirx.Ramp(4 * a, 1, 4)])

    def add(self, v: Any, pair: int) -> None:
        """Add float32x8 ``v`` into accumulators ``2·pair`` and ``2·pair + 1``."""
        self.add_halves(_f64x4(v, 0), _f64x4(v, 1), pair)

    def add_halves(self, lo: Any, hi: Any, pair: int) -> None:
        """Add float64x4 ``lo``, ``hi`` into accumulators ``2·pair`` and ``2·pair + 1``."""
        for h, v in enumerate((lo, hi)):
            lanes = tirx.Ramp(4 * (2 * pair + h), 1, 4)
            T.buffer_store(self.buf, self.buf[lanes] + v, [lanes])

    def total(self) -> Any:
        s = [self.buf[i] for i in range(16)]
        for width in (8, 4, 2, 1):  # pairwise: lane i + lane i + width
            s = [s[i] + s[i + width] for i in range(width)]
        return s[0]


def _lanes_sum(buf: Any, start: int = 0, n: int = 8) -> Any:
    """``buf[start] + .. + buf[start + n - 1]`` (integer lanes: any order is exact)."""
    total = buf[start]
    for i in range(start + 1, start + n):
        total = total + buf[i]
    return total


def _sign_bounds(s: Any) -> tuple[Any, Any]:
    """``(-t, lim)`` with ``fl((x - b)/s) >= 0  ⟺  x - b >= -t  and  |x - b| <= lim``.

    Exact for every float32 ``d = x - b`` and ``s > 0`` (so the kernel needs no division):
    ``fl(d/s)`` is ``-0`` (code +1) for ``d < 0`` exactly when ``|d|/s <= 2^-150`` (half the
    smallest subnormal; the tie rounds to even, 0), i.e. ``|d| <= t``, the largest float32
    ``<= s·2^-150`` (formed in float64, where ``s·2^-150`` is exact, rounded down).
    ``s = inf``: ``d/s`` is ``±0`` for finite ``d`` and NaN for infinite ones, hence
    ``t = inf`` and ``lim = FLT_MAX``; a NaN ``s`` gives ``t`` NaN, every code -1.
    """
    t64 = s.astype(_F64) * tirx.const(2.0**-150, _F64)
    t32 = t64.astype(_F32)
    down = tirx.reinterpret(_F32, tirx.reinterpret("int32", t32) - tirx.const(1, "int32"))
    t = tirx.Select(t32.astype(_F64) > t64, down, t32)
    inf = tirx.const(float("inf"), _F32)
    lim = tirx.Select(s == inf, tirx.const(3.4028234663852886e38, _F32), inf)
    return -t, lim


def _store_ridge(out: list[Any], o: list[Any], d64: Any, g32: Any, *, xsum: Any, s: Any,
                 covb: Any, varb: Any, block: int, lam: float, shift: bool) -> None:  # fmt: skip
    """Write ridge ``scale``/``offset`` from the block sums (module docstring's formulas).

    ``d64``/``g32`` are scratch scalars (slots 3.. and 2..), so each value is computed once.
    ``shift``: 8-bit codes stored as ``q - 128``, so ``offset += 128·scale``.
    """
    nblk = tirx.const(block, _F64)
    T.buffer_store(d64, varb / nblk + tirx.const(lam, _F64), [3])
    ok = d64[3] != tirx.const(0, _F64)
    scale = tirx.Select(ok, (covb / nblk) / tirx.Select(ok, d64[3], tirx.const(1, _F64)),
                        tirx.const(0, _F64))  # fmt: skip
    T.buffer_store(g32, scale.astype(_F32), [2])
    off = (xsum / nblk).astype(_F32) - g32[2] * (s / nblk).astype(_F32)
    if shift:
        off = off + tirx.const(128, _F32) * g32[2]
    T.buffer_store(out[1], g32[2], o)
    T.buffer_store(out[2], off, o)


class RowSource:
    """Where a quantize kernel reads row ``idx`` of its input: straight from ``x`` (this
    class), or, for a fused prologue (:mod:`x86.prologue`), from a per-block
    scratch that :meth:`start_block` fills. The kernels call :meth:`start_row` once per row
    (before its blocks), :meth:`start_block` at the start of each block, then read the
    block's elements with :meth:`vec` (absolute columns of the row).
    """

    #: Read whole vectors (``vec(col, 8)``) where the kernel would convert 4-lane halves
    #: straight from memory: a source whose blocks were just stored as 8-lane vectors
    #: (:mod:`x86.prologue`) would otherwise have every upper-half load wait for
    #: its store to commit (no store-to-load forwarding into half a vector).
    wide_loads = False
    #: With ``wide_loads``: let the binary kernel's pass 1 compute the block (``fill``).
    streams = False

    def __init__(self, x: Any, idx: list[Any], block: int) -> None:
        self.x, self.idx, self.block = x, idx, block

    def start_row(self) -> None:
        """Per-row work before the first block (row statistics); nothing here."""

    def start_block(self, b: Any, *, streaming: bool = False) -> None:
        """Per-block work before the block's passes; nothing here. ``streaming``: the
        kernel's first pass reads every vector of the block through :meth:`fill`, in order,
        before any other read (so a source may compute them there instead of here)."""

    def fill(self, col: Any) -> Any:
        """The 8 lanes at ``col`` for the kernel's first pass over a block (``vec`` here)."""
        return self.vec(col)

    def vec(self, col: Any, n: int = 8) -> Any:
        return self.x[(*self.idx, tirx.Ramp(col, 1, n))]


#: ``(x, row index, block) -> RowSource``: how a kernel builds the source of each row.
SourceFactory = Any


class _SignRow:
    """The per-row scratch of :func:`_sign_rows` (one set per row of a parallel iteration)."""

    def __init__(self, x: Any, idx: list[Any], src: RowSource, zero_one: bool = False) -> None:
        self.x, self.idx, self.src = x, idx, src
        self.sums, self.devs = _Sum64(), _Sum64()  # Σx; Σ|x - b| ({0, 1} grid: Σ(x - mid)·q)
        self.ints = T.decl_buffer((2,), "int32", scope="global")  # +1 count, current word
        self.d64 = T.decl_buffer((4,), _F64, scope="global")  # Σx, (s), Σ|x - b|, V + λ
        # b, s, scale, -thr, lim ({0, 1} grid: min, s, scale, s/2, mid)
        self.g32 = T.decl_buffer((5,), _F32, scope="global")
        self.dev32 = T.decl_buffer((32,), _F32, scope="global")  # pass 2's float32 lanes
        if zero_one:  # min lanes, max lanes
            self.ext = T.decl_buffer((16,), _F32, scope="global")

    def vec(self, col: Any, n: int = 8) -> Any:
        return self.src.vec(col, n)


def _sign_words(rs: list[_SignRow], out: list[Any], col: Callable[..., Any], b: Any, *,
                block: int, ridge: bool, plain: bool) -> None:  # fmt: skip
    """Pass 3 of :func:`_sign_rows`: the packed sign words of block ``b`` (and, for ridge,
    the count of +1 codes); ``plain``: the codes are ``x >= b`` (see the caller)."""
    with T.serial(0, block // _STEP) as c:
        for w in rs:
            word = tirx.const(0, "int32")
            for j in range(4):
                if plain:
                    ok = _intrin("float32x8", _CMP_PS, w.vec(col(c, j)), _bc(w.g32[0]),
                                 tirx.const(_GE_OQ, "int8"))  # fmt: skip
                else:
                    d = w.vec(col(c, j)) - _bc(w.g32[0])
                    ge = _intrin("float32x8", _CMP_PS, d, _bc(w.g32[3]),
                                 tirx.const(_GE_OQ, "int8"))  # fmt: skip
                    le = _intrin("float32x8", _CMP_PS, _bc(w.g32[4]), tirx.abs(d),
                                 tirx.const(_GE_OQ, "int8"))  # fmt: skip
                    both = tirx.bitwise_and(tirx.reinterpret("int32x8", ge),
                                            tirx.reinterpret("int32x8", le))  # fmt: skip
                    ok = tirx.reinterpret("float32x8", both)
                bits = _intrin("int32", _MOVMSK_PS, ok)
                word = word | (bits << tirx.const(8 * j, "int32"))
            T.buffer_store(w.ints, word, [1])
            T.buffer_store(out[0], w.ints[1].astype("uint32"), [*w.idx, b * (block // 32) + c])
            if ridge:
                T.buffer_store(w.ints, w.ints[0] + tirx.popcount(w.ints[1]), [0])


def _zero_one_words(rs: list[_SignRow], out: list[Any], col: Callable[..., Any], b: Any, *,
                    block: int, ridge: bool) -> None:  # fmt: skip
    """Pass 2 of :func:`_sign_rows` on the {0, 1} grid: the packed words of block ``b``,
    code +1 where ``fl(x - min) > s/2`` (``g32[0]``, ``g32[3]``); for ridge also the +1 count
    and ``Σ(x - mid)·q`` (``mid = g32[4]``; the sign of ``x - mid`` flipped where ``q = -1``,
    so the terms are ``|x - mid|`` but for codes an ulp from the threshold) in float32 lanes
    of at most ``_DEV_GROUP`` steps, flushed to float64 (``devs``), as pass 2 of the
    ``bitnet`` grid sums ``|x - b|``."""
    nsteps = block // _STEP
    group = max(g for g in range(1, _DEV_GROUP + 1) if nsteps % g == 0)
    sign = _bc(tirx.const(-(2**31), "int32"))
    with T.serial(0, nsteps // group) as cg:
        if ridge:
            for w in rs:
                T.buffer_store(w.dev32, _bc(tirx.const(0, _F32), 32), [tirx.Ramp(0, 1, 32)])
        with T.serial(0, group) as ci:
            c = cg * group + ci
            for w in rs:
                word = tirx.const(0, "int32")
                for j in range(4):
                    v = w.vec(col(c, j))
                    ok = _intrin("float32x8", _CMP_PS, v - _bc(w.g32[0]), _bc(w.g32[3]),
                                 tirx.const(_GT_OQ, "int8"))  # fmt: skip
                    bits = _intrin("int32", _MOVMSK_PS, ok)
                    word = word | (bits << tirx.const(8 * j, "int32"))
                    if ridge:
                        flip = tirx.bitwise_and(tirx.bitwise_not(tirx.reinterpret("int32x8", ok)),
                                                sign)  # fmt: skip
                        d = tirx.reinterpret("int32x8", v - _bc(w.g32[4]))
                        dq = tirx.reinterpret("float32x8", tirx.bitwise_xor(d, flip))
                        lanes = tirx.Ramp(8 * j, 1, 8)
                        T.buffer_store(w.dev32, w.dev32[lanes] + dq, [lanes])
                T.buffer_store(w.ints, word, [1])
                T.buffer_store(out[0], w.ints[1].astype("uint32"), [*w.idx, b * (block // 32) + c])
                if ridge:
                    T.buffer_store(w.ints, w.ints[0] + tirx.popcount(w.ints[1]), [0])
        if ridge:
            for w in rs:
                for j in range(4):
                    w.devs.add(w.dev32[tirx.Ramp(8 * j, 1, 8)], j % 2)


def _sign_rows(x: Any, out: list[Any], lead: list[int], *, block: int, ridge: bool,
               lam: float, per_iter: int = 2, zero_one: bool = False,
               source: SourceFactory = RowSource) -> Any:  # fmt: skip
    """TIR: binary affine codes (packed words), scale and offset, ``per_iter`` rows per
    parallel iteration, their passes interleaved so that the per-block scalar chains (block
    sums → ``b`` → ``s`` → bounds; ~15% of the time at block 128) of two rows overlap. An odd
    last row is computed twice in its iteration (same values).

    ``zero_one``: the {0, 1}-code min/max grid instead of the ``bitnet`` one (module
    docstring): pass 1 also takes min and max, then :func:`_zero_one_words` is the only
    other pass."""
    k, rows = int(x.shape[-1]), _prod(lead)
    per_iter = min(per_iter, rows) if isinstance(rows, int) else per_iter
    with IRBuilder() as ib, T.parallel(0, (rows + per_iter - 1) // per_iter) as it:
        rs = [_SignRow(x, idx, source(x, idx, block), zero_one)
              for idx in _iter_rows(it, per_iter, rows, lead)]  # fmt: skip
        for w in rs:
            w.src.start_row()
        with T.serial(0, k // block) as b:
            for w in rs:
                # streaming: pass 1 computes a prologue's block while it sums it (the
                # prologue's FMA work overlaps the sums' conversions and adds)
                w.src.start_block(b, streaming=w.src.wide_loads and w.src.streams)

            def col(step: Any, j: int, n: int = 8) -> Any:
                return b * block + step * _STEP + n * j

            # pass 1: Σx (float64, converted straight from memory); {0, 1} grid: min, max
            # (order-free), and Σx for ridge only
            lo8, hi8 = tirx.Ramp(0, 1, 8), tirx.Ramp(8, 1, 8)
            for w in rs:
                w.sums.zero()
                if zero_one:
                    T.buffer_store(w.ext, _bc(tirx.const(float("inf"), _F32)), [lo8])
                    T.buffer_store(w.ext, _bc(tirx.const(float("-inf"), _F32)), [hi8])
            with T.serial(0, block // _STEP) as c:
                for w in rs:
                    for j in range(4):
                        if w.src.wide_loads:  # see RowSource.wide_loads
                            v = w.src.fill(col(c, j))
                            lo, hi = (_f64x4(v, h) for h in range(2))
                        else:
                            v = w.vec(col(c, j))  # (min/max of the {0, 1} grid)
                            lo, hi = (tirx.Cast("float64x4", w.vec(col(c, 2 * j + h, 4), 4))
                                      for h in range(2))  # fmt: skip
                        if zero_one:
                            T.buffer_store(w.ext, tirx.min(w.ext[lo8], v), [lo8])
                            T.buffer_store(w.ext, tirx.max(w.ext[hi8], v), [hi8])
                        if ridge or not zero_one:
                            w.sums.add_halves(lo, hi, j % 2)
            for w in rs:
                T.buffer_store(w.d64, w.sums.total(), [0])
                w.devs.zero()
                if not zero_one:
                    T.buffer_store(w.g32, (w.d64[0] / tirx.const(block, _F64)).astype(_F32),
                                   [0])  # fmt: skip
                    continue
                mn, mx = w.ext[0], w.ext[8]
                for i in range(1, 8):
                    mn, mx = tirx.min(mn, w.ext[i]), tirx.max(mx, w.ext[8 + i])
                T.buffer_store(w.g32, mn, [0])
                T.buffer_store(w.g32, tirx.max(mx - w.g32[0], tirx.const(EPS, _F32)), [1])
                # code 1 ⟺ nearbyint(fl(fl(x - min)/s)) >= 1 ⟺ fl(x - min) > s/2 (exact)
                T.buffer_store(w.g32, w.g32[1] * tirx.const(0.5, _F32), [3])
                T.buffer_store(w.g32, w.g32[0] + w.g32[3], [4])  # mid-range, for ridge's sum
                T.buffer_store(w.ints, tirx.const(0, "int32"), [0])
            if zero_one:
                _zero_one_words(rs, out, col, b, block=block, ridge=ridge)
                for w in rs:
                    o = [*w.idx, b]
                    if ridge:
                        xsum, nblk = w.d64[0], tirx.const(block, _F64)
                        s = (w.ints[0] * 2 - block).astype(_F64)  # Σq of ±1 codes
                        # Σx·q = Σ(x - mid)·q + mid·S; the fit on ±1 codes takes 4λ
                        # (docs/method.md#deployment-of-the-grids)
                        covb = w.devs.total() + s * (w.g32[4].astype(_F64) - xsum / nblk)
                        _store_ridge(out, o, w.d64, w.g32, xsum=xsum, s=s, covb=covb,
                                     varb=nblk - s * s / nblk, block=block, lam=4 * lam,
                                     shift=False)  # fmt: skip
                    else:  # STE: Δ·c + min = (Δ/2)(2c - 1) + (min + Δ/2)
                        half = w.g32[1] / tirx.const(2, _F32)
                        T.buffer_store(out[1], half, o)
                        T.buffer_store(out[2], w.g32[0] + half, o)
            else:
                # pass 2: Σ|x - b| → s; float32 lanes of <= _DEV_GROUP terms, flushed to
                # float64
                nsteps = block // _STEP
                group = max(g for g in range(1, _DEV_GROUP + 1) if nsteps % g == 0)
                with T.serial(0, nsteps // group) as cg:
                    for w in rs:
                        T.buffer_store(w.dev32, _bc(tirx.const(0, _F32), 32),
                                       [tirx.Ramp(0, 1, 32)])  # fmt: skip
                    with T.serial(0, group) as ci:
                        for w in rs:
                            for j in range(4):
                                lanes = tirx.Ramp(8 * j, 1, 8)
                                d = tirx.abs(w.vec(col(cg * group + ci, j)) - _bc(w.g32[0]))
                                T.buffer_store(w.dev32, w.dev32[lanes] + d, [lanes])
                    for w in rs:
                        for j in range(4):
                            w.devs.add(w.dev32[tirx.Ramp(8 * j, 1, 8)], j % 2)
                for w in rs:
                    T.buffer_store(w.d64, w.devs.total(), [2])
                    sf = tirx.max((w.d64[2] / tirx.const(block, _F64)).astype(_F32),
                                  tirx.const(EPS, _F32))  # fmt: skip
                    T.buffer_store(w.g32, sf, [1])
                    # pass 3's bounds: (x - b)/s >= 0 without the division
                    neg_thr, lim = _sign_bounds(w.g32[1])
                    T.buffer_store(w.g32, neg_thr, [3])
                    T.buffer_store(w.g32, lim, [4])
                    T.buffer_store(w.ints, tirx.const(0, "int32"), [0])
                # pass 3: sign words, 8 bits per vmovmskps. Usually t = 0 (s < 2) and
                # lim = inf (s finite): then fl(x - b) >= -t and |x - b| <= lim  ⟺  x >= b
                # (a non-zero difference of two float32 never rounds to ±0; NaN compares
                # false), one compare per vector; the exact bounds otherwise.
                plain = rs[0].g32[3] == tirx.const(0, _F32)
                for w in rs:
                    plain = tirx.all(plain, w.g32[3] == tirx.const(0, _F32),
                                     w.g32[4] == tirx.const(float("inf"), _F32))  # fmt: skip
                with T.If(plain):
                    with T.Then():
                        _sign_words(rs, out, col, b, block=block, ridge=ridge, plain=True)
                    with T.Else():
                        _sign_words(rs, out, col, b, block=block, ridge=ridge, plain=False)
                for w in rs:
                    o = [*w.idx, b]
                    if ridge:
                        xsum, nblk = w.d64[0], tirx.const(block, _F64)
                        s = (w.ints[0] * 2 - block).astype(_F64)  # Σq of ±1 codes
                        covb = w.d64[2] + s * (w.g32[0].astype(_F64) - xsum / nblk)
                        varb = nblk - s * s / nblk
                        _store_ridge(out, o, w.d64, w.g32, xsum=xsum, s=s, covb=covb,
                                     varb=varb, block=block, lam=lam, shift=False)  # fmt: skip
                    else:
                        T.buffer_store(out[1], w.g32[1], o)
                        T.buffer_store(out[2], w.g32[0], o)
    return ib.get()


def _iter_rows(it: Any, per_iter: int, rows: int, lead: list[int]) -> list[list[Any]]:
    """Indices of the ``per_iter`` rows of parallel iteration ``it`` (the last one clamped)."""
    return [_unravel(tirx.min(it * per_iter + i, rows - 1), lead) for i in range(per_iter)]


class _AffineRow:
    """The per-row scratch of :func:`_affine_rows`."""

    def __init__(self, x: Any, idx: list[Any], src: RowSource) -> None:
        self.x, self.idx, self.src = x, idx, src
        self.sums, self.xq = _Sum64(), _Sum64()
        self.ext = T.decl_buffer((16,), _F32, scope="global")  # min lanes, max lanes
        self.qs = T.decl_buffer((16,), "int32", scope="global")  # Σq lanes, Σq² lanes
        self.d64 = T.decl_buffer((4,), _F64, scope="global")  # Σx, S, Σq², V + λ
        self.g32 = T.decl_buffer((3,), _F32, scope="global")  # min, s, scale

    def vec(self, col: Any, n: int = 8) -> Any:
        return self.src.vec(col, n)


def _affine_rows(x: Any, out: list[Any], lead: list[int], *, bits: int, block: int,
                 ridge: bool, lam: float, per_iter: int = 2,
                 source: SourceFactory = RowSource) -> Any:  # fmt: skip
    """TIR: 2-8 bit affine codes (int8), scale and offset, ``per_iter`` rows per parallel
    iteration with their passes interleaved (as :func:`_sign_rows`)."""
    k, rows, hi = int(x.shape[-1]), _prod(lead), 2**bits - 1
    shift = bits == 8
    per_iter = min(per_iter, rows) if isinstance(rows, int) else per_iter
    lo8, hi8 = tirx.Ramp(0, 1, 8), tirx.Ramp(8, 1, 8)
    with IRBuilder() as ib, T.parallel(0, (rows + per_iter - 1) // per_iter) as it:
        rs = [_AffineRow(x, idx, source(x, idx, block))
              for idx in _iter_rows(it, per_iter, rows, lead)]  # fmt: skip
        for w in rs:
            w.src.start_row()
        with T.serial(0, k // block) as b:
            for w in rs:
                w.src.start_block(b)
            # pass 1: min, max (order-free)
            for w in rs:
                T.buffer_store(w.ext, w.vec(b * block), [lo8])
                T.buffer_store(w.ext, w.vec(b * block), [hi8])
            with T.serial(0, block // _ASTEP) as c:
                for w in rs:
                    for j in range(2):
                        v = w.vec(b * block + c * _ASTEP + 8 * j)
                        T.buffer_store(w.ext, tirx.min(w.ext[lo8], v), [lo8])
                        T.buffer_store(w.ext, tirx.max(w.ext[hi8], v), [hi8])
            for w in rs:
                mn, mx = w.ext[0], w.ext[8]
                for i in range(1, 8):
                    mn, mx = tirx.min(mn, w.ext[i]), tirx.max(mx, w.ext[8 + i])
                T.buffer_store(w.g32, mn, [0])
                T.buffer_store(w.g32, tirx.max((mx - w.g32[0]) / tirx.const(hi, _F32),
                                               tirx.const(EPS, _F32)), [1])  # fmt: skip
                if ridge:
                    w.sums.zero()
                    w.xq.zero()
                    T.buffer_store(w.qs, _bc(tirx.const(0, "int32"), 16), [tirx.Ramp(0, 1, 16)])
            # pass 2: codes and, for ridge, Σq, Σq² (int32) and Σx, Σx·q (float64, x widened
            # once, from memory); one vector per row and step (16 ymm registers)
            with T.serial(0, block // 8) as c:
                for w in rs:
                    col = b * block + 8 * c
                    z = tirx.nearbyint((w.vec(col) - _bc(w.g32[0])) / _bc(w.g32[1]))
                    q = tirx.min(tirx.max(z, _bc(tirx.const(0, _F32))), _bc(tirx.const(hi, _F32)))
                    qi = tirx.Cast("int32x8", q)
                    code = qi - _bc(tirx.const(128, "int32")) if shift else qi
                    T.buffer_store(out[0], tirx.Cast("int8x8", code),
                                   [*w.idx, tirx.Ramp(col, 1, 8)])  # fmt: skip
                    if ridge:
                        T.buffer_store(w.qs, w.qs[lo8] + qi, [lo8])
                        T.buffer_store(w.qs, w.qs[hi8] + qi * qi, [hi8])
                        x64 = [tirx.Cast("float64x4", w.vec(col + 4 * h, 4)) for h in range(2)]
                        w.sums.add_halves(*x64, 0)
                        w.xq.add_halves(*(x64[h] * _f64x4(q, h) for h in range(2)), 0)
            for w in rs:
                o = [*w.idx, b]
                if ridge:
                    T.buffer_store(w.d64, w.sums.total(), [0])
                    T.buffer_store(w.d64, _lanes_sum(w.qs).astype(_F64), [1])
                    T.buffer_store(w.d64, _lanes_sum(w.qs, 8).astype(_F64), [2])
                    xsum, s, nblk = w.d64[0], w.d64[1], tirx.const(block, _F64)
                    _store_ridge(out, o, w.d64, w.g32, xsum=xsum, s=s,
                                 covb=w.xq.total() - xsum * s / nblk,
                                 varb=w.d64[2] - s * s / nblk, block=block, lam=lam,
                                 shift=shift)  # fmt: skip
                else:  # STE: the grid itself
                    off = w.g32[0] + tirx.const(128, _F32) * w.g32[1] if shift else w.g32[0]
                    T.buffer_store(out[1], w.g32[1], o)
                    T.buffer_store(out[2], off, o)
    return ib.get()


def _prod(dims: list[Any]) -> Any:
    n = 1
    for d in dims:
        n *= d
    return n



def avx2_quantize(
    x: Any,
    *,
    bits: float,
    block: int,
    estimator: str,
    ridge_lambda: float,
    pack: str,
    name: str,
    attrs: dict[str, Any],
    params: Sequence[Any] = (),
    prologue: Callable[[list[Any], list[Any]], SourceFactory] | None = None,
    extra_outs: int = 0,
) -> tuple[Any, ...]:
    """Affine quantization of ``x f32 [..., K]`` as one AVX2 TIR kernel (TE tensors).

    ``prologue`` (:mod:`x86.prologue`) fuses a row-wise float op before the
    quantizer: given the kernel's input and output buffers (``x``, then ``params``; the
    three quantize outputs, then the float one) it returns the row source that computes
    the op per block. ``extra_outs`` adds that many ``f32 [..., K]`` outputs after the three
    (the prologue writes them: e.g. the floats the codes were computed from, which tests
    compare the codes against bit-exactly).

    Returns:
        ``(codes, scale f32 [..., nb], offset f32 [..., nb])`` as
        ``kernels.te_quantize(x, bits=bits, symmetric=False, ...)``: codes ``uint32
        [..., K/32]`` (1 bit, ``pack="bits32"``) or ``int8 [..., K]`` (8 bits as ``q - 128``);
        then the ``extra_outs``.

    Raises:
        NumericsError: a quantizer :func:`quantize_micro_supported` rejects.
    """
    *lead, k = (dim(d) for d in x.shape)
    if not quantize_micro_supported(bits=bits, symmetric=False, block=block, k=k,
                                    estimator=estimator, pack=pack):  # fmt: skip
        raise NumericsError(
            f"{name}: the AVX2 quantizer takes affine ridge/ste codes, 1 bit packed with "
            f"block % 32 == 0 or 2-8 bits with block % 16 == 0 (bits={bits}, pack={pack!r}, "
            f"K={k}, block={block}, estimator={estimator!r})."
        )
    nb, ridge = k // block, estimator == "ridge" or _ZERO_ONE.get(estimator, False)
    if bits == 1:
        shapes, dtype = [(*lead, k // 32), (*lead, nb), (*lead, nb)], "uint32"
    else:
        shapes, dtype = [(*lead, k), (*lead, nb), (*lead, nb)], "int8"
    shapes += [(*lead, k)] * extra_outs
    dtypes = [dtype, _F32, _F32] + [_F32] * extra_outs

    def body(ins: list[Any], outs: list[Any]) -> Any:
        source = RowSource if prologue is None else prologue(list(ins), list(outs))
        if bits == 1:
            return _sign_rows(ins[0], outs, lead, block=block, ridge=ridge, lam=ridge_lambda,
                              zero_one=estimator in _ZERO_ONE, source=source)  # fmt: skip
        # ridge is vcvtps2pd-bound, and a second row's accumulators spill: one row
        return _affine_rows(ins[0], outs, lead, bits=int(bits), block=block, ridge=ridge,
                            lam=ridge_lambda, per_iter=1 if ridge else 2,
                            source=source)  # fmt: skip

    outs = te.extern(shapes, [x, *params], body, name=name, dtype=dtypes, attrs=attrs)
    return tuple(outs)
