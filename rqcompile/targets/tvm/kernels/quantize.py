"""Dynamic activation quantization as a TE compute (:func:`te_quantize`), the TE twin of
``reference.quantize``; on AVX2 targets the one-pass micro-kernel of ``x86/quant.py``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rqcompile.errors import NumericsError
from rqcompile.quant.estimators import MINMAX_RUNTIMES
from rqcompile.quant.primitives import EPS, QFormat, code_range
from rqcompile.targets.tvm.adapter import te, tirx
from rqcompile.targets.tvm.kernels.common import (
    STAGE_ATTR,
    Tensor,
    _attrs,
    _f32,
    _f64,
    _nblocks,
    _shape,
    _stage,
)
from rqcompile.targets.tvm.x86.quant import avx2_quantize, quantize_micro_supported

__all__ = ["te_quantize"]


def te_quantize(
    x: Tensor,
    *,
    bits: float,
    symmetric: bool,
    block: int,
    estimator: str = "ridge",
    ridge_lambda: float = 0.01,
    pack: str = "none",
    isa: str = "generic",
    name: str = "quantize",
) -> tuple[Tensor, Tensor, Tensor]:
    """Dynamic quantization of ``x f32 [..., K]``, the TE twin of ``reference.quantize``.

    ``isa="avx2"`` (chosen by ``schedules.kernel_options`` from the target's features) runs
    affine ridge/ste quantizers (1 bit packed, 2-8 bits; at 1 bit also the {0, 1}-code
    min/max grid) as one micro-kernel (:mod:`x86.quant`: same codes, one row per parallel
    iteration); ``"generic"`` and every other format use the TE stages below.

    ``estimator`` is the ``rq.quantize`` attribute: ``"ridge"``, ``"ste"``, ``"gdnsq"`` or a
    min/max-grid quantizer of :data:`~rqcompile.quant.estimators.MINMAX_RUNTIMES`
    (docs/method.md#deployment-of-the-grids).

    Returns:
        ``(codes, scale f32 [..., nb], offset f32 [..., nb])``; codes are ``int8 [..., K]``
        (8-bit affine stored as ``code - 128``) or ``uint32 [..., K/32]`` for
        ``pack="bits32"``.
    """
    deployed = estimator
    estimator, grid = MINMAX_RUNTIMES.get(estimator, (estimator, None))
    if estimator not in ("ridge", "ste", "gdnsq"):
        raise NumericsError(f"te_quantize: unknown estimator {deployed!r}.")
    if estimator == "gdnsq" and (symmetric or bits == 1.5):
        raise NumericsError("te_quantize: gdnsq quantizes affine operands only.")
    if estimator == "gdnsq":
        # gdnsq with no clamp is exactly the STE quantizer of the min/max grid
        # (rqcompile/quant/gdnsq.py): grid (min, (max-min)/(2^b-1)), codes and dequant; at
        # 1 bit the {0, 1}-code grid handed on as ±1 (docs/method.md#deployment-of-the-grids).
        estimator, grid = "ste", "minmax"
    if pack not in ("none", "bits32") or (pack == "bits32" and bits != 1):
        raise NumericsError(
            f"te_quantize: pack={pack!r} needs pack 'none', or 'bits32' with bits=1."
        )
    if isa not in ("generic", "avx2"):
        raise NumericsError(f"te_quantize: unknown isa {isa!r}; use 'generic' or 'avx2'.")
    *lead, k = _shape(x)
    nb = _nblocks(k, block, "te_quantize")
    if isa == "avx2" and quantize_micro_supported(
        bits=bits, symmetric=symmetric, block=block, k=k, estimator=deployed, pack=pack
    ):
        attrs = _attrs("quantize", block, bits=float(bits), symmetric=bool(symmetric))
        return avx2_quantize(x, bits=bits, block=block, estimator=deployed,
                             ridge_lambda=ridge_lambda, pack=pack, name=name,
                             attrs={**attrs, STAGE_ATTR: "micro"})  # fmt: skip
    fmt = QFormat(bits, symmetric, grid)
    # the 1-bit {0, 1}-code min/max grid: codes handed on as ±1 (2c - 1), as fake_quant_blocks
    zero_one = fmt.zero_one
    lo, hi = code_range(QFormat(bits, symmetric))  # the stored alphabet (±1 at 1 bit)
    bshape = [*lead, nb]
    f64 = "float64"

    def xat(i: Sequence[Any], r: Any) -> Any:  # x at element r of block i = (*lead, b)
        return x[(*i[:-1], i[-1] * block + r)]

    def red(tag: str, stage: str, fn: Callable[..., Any], op: Any = te.sum) -> Tensor:
        r = te.reduce_axis((0, block), name=f"r_{tag}")
        return te.compute(bshape, lambda *i: op(fn(i, r), axis=r), name=f"{name}_{tag}",
                          attrs=_stage(stage))  # fmt: skip

    def per_block(tag: str, stage: str, fn: Callable[..., Any], attrs: Any = None) -> Tensor:
        return te.compute(bshape, fn, name=f"{name}_{tag}", attrs=attrs or _stage(stage))

    # stage 1: the grid (s_f, b_f), with the same float ops as primitives.grid
    b_f: Tensor | None = None
    xsum: Tensor | None = None  # float64 block sums of x, when the grid needs them
    if zero_one:  # b_f = min, s_f = max - min: the threshold sits at mid-range
        b_f = red("min", "grid", xat, te.min)
        xmax = red("max", "grid", xat, te.max)
        bmin = b_f
        s_f = per_block("sf", "grid", lambda *i: tirx.max(xmax(*i) - bmin(*i), _f32(EPS)))
    elif bits in (1, 1.5) and fmt.grid == "bitnet":  # means over the dense block, in float64
        if bits == 1 and not symmetric:
            xsum = red("xsum", "grid", lambda i, r: xat(i, r).astype(f64))
            b_f = per_block("bf", "grid", lambda *i: (xsum(*i) / _f64(block)).astype("float32"))
        bf = b_f
        asum = red(
            "asum",
            "grid",
            lambda i, r: tirx.abs(xat(i, r) - bf(*i) if bf is not None else xat(i, r)).astype(f64),
        )
        s_f = per_block("sf", "grid", lambda *i: tirx.max(
            (asum(*i) / _f64(block)).astype("float32"), _f32(EPS)))  # fmt: skip
    elif symmetric:  # also the 1-bit linear and ternary min/max grids: s_f = absmax (hi = 1)
        amax = red("amax", "grid", lambda i, r: tirx.abs(xat(i, r)), te.max)
        s_f = per_block("sf", "grid", lambda *i: tirx.max(amax(*i) / _f32(hi), _f32(EPS)))
    else:
        b_f = red("min", "grid", xat, te.min)
        xmax = red("max", "grid", xat, te.max)
        bmin = b_f
        s_f = per_block(
            "sf", "grid", lambda *i: tirx.max((xmax(*i) - bmin(*i)) / _f32(hi), _f32(EPS))
        )

    # stage 2: codes (float32-valued integers), z = (x - b_f) / s_f, round half-to-even
    def code_fn(*idx: Any) -> Any:
        bi = (*idx[:-1], idx[-1] // block)
        z = (x(*idx) - b_f(*bi)) / s_f(*bi) if b_f is not None else x(*idx) / s_f(*bi)
        if zero_one:  # code 2·round(z) - 1 with z in [0, 1], rounding half-to-even
            return tirx.Select(tirx.nearbyint(z) >= _f32(1), _f32(1), _f32(-1))
        if bits == 1:
            return tirx.Select(z >= _f32(0), _f32(1), _f32(-1))
        return tirx.min(tirx.max(tirx.nearbyint(z), _f32(lo)), _f32(hi))

    code = te.compute([*lead, k], code_fn, name=f"{name}_code", attrs=_stage("codes"))

    def qat(i: Sequence[Any], r: Any) -> Any:
        return code[(*i[:-1], i[-1] * block + r)]

    # stage 3: the dequantizer (estimators.py); statistics summed in float64, and the
    # exact-zero denominator (λ = 0, constant codes) gives scale 0 as there
    inv_b = _f64(1.0 / block)
    # The ridge fit on the ±1 codes q = 2c - 1 of the {0, 1} grid: C and V grow by 2 and 4,
    # so λ grows by 4 and the fit is exactly (scale/2, offset + scale/2) of the fit on c.
    lam = _f64(ridge_lambda * 4 if zero_one else ridge_lambda)

    def safe_div(num: Any, den: Any) -> Any:
        ok = den != _f64(0)
        return tirx.Select(ok, num / tirx.Select(ok, den, _f64(1)), _f64(0)).astype("float32")

    if zero_one and estimator == "ste":  # ±1 codes: Δ·c + l = (Δ/2)(2c - 1) + (l + Δ/2)
        sf_, bf_ = s_f, b_f
        scale = per_block("scale", "stats", lambda *i: sf_(*i) / _f32(2))
        offset = per_block("offset", "stats", lambda *i: bf_(*i) + sf_(*i) / _f32(2))
    elif estimator == "ste":
        scale = s_f
        offset = b_f if b_f is not None else per_block("zero", "stats", lambda *i: _f32(0))
    elif symmetric:
        qx = red("qx", "stats", lambda i, r: qat(i, r).astype(f64) * xat(i, r).astype(f64))
        qq = red("qq", "stats", lambda i, r: (qat(i, r) * qat(i, r)).astype(f64))
        scale = per_block(
            "scale", "stats", lambda *i: safe_div(qx(*i) * inv_b, qq(*i) * inv_b + lam)
        )
        offset = per_block("offset", "stats", lambda *i: _f32(0))
    else:
        # the same float64 sums as the 1-bit grid's: reuse them (one pass over x fewer)
        xs_ = xsum if xsum is not None else red("xs", "stats", lambda i, r: xat(i, r).astype(f64))
        qs_ = red("qs", "stats", lambda i, r: qat(i, r).astype(f64))

        def dx(i: Sequence[Any], r: Any) -> Any:
            return xat(i, r).astype(f64) - xs_(*i) * inv_b

        def dq(i: Sequence[Any], r: Any) -> Any:
            return qat(i, r).astype(f64) - qs_(*i) * inv_b

        cov = red("cov", "stats", lambda i, r: dx(i, r) * dq(i, r))
        var = red("var", "stats", lambda i, r: dq(i, r) * dq(i, r))
        scale = per_block(
            "scale", "stats", lambda *i: safe_div(cov(*i) * inv_b, var(*i) * inv_b + lam)
        )
        offset = per_block("offset", "stats", lambda *i: (xs_(*i) * inv_b).astype("float32")
                           - scale(*i) * (qs_(*i) * inv_b).astype("float32"))  # fmt: skip

    # stage 4: storage layout
    attrs = _attrs("quantize", block, bits=float(bits), symmetric=bool(symmetric))
    shift = bits == 8 and not symmetric
    if shift:  # docs/method.md#the-affine-shortcut: store code - 128, offset += 128·scale (an exact multiply)
        off = offset
        offset = per_block("offset_s8", "", lambda *i: off(*i) + _f32(128) * scale(*i), attrs)
    if pack == "bits32":
        if k % 32 or block % 32:
            raise NumericsError(f"te_quantize: bits32 packing needs K and block % 32 == 0 (K={k}).")
        t = te.reduce_axis((0, 32), name="bit")
        one, zero = tirx.const(1, "uint32"), tirx.const(0, "uint32")
        codes = te.compute([*lead, k // 32], lambda *i: te.sum(tirx.Select(
            code[(*i[:-1], i[-1] * 32 + t)] > _f32(0), one << t.var.astype("uint32"), zero),
            axis=t), name=f"{name}_bits", attrs=attrs)  # fmt: skip
    else:
        codes = te.compute([*lead, k], lambda *i: (code(*i) - _f32(128) if shift else code(*i))
                           .astype("int8"), name=f"{name}_codes", attrs=attrs)  # fmt: skip
    return codes, scale, offset
