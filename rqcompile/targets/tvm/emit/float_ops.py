"""Emitters of the float and layout ops: ``relax.op`` calls (legalized to TOPI later) and the
TE computes of :mod:`.te_ops`."""

from __future__ import annotations

import math
from collections.abc import Callable

from rqcompile.ir.core import Op
from rqcompile.targets.tvm.adapter import relax, topi
from rqcompile.targets.tvm.emit.base import (
    TVM_DTYPES,
    Attrs,
    Emission,
    Emitter,
    Expr,
    _dims,
    _f32,
    _float,
    _int,
    _kw,
    _norm_axes,
    _op_key,
)
from rqcompile.targets.tvm.emit.te_ops import te_causal_mask, te_im2col, te_slice

__all__ = []


def _layer_norm(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(relax.op.nn.layer_norm(xs[0], xs[1], xs[2], _norm_axes(op), _float(op, "eps")))


def _rms_norm(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(relax.op.nn.rms_norm(xs[0], xs[1], _norm_axes(op), _float(op, "eps")))


_GELU = {"none": relax.op.nn.gelu, "tanh": relax.op.nn.gelu_tanh}


def _gelu(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(_GELU[str(op.attr("approximate"))](xs[0]))


def _reshape(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    # the result type has the -1 resolved (shapes are static here)
    return cx.emit(relax.op.reshape(xs[0], _dims(op.result.type)))


def _slice(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    """A TE slice whose start offset is a run-time argument.

    Convert splits grouped and depthwise convolutions into one slice per group; with each
    start baked in (``relax.op.strided_slice``) the tiny CNN had 132 distinct slice kernels
    that took 40 s to compile. With the start a parameter they share one kernel.
    """
    x_type = op.operands[0].type
    axis = _int(op, "axis") % x_type.rank
    dim = _dims(x_type)[axis]
    # Python slice clamping, resolved here so the kernel reads in-range indices only
    start, stop, step = slice(op.attr("start"), op.attr("stop"), op.attr("step")).indices(dim)
    size = len(range(start, stop, step))
    return cx.emit_shared(
        te_slice, xs, (x_type,), (start,), name="slice", axis=axis, size=size, step=step
    )


#: Inputs per concatenate kernel. TOPI picks the source with a chain of one ``Select`` per
#: input, and LLVM time grows fast with the chain: a 64-input concat (convert's per-group
#: outputs) took 5 s to compile, an 8-input one 0.4 s. Wider concats become a tree of
#: 8-input kernels, kept opaque so fusion can't merge them back into one; equal shapes share
#: a kernel.
_CONCAT_FANIN = 8


def _concat(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    axis = _int(op, "axis")
    if len(xs) <= _CONCAT_FANIN:
        return cx.emit(relax.op.concat(list(xs), axis=axis))
    parts = [(x, v.type) for x, v in zip(xs, op.operands, strict=True)]
    while len(parts) > 1:
        nxt = []
        for i in range(0, len(parts), _CONCAT_FANIN):
            chunk = parts[i : i + _CONCAT_FANIN]
            if len(chunk) == 1:
                nxt.append(chunk[0])
                continue
            types = tuple(t for _, t in chunk)
            key = ("concat", types, axis)
            out = cx.emit_te(
                topi.concatenate,
                [[x for x, _ in chunk]],
                key=key,
                name="concatenate",
                opaque=True,
                axis=axis,
            )
            size = sum(_dims(t)[axis] for t in types)
            shape = list(types[0].shape)
            shape[axis] = size
            nxt.append((out, types[0].with_shape(tuple(shape))))
        parts = nxt
    return parts[0][0]


def _causal_mask(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit_te(
        te_causal_mask, xs, key=_op_key(op), name="causal_mask", fill=_float(op, "fill")
    )


def _masked_fill(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(relax.op.where(xs[1], _f32(_float(op, "value")), xs[0]))


_RELAX_COMPARE = {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal",
                  "gt": "greater", "ge": "greater_equal"}  # fmt: skip


def _logical(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(getattr(relax.op, f"logical_{op.attr('fn')}")(*xs))


def _logical_not(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(relax.op.logical_not(xs[0]))


def _compare(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(getattr(relax.op, _RELAX_COMPARE[str(op.attr("fn"))])(*xs))


def _where(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(relax.op.where(*xs))


def _sdpa(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    """softmax(q @ kᵀ · scale [causal, top-left aligned as torch's is_causal]) @ v."""
    q, k, v = xs
    rank = op.operands[0].type.rank
    kt = relax.op.permute_dims(k, [*range(rank - 2), rank - 1, rank - 2])
    scores = cx.emit(relax.op.multiply(cx.emit(relax.op.matmul(q, kt)), _f32(_float(op, "scale"))))
    if op.attr("causal"):
        key = ("sdpa_mask", op.operands[0].type, op.operands[1].type)
        scores = cx.emit_te(
            te_causal_mask, [scores], key=key, name="causal_mask", fill=-math.inf, offset=0
        )
    return cx.emit(relax.op.matmul(cx.emit(relax.op.nn.softmax(scores, axis=-1)), v))


def _conv2d(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    a = op.attrs_dict
    return cx.emit(
        relax.op.nn.conv2d(
            xs[0],
            xs[1],
            strides=a["stride"],
            padding=a["padding"],
            dilation=a["dilation"],
            groups=a["groups"],
        )
    )


def _im2col(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit_te(te_im2col, xs, key=_op_key(op), name="im2col", **_kw(op))


def _spatial(fn: Callable[[Expr, Attrs], Expr]) -> Emitter:
    """A 2-D pooling op: relax wants NCHW, the IR also allows CHW (lifted to N = 1)."""

    def emit(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
        if op.operands[0].type.rank == 3:
            x = cx.emit(relax.op.expand_dims(xs[0], [0]))
            return cx.emit(relax.op.squeeze(cx.emit(fn(x, op.attrs_dict)), [0]))
        return cx.emit(fn(xs[0], op.attrs_dict))

    return emit


def _max_pool(x: Expr, a: Attrs) -> Expr:
    return relax.op.nn.max_pool2d(x, a["kernel"], a["stride"], a["padding"])


def _avg_pool(x: Expr, a: Attrs) -> Expr:
    return relax.op.nn.adaptive_avg_pool2d(x, a["output_size"])


def _mean(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    axes = list(op.attr("axes"))  # type: ignore[arg-type]
    return cx.emit(relax.op.mean(xs[0], axes, keepdims=bool(op.attr("keepdim"))))


def _cast(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(relax.op.astype(xs[0], TVM_DTYPES[str(op.attr("dtype"))]))


def _repeat_blocks(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(relax.op.repeat(xs[0], _int(op, "factor"), axis=-1))


def _softmax(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(relax.op.nn.softmax(xs[0], axis=_int(op, "axis")))


def _embedding(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(relax.op.take(xs[1], xs[0], axis=0, mode="clip"))


def _take(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    """``rq.take``: the runtime checks the index range first (``mode="clip"`` never reads
    out of bounds either way)."""
    axis = int(op.attr("axis")) % op.operands[0].type.rank  # type: ignore[operator]
    return cx.emit(relax.op.take(xs[0], xs[1], axis=axis, mode="clip"))


def _permute(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(relax.op.permute_dims(xs[0], list(op.attr("dims"))))  # type: ignore[arg-type]


def _pow_scalar(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    e = _float(op, "exponent")
    if e in (2.0, 3.0, 4.0):  # repeated multiply: exact sign for negative x, no TVM pow warning
        y = xs[0]
        for _ in range(int(e) - 1):
            y = cx.emit(relax.op.multiply(y, xs[0]))
        return y
    return cx.emit(relax.op.power(xs[0], _f32(e)))


def _broadcast_to(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
    return cx.emit(relax.op.broadcast_to(xs[0], _dims(op.result.type)))
