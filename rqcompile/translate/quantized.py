"""Converters for the quantize → ridge-dequant → matmul patterns that ``prepare`` creates.

The trained weight quantizer is folded at convert time into integer codes plus per-block
``scale``/``offset`` (the dequantized weight is ``scale·code + offset``), and the kernel is
chosen per layer (docs/method.md#integer-deployment):

==========================================  ======================================
layer                                       kernel
==========================================  ======================================
1-bit activations and weights, block%32==0  ``rq.xnor_popcount_matmul`` (packed bits;
                                            convolutions too, C/groups % 32 == 0)
2:4-sparse weights, K%8==0                  ``rq.sparse24_matmul`` (values + 2-bit idx)
anything else                               ``rq.int_matmul`` (nibbles for ≤4-bit W)
weight-only linear (``W4``, ``W8``)         ``rq.wo_matmul`` (float x, integer codes)
weight-only convolution                     float conv on the dequantized weight
==========================================  ======================================

All integer kernels compute ``Σ_b (s_X s_Wᵀ)⊙P_b + rank-1 corrections`` with one integer GEMM
per block (P_b) — the identity of docs/method.md#the-affine-shortcut. Activations are quantized at run time by
``rq.quantize`` with the same estimator as in training. The kernel block is the gcd of the two
operand blocks; coarser per-block parameters are repeated (``rq.repeat_blocks``).
Convolutions are lowered as im2col (in (kh, kw, C/g) order, matching the training blocks) +
integer matmul per group.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from rqcompile.ir.core import Value
from rqcompile.passes.qat.common import check_finite
from rqcompile.quant.bitpack import pack_nibbles, pack_signs, pack_sparse24, shift_affine8
from rqcompile.quant.modules import RQQuantize
from rqcompile.translate.converters import _pair
from rqcompile.translate.context import QOperand, TranslateContext

__all__ = ["QUANTIZED_FUNCTIONS", "WeightPack", "pack_weight", "pack_weight_only"]

Cx = TranslateContext


@dataclass(frozen=True)
class WeightPack:
    kernel: str  # int_matmul | xnor_popcount_matmul | sparse24_matmul
    tensors: dict[str, torch.Tensor]  # packed codes (+ idx), scale, offset, wsum
    attrs: dict[str, Any]


def _xnor_ok(a: RQQuantize | None, w: RQQuantize, kb: int, k: int) -> bool:
    return (
        a is not None
        and a.spec.bits == 1
        and w.spec.bits == 1
        and w.sparsity is None
        and kb % 32 == 0
        and k % 32 == 0
    )


def pack_weight(w: RQQuantize, weight: torch.Tensor, kb: int, *, xnor: bool) -> WeightPack:
    """Fold a trained weight quantizer into kernel-ready integer tensors (K last, block ``kb``)."""
    check_finite(weight.detach(), layer=w.layer, what="the trained weight", stage="convert()")
    codes, scale, offset = w.quantize(weight.detach().float())  # (N, K) int16, (N, nbw)
    n, k = codes.shape
    f = (k // scale.shape[-1]) // kb
    scale, offset = scale.repeat_interleave(f, -1), offset.repeat_interleave(f, -1)
    if w.spec.bits == 8 and not w.spec.symmetric:
        codes, scale, offset = shift_affine8(codes, scale, offset)  # int8 code − 128
    codes = codes.to(torch.int8)
    wsum = codes.to(torch.int32).reshape(n, k // kb, kb).sum(-1).to(torch.int32)
    common = {"ws": scale.float().contiguous(), "wc": offset.float().contiguous(), "wsum": wsum}
    if xnor:
        return WeightPack(
            "xnor_popcount_matmul", {"wbits": pack_signs(codes), **common}, {"block": kb, "k": k}
        )
    sb = w.spec.storage_bits
    # the 2:4 layout packs two groups' indices per byte (K % 8 == 0); otherwise the pruned
    # codes (exact zeros) run through int_matmul, which gives the same result
    if w.sparsity is not None and (w.sparsity.n, w.sparsity.m) == (2, 4) and k % 8 == 0:
        vals, idx = pack_sparse24(codes)
        return WeightPack(
            "sparse24_matmul", {"wvals": vals, "widx": idx, **common}, {"block": kb, "w_bits": sb}
        )
    signed = bool(w.spec.symmetric or w.spec.bits == 1 or w.spec.bits == 8)
    if sb <= 4 and kb % 2 == 0:  # nibble pairs must not straddle blocks (kb | k)
        packed = pack_nibbles(codes, signed=signed)
    else:  # 5..8-bit codes, or an odd block (e.g. a kxk conv over one channel): one per int8
        packed, sb, signed = codes, 8, True
    return WeightPack(
        "int_matmul", {"wq": packed, **common}, {"block": kb, "w_bits": sb, "w_signed": signed}
    )


def pack_weight_only(w: RQQuantize, weight: torch.Tensor) -> WeightPack:
    """A weight-only layer's codes, stored as for ``rq.int_matmul`` (nibbles at ≤ 4 bits
    where the block is even, else int8; 8-bit affine codes shifted by -128), with the
    per-block ``ws``/``wc`` of the trained quantizer (``rq.wo_matmul``)."""
    check_finite(weight.detach(), layer=w.layer, what="the trained weight", stage="convert()")
    codes, scale, offset = w.quantize(weight.detach().float())  # (N, K) int16, (N, nbw)
    n, k = codes.shape
    kb = k // scale.shape[-1]
    if w.spec.bits == 8 and not w.spec.symmetric:
        codes, scale, offset = shift_affine8(codes, scale, offset)  # int8 code − 128
    codes = codes.to(torch.int8)
    sb = w.spec.storage_bits
    signed = bool(w.spec.symmetric or w.spec.bits == 1 or w.spec.bits == 8)
    if sb <= 4 and kb % 2 == 0:
        packed = pack_nibbles(codes, signed=signed)
    else:
        packed, sb, signed = codes, 8, True
    tensors = {"wq": packed, "ws": scale.float().contiguous(), "wc": offset.float().contiguous()}
    return WeightPack("wo_matmul", tensors, {"block": kb, "w_bits": sb, "w_signed": signed})


def _quantize(cx: Cx, a: RQQuantize, x: Value, *, pack: str = "none") -> tuple[Value, Value, Value]:
    return cx.op(
        "rq.quantize",
        x,
        bits=a.spec.bits,
        symmetric=a.spec.symmetric,
        block=a.block,
        estimator=a.runtime_estimator,
        ridge_lambda=a.ridge_lambda,
        pack=pack,
    )


def _refine(cx: Cx, v: Value, factor: int) -> Value:
    return v if factor == 1 else cx.op("rq.repeat_blocks", v, factor=factor)


def _emit_matmul(cx: Cx, pack: WeightPack, prefix: str, xq: Value, xs: Value, xc: Value) -> Value:
    consts = {name: cx.const(f"{prefix}.{name}", t) for name, t in pack.tensors.items()}
    order = {
        "int_matmul": ("wq", "ws", "wc", "wsum"),
        "xnor_popcount_matmul": ("wbits", "ws", "wc", "wsum"),
        "sparse24_matmul": ("wvals", "widx", "ws", "wc", "wsum"),
    }[pack.kernel]
    return cx.op(f"rq.{pack.kernel}", xq, xs, xc, *(consts[n] for n in order), **pack.attrs)


def _dequantized_weight(q: QOperand) -> torch.Tensor:
    layer = q.quant.layer  # type: ignore[union-attr]
    check_finite(q.source, layer=layer, what="the trained weight", stage="convert()")  # type: ignore[arg-type]
    with torch.no_grad():
        return q.quant(q.source.float()).detach()  # type: ignore[union-attr]


def _layer_name(q: QOperand) -> str:
    return q.quant.layer.replace(":", ".") or "layer"


def _linear(cx: Cx, x: Any, w: QOperand, b: Any = None) -> Value:
    if not isinstance(x, QOperand):  # weight-only: float x times the integer weight codes
        return _weight_only_linear(cx, x, w, b)
    a, src = x.quant, cx.value(x.source)
    lead, k = list(src.type.shape[:-1]), int(src.type.shape[-1])  # type: ignore[arg-type]
    m = math.prod(int(d) for d in lead)  # type: ignore[arg-type]
    x2 = src if len(lead) == 1 else cx.op("rq.reshape", src, shape=(m, k))
    kb = math.gcd(a.block, w.quant.block)
    xnor = _xnor_ok(a, w.quant, kb, k)
    pack = pack_weight(w.quant, w.source, kb, xnor=xnor)  # type: ignore[arg-type]
    xq, xs, xc = _quantize(cx, a, x2, pack="bits32" if xnor else "none")
    xs, xc = _refine(cx, xs, a.block // kb), _refine(cx, xc, a.block // kb)
    y = _emit_matmul(cx, pack, _layer_name(w), xq, xs, xc)
    if b is not None:
        y = cx.op("rq.add", y, cx.value(b))
    n = int(pack.tensors["ws"].shape[0])
    return y if len(lead) == 1 else cx.op("rq.reshape", y, shape=(*(int(d) for d in lead), n))  # type: ignore[arg-type]


def _weight_only_linear(cx: Cx, x: Any, w: QOperand, b: Any) -> Value:
    """``rq.wo_matmul`` on the folded codes (a dequantized float ``rq.linear`` where the
    layer has no block structure the op takes, e.g. a 1-D input)."""
    src = cx.value(x)
    shape = [int(d) for d in src.type.shape]  # type: ignore[union-attr]
    if len(shape) < 2 or w.quant.block is None:  # type: ignore[union-attr]
        y = cx.op("rq.linear", src,
                  cx.value(_dequantized_weight(w), name=f"{_layer_name(w)}.w_dequant"))  # fmt: skip
        return y if b is None else cx.op("rq.add", y, cx.value(b))
    *lead, k = shape
    m = math.prod(lead)
    x2 = src if len(lead) == 1 else cx.op("rq.reshape", src, shape=(m, k))
    pack = pack_weight_only(w.quant, w.source)  # type: ignore[arg-type]
    prefix = _layer_name(w)
    consts = [cx.const(f"{prefix}.{name}", pack.tensors[name]) for name in ("wq", "ws", "wc")]
    y = cx.op("rq.wo_matmul", x2, *consts, **pack.attrs)
    if b is not None:
        y = cx.op("rq.add", y, cx.value(b))
    n = int(pack.tensors["ws"].shape[0])
    return y if len(lead) == 1 else cx.op("rq.reshape", y, shape=(*lead, n))


def _conv(
    cx: Cx,
    x: Any,
    w: QOperand,
    b: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    one_d: bool,
) -> Value:
    """F.conv1d / F.conv2d (torch's signature) with a quantized weight; conv1d runs as 2-D."""
    weight: torch.Tensor = w.source  # type: ignore[assignment]
    if isinstance(padding, str):  # "valid" / symmetric "same" as numbers, else refused
        from rqcompile.translate.converters import _conv_padding

        nd = weight.dim() - 2
        padding = _conv_padding(
            padding, tuple(weight.shape[2:]), _pair(stride, nd), _pair(dilation, nd)
        )[:nd]
    if one_d:  # conv1d(N, C, L) runs as conv2d(N, C, 1, L)
        stride, padding, dilation = (
            (1, _pair(stride, 1)[0]),
            (0, _pair(padding, 1)[0]),
            (1, _pair(dilation, 1)[0]),
        )
    if isinstance(padding, str):
        raise TypeError(
            f"padding={padding!r} strings are not supported by the quantized conv lowering"
        )
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if not isinstance(x, QOperand):  # weight-only
        src = cx.value(x)
        if one_d:
            n_, c_, l_ = (int(d) for d in src.type.shape)  # type: ignore[arg-type]
            src = cx.op("rq.reshape", src, shape=(n_, c_, 1, l_))
        wd = _dequantized_weight(w)
        wd = wd.unsqueeze(2) if one_d else wd
        y = cx.op(
            "rq.conv2d",
            src,
            cx.value(wd, name=f"{_layer_name(w)}.w_dequant"),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=int(groups),
        )
        return _conv_tail(cx, y, b, one_d)
    a, src = x.quant, cx.value(x.source)
    if one_d:
        n_, c_, l_ = (int(d) for d in src.type.shape)  # type: ignore[arg-type]
        src = cx.op("rq.reshape", src, shape=(n_, c_, 1, l_))
    n, c, h, wd_ = (int(d) for d in src.type.shape)  # type: ignore[arg-type]
    o = int(weight.shape[0])
    kh, kw = (1, int(weight.shape[2])) if one_d else (int(weight.shape[2]), int(weight.shape[3]))
    cpg = c // groups
    kb = math.gcd(math.gcd(a.block, w.quant.block), cpg)
    # 1-bit both sides: the sign bits are packed 32 per word along channels before im2col,
    # so a window copies whole words (kb | C/g and 32 | kb); a padded tap's block has zero
    # scale and offset, so whatever its bits, it adds nothing (as in the integer path)
    xnor = _xnor_ok(a, w.quant, kb, kh * kw * cpg)
    pack = pack_weight(w.quant, weight, kb, xnor=xnor)
    per = 32 if xnor else 1  # codes per element of the quantized activation
    nhwc = cx.op("rq.permute", src, dims=(0, 2, 3, 1))
    flat = cx.op("rq.reshape", nhwc, shape=(n * h * wd_, c))
    xq, xs, xc = _quantize(cx, a, flat, pack="bits32" if xnor else "none")
    xs, xc = _refine(cx, xs, a.block // kb), _refine(cx, xc, a.block // kb)
    xq4 = cx.op("rq.reshape", xq, shape=(n, h, wd_, c // per))
    xs4 = cx.op("rq.reshape", xs, shape=(n, h, wd_, c // kb))
    xc4 = cx.op("rq.reshape", xc, shape=(n, h, wd_, c // kb))
    win = {"kernel": (kh, kw), "stride": stride, "padding": padding, "dilation": dilation}
    outs = []
    og = o // groups
    for g in range(groups):

        def part(v: Value, per: int, g: int = g) -> Value:
            if groups == 1:
                return v
            return cx.op("rq.slice", v, axis=3, start=g * per, stop=(g + 1) * per, step=1)

        cols = cx.op("rq.im2col", part(xq4, cpg // per), **win)
        ho, wo, kw_ = (int(d) for d in cols.type.shape[1:])  # type: ignore[arg-type]
        m, kk = n * ho * wo, kw_ * per
        cq = cx.op("rq.reshape", cols, shape=(m, kw_))
        cs = cx.op(
            "rq.reshape", cx.op("rq.im2col", part(xs4, cpg // kb), **win), shape=(m, kk // kb)
        )
        cc = cx.op(
            "rq.reshape", cx.op("rq.im2col", part(xc4, cpg // kb), **win), shape=(m, kk // kb)
        )
        gp = (
            pack
            if groups == 1
            else WeightPack(
                pack.kernel,
                {k_: t[g * og : (g + 1) * og] for k_, t in pack.tensors.items()},
                pack.attrs,
            )
        )
        prefix = _layer_name(w) if groups == 1 else f"{_layer_name(w)}.g{g}"
        outs.append(_emit_matmul(cx, gp, prefix, cq, cs, cc))
    y = outs[0] if groups == 1 else cx.op("rq.concat", *outs, axis=1)
    y = cx.op("rq.reshape", y, shape=(n, ho, wo, o))
    y = cx.op("rq.permute", y, dims=(0, 3, 1, 2))
    return _conv_tail(cx, y, b, one_d)


def _conv_tail(cx: Cx, y: Value, b: Any, one_d: bool) -> Value:
    if b is not None:
        y = cx.op("rq.add", y, cx.value(b.reshape(-1, 1, 1)))
    if one_d:
        n, o, _, l_ = (int(d) for d in y.type.shape)  # type: ignore[arg-type]
        y = cx.op("rq.reshape", y, shape=(n, o, l_))
    return y


def _qmatmul(cx: Cx, a: QOperand, b: QOperand) -> Value:
    """Activation × activation: both sides quantized at run time (``rq.qbmm``)."""
    va, vb = cx.value(a.source), cx.value(b.source)
    *lead, m, k = (int(d) for d in va.type.shape)  # type: ignore[arg-type]
    nn_ = int(vb.type.shape[-1])  # type: ignore[arg-type]
    bt = math.prod(lead) if lead else 1
    a3 = cx.op("rq.reshape", va, shape=(bt, m, k))
    rb = len(vb.type.shape)
    perm = tuple(range(rb - 2)) + (rb - 1, rb - 2)
    b3 = cx.op("rq.reshape", cx.op("rq.permute", vb, dims=perm), shape=(bt, nn_, k))
    aq, as_, ac = _quantize(cx, a.quant, a3)
    bq, bs, bc = _quantize(cx, b.quant, b3)
    y = cx.op("rq.qbmm", aq, as_, ac, bq, bs, bc, block=a.quant.block)
    return cx.op("rq.reshape", y, shape=(*lead, m, nn_))


QUANTIZED_FUNCTIONS: dict[Any, Callable[..., Any]] = {
    F.linear: _linear,
    F.conv2d: partial(_conv, one_d=False),
    F.conv1d: partial(_conv, one_d=True),
    torch.matmul: _qmatmul,
    operator.matmul: _qmatmul,
    torch.bmm: _qmatmul,
    torch.ops.aten.matmul.default: _qmatmul,
    torch.ops.aten.bmm.default: _qmatmul,
}
