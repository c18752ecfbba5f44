"""x86 AVX2 micro-kernel for binary (1-bit affine) activation quantization, in TIR.

Why hand-written: ``kernels.te_quantize`` is a chain of TE stages (block sums, kept count,
absolute deviations, codes, ridge statistics, bit packing), each re-reading the row; even
scheduled (``schedules._schedule_quantize``) it measured ~1.2-1.6 ns per element on Zen 3,
about a quarter of the A1W1 char transformer. Here one parallel iteration quantizes one row,
block by block, with the block (≤ a few KiB) read from memory once and then from L1:

1. ``Σx`` in float64 (``vcvtps2pd`` + ``vaddpd``, 16 float64 lanes) and the non-zero count
   (``vcmpps`` + integer lanes); ``b = f32(Σx / B)``, the grid's offset;
2. ``Σ|x - b|`` in float64 the same way; ``s = max(f32(Σ|x - b| / max(kept, 1)), EPS)``;
3. ``z = (x - b) / s`` (a real division, so ``-0`` and underflow behave as the reference),
   ``z >= 0`` as an ordered compare (NaN → code -1), and ``vmovmskps`` turns 8 compares into
   8 sign bits: four make one packed ``uint32`` word (bit t ↔ element ``32w + t``, the layout
   of ``bitpack.pack_signs``). For ridge, the same pass sums ``x`` over the +1 codes (float64).

**Numerics.** The grid is that of ``primitives.grid`` bit for bit: the float64 sums of
float32 values are rounded once to float32 (the reference sums in another order, as the TE
kernel did), ``x - b`` and the division are the same float32 operations. The ridge
statistics follow from the sums, in float64, for ±1 codes (``S = Σq = 2·popcount - B``)::

    Σ x·q = 2·Σ_{q=+1} x - Σx,   C·B = Σ x·q - Σx·S/B,   V·B = B - S²/B
    scale = f32(C / (V + λ)) (0 when V + λ = 0),   offset = f32(Σx/B) - scale·f32(S/B)

which equal the reference's centred means in real arithmetic; like the TE kernel's float64
statistics they agree with the float32 reference to ~1e-7 relative.
"""

from __future__ import annotations

from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.quant.primitives import EPS
from rqcompile.targets.tvm.adapter import IRBuilder, T, te, tirx
from rqcompile.targets.tvm.kernels_x86 import _intrin

__all__ = ["avx2_quantize_sign", "quantize_micro_supported"]

_CMP_PS = "llvm.x86.avx.cmp.ps.256"
_MOVMSK_PS = "llvm.x86.avx.movmsk.ps.256"
_GE_OQ = 0x1D  # vcmpps predicate "greater or equal, ordered, quiet": NaN compares false
_NEQ_UQ = 0x04  # "not equal, unordered, quiet": NaN counts as non-zero, as |NaN|.sign() ≠ 0
_STEP = 32  # elements per step: four float32x8 vectors, one packed sign word


def quantize_micro_supported(
    *, bits: float, symmetric: bool, block: int, k: int, estimator: str, pack: str
) -> bool:
    """Whether :func:`avx2_quantize_sign` takes this quantizer (else the TE kernel is used).

    Binary affine codes (``bits=1``, not symmetric) with the ``ridge`` or ``ste`` dequantizer,
    packed (``pack="bits32"``), blocks a multiple of 32 elements.
    """
    return (
        bits == 1
        and not symmetric
        and estimator in ("ridge", "ste")
        and pack == "bits32"
        and block % _STEP == 0
        and k % block == 0
    )


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
    """16 float64 partial sums (four float64x4 accumulators) of float32x8 vectors.

    Four accumulators keep four ``vaddpd`` chains in flight; the final sum adds the 16 lanes
    in a fixed order (any order is exact enough: see the module docstring).
    """

    def __init__(self) -> None:
        self.buf = T.decl_buffer((16,), "float64", scope="global")

    def zero(self) -> None:
        for a in range(4):
            T.buffer_store(self.buf, _bc(tirx.const(0, "float64"), 4), [tirx.Ramp(4 * a, 1, 4)])

    def add(self, v: Any, pair: int) -> None:
        """Add float32x8 ``v`` into accumulators ``2·pair`` and ``2·pair + 1``."""
        for h in range(2):
            lanes = tirx.Ramp(4 * (2 * pair + h), 1, 4)
            T.buffer_store(self.buf, self.buf[lanes] + _f64x4(v, h), [lanes])

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


def avx2_quantize_sign(
    x: Any,
    *,
    block: int,
    estimator: str,
    ridge_lambda: float,
    name: str,
    attrs: dict[str, Any],
) -> tuple[Any, Any, Any]:
    """Binary affine quantization of ``x f32 [..., K]`` as one AVX2 TIR kernel (TE tensors).

    Returns:
        ``(codes uint32 [..., K/32], scale f32 [..., nb], offset f32 [..., nb])``, as
        ``kernels.te_quantize(x, bits=1, symmetric=False, pack="bits32")``.

    Raises:
        NumericsError: a shape :func:`quantize_micro_supported` rejects.
    """
    *lead, k = (int(d) for d in x.shape)
    if not quantize_micro_supported(bits=1, symmetric=False, block=block, k=k,
                                    estimator=estimator, pack="bits32"):  # fmt: skip
        raise NumericsError(f"{name}: the AVX2 quantizer needs block % 32 == 0 and K % block "
                            f"== 0 and estimator ridge/ste (K={k}, block={block}).")  # fmt: skip
    nb = k // block
    rows = 1
    for d in lead:
        rows *= d
    ridge = estimator == "ridge"
    f32, f64 = "float32", "float64"

    def body(ins: list[Any], outs: list[Any]) -> Any:
        xbuf, cbuf, sbuf, obuf = ins[0], *outs
        zero8 = _bc(tirx.const(0, f32))
        with IRBuilder() as ib, T.parallel(0, rows) as r:
            lead_idx = _unravel(r, lead)
            sums, devs = _Sum64(), _Sum64()
            cnt = T.decl_buffer((8,), "int32", scope="global")
            # per-block scalars, stored once so that each is computed once
            ints = T.decl_buffer((2,), "int32", scope="global")  # +1 count, current word
            d64 = T.decl_buffer((4,), f64, scope="global")  # Σx, kept, Σ|x - b|, V + λ
            g32 = T.decl_buffer((3,), f32, scope="global")  # b, s, scale
            with T.serial(0, nb) as b:

                def vec(step: Any, j: int) -> Any:
                    col = b * block + step * _STEP + 8 * j
                    return xbuf[(*lead_idx, tirx.Ramp(col, 1, 8))]

                def vec4(step: Any, h: int) -> Any:  # vcvtps2pd takes these from memory
                    col = b * block + step * _STEP + 4 * h
                    return tirx.Cast("float64x4", xbuf[(*lead_idx, tirx.Ramp(col, 1, 4))])

                # pass 1: Σx (float64) and the non-zero count
                sums.zero()
                T.buffer_store(cnt, _bc(tirx.const(0, "int32")), [tirx.Ramp(0, 1, 8)])
                with T.serial(0, block // _STEP) as c:
                    for j in range(4):
                        v = vec(c, j)
                        sums.add_halves(vec4(c, 2 * j), vec4(c, 2 * j + 1), j % 2)
                        nz = _intrin("float32x8", _CMP_PS, v, zero8, tirx.const(_NEQ_UQ, "int8"))
                        nzi = tirx.reinterpret("int32x8", nz)  # -1 where non-zero
                        T.buffer_store(cnt, cnt[tirx.Ramp(0, 1, 8)] - nzi, [tirx.Ramp(0, 1, 8)])
                kept = cnt[0]
                for i in range(1, 8):
                    kept = kept + cnt[i]
                T.buffer_store(d64, sums.total(), [0])
                T.buffer_store(d64, kept.astype(f64), [1])
                xsum = d64[0]
                T.buffer_store(g32, (xsum / tirx.const(block, f64)).astype(f32), [0])
                bf = _bc(g32[0])
                # pass 2: Σ|x - b| (float64) → s
                devs.zero()
                with T.serial(0, block // _STEP) as c:
                    for j in range(4):
                        devs.add(tirx.abs(vec(c, j) - bf), j % 2)
                den = tirx.max(d64[1], tirx.const(1, f64))
                T.buffer_store(d64, devs.total(), [2])
                sfv = tirx.max((d64[2] / den).astype(f32), tirx.const(EPS, f32))
                T.buffer_store(g32, sfv, [1])
                sf = _bc(g32[1])
                # pass 3: sign words (and, for ridge, Σx over the +1 codes)
                if ridge:
                    T.buffer_store(ints, tirx.const(0, "int32"), [0])
                with T.serial(0, block // _STEP) as c:
                    word = tirx.const(0, "int32")
                    for j in range(4):
                        v = vec(c, j)
                        ge = _intrin("float32x8", _CMP_PS, (v - bf) / sf, zero8,
                                     tirx.const(_GE_OQ, "int8"))  # fmt: skip
                        bits = _intrin("int32", _MOVMSK_PS, ge)
                        word = word | (bits << tirx.const(8 * j, "int32"))
                    T.buffer_store(ints, word, [1])
                    T.buffer_store(cbuf, ints[1].astype("uint32"),
                                   [*lead_idx, b * (block // 32) + c])  # fmt: skip
                    if ridge:
                        T.buffer_store(ints, ints[0] + tirx.popcount(ints[1]), [0])
                o = [*lead_idx, b]
                if not ridge:
                    T.buffer_store(sbuf, g32[1], o)
                    T.buffer_store(obuf, g32[0], o)
                else:
                    nblk = tirx.const(block, f64)
                    s = (ints[0] * 2 - block).astype(f64)  # Σq of ±1 codes
                    # C·B = Σ(x - b)·q + S·(b - Σx/B) and Σ(x - b)·q = Σ|x - b| (q = sign)
                    bf64 = g32[0].astype(f64)
                    cov = (d64[2] + s * (bf64 - xsum / nblk)) / nblk
                    T.buffer_store(d64, (nblk - s * s / nblk) / nblk
                                   + tirx.const(ridge_lambda, f64), [3])  # fmt: skip
                    ok = d64[3] != tirx.const(0, f64)
                    scale = tirx.Select(ok, cov / tirx.Select(ok, d64[3], tirx.const(1, f64)),
                                        tirx.const(0, f64))  # fmt: skip
                    T.buffer_store(g32, scale.astype(f32), [2])
                    T.buffer_store(sbuf, g32[2], o)
                    off = (xsum / nblk).astype(f32) - g32[2] * (s / nblk).astype(f32)
                    T.buffer_store(obuf, off, o)
        return ib.get()

    shapes = [(*lead, k // 32), (*lead, nb), (*lead, nb)]
    outs = te.extern(shapes, [x], body, name=name, dtype=["uint32", f32, f32], attrs=attrs)
    return outs[0], outs[1], outs[2]
