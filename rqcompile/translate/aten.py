"""Converter table for the ATen ops that ``torch.export`` capture produces (float ops).

Graphs captured with ``torch.export`` (``capture/export.py``) call ``torch.ops.aten.*``
overloads instead of ``torch.*`` / ``F.*`` functions. Most map onto a converter of
``converters.py`` with the argument order adapted; the few that need new IR ops
(``rq.rsqrt``, ``rq.pow_scalar``, ``rq.broadcast_to``) are in ``ir/ops_more.py``. Ops whose
inputs are all constants (position ids, causal masks, rotary tables) never reach this table:
the walker folds them with torch at convert time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rqcompile.ir.core import Value
from rqcompile.translate import converters as C
from rqcompile.translate.context import TranslateContext

__all__ = ["ATEN"]

Cx = TranslateContext
aten = torch.ops.aten


def _dims_of(cx: Cx, x: Any) -> list[int]:
    return [int(d) for d in cx.value(x).type.shape]  # type: ignore[arg-type]


def _unsqueeze(cx: Cx, x: Any, dim: int) -> Value:
    shape = _dims_of(cx, x)
    d = dim % (len(shape) + 1)
    return cx.op("rq.reshape", cx.value(x), shape=(*shape[:d], 1, *shape[d:]))


def _squeeze(cx: Cx, x: Any, dim: Any = None) -> Value:
    shape = _dims_of(cx, x)
    dims = range(len(shape)) if dim is None else (dim if isinstance(dim, (list, tuple)) else [dim])
    drop = {d % len(shape) for d in dims if shape[d % len(shape)] == 1}
    return cx.op(
        "rq.reshape", cx.value(x), shape=tuple(s for i, s in enumerate(shape) if i not in drop)
    )


def _slice(cx: Cx, x: Any, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> Any:
    return C._getitem(
        cx, x, (slice(None),) * (dim % len(_dims_of(cx, x))) + (slice(start, end, step),)
    )


def _select(cx: Cx, x: Any, dim: int, index: int) -> Any:
    return C._getitem(cx, x, (slice(None),) * (dim % len(_dims_of(cx, x))) + (int(index),))


def _unbind(cx: Cx, x: Any, dim: int = 0) -> tuple[Any, ...]:
    n = _dims_of(cx, x)[dim]
    return tuple(_select(cx, x, dim, i) for i in range(n))


def _expand(cx: Cx, x: Any, size: Any, **kw: Any) -> Value:
    shape = _dims_of(cx, x)
    size = [int(s) for s in size]
    lead = len(size) - len(shape)
    out = tuple(shape[i - lead] if s == -1 else s for i, s in enumerate(size))
    if out == tuple(shape):
        return cx.value(x)
    return cx.op("rq.broadcast_to", cx.value(x), shape=out)


def _to(cx: Cx, x: Any, *args: Any, dtype: Any = None, **kw: Any) -> Any:
    """``x.to(...)``: a device move is the identity (all CPU here); a dtype change a cast."""
    from rqcompile.ir.types import dtype_of_torch

    dtype = dtype or next((a for a in args if isinstance(a, torch.dtype)), None)
    if dtype is None:
        return x
    if not isinstance(x, Value):  # a constant: convert it now
        return x.to(dtype) if isinstance(x, torch.Tensor) else x
    if x.type.dtype == dtype_of_torch(dtype):
        return x
    return cx.op("rq.cast", x, dtype=dtype_of_torch(dtype))


def _index(cx: Cx, x: Any, indices: Any) -> Any:
    """``x[i0, i1, ...]`` (advanced indexing, ``aten.index.Tensor``) with constant index
    tensors: the result's positions in ``x`` are computed here, once, by indexing an
    ``arange`` of ``x``'s shape the same way (torch's own semantics), and the IR gathers
    them with ``rq.embedding`` from ``x`` viewed as a one-column table. Indices that depend
    on inputs are refused with the node named."""
    from rqcompile.errors import UnsupportedOpError

    if any(isinstance(i, Value) for i in indices if i is not None):
        raise UnsupportedOpError(
            "x[index] with an index computed from the inputs (a data-dependent gather) has no "
            "rq IR op; only constant indices are converted."
        )
    shape = tuple(int(d) for d in x.type.shape)
    numel = 1
    for d in shape:
        numel *= d
    where = torch.arange(numel).reshape(shape)[tuple(indices)]
    dtype = x.type.dtype
    xf = x if dtype == "f32" else cx.op("rq.cast", x, dtype="f32")
    table = cx.op("rq.reshape", xf, shape=(numel, 1))
    y = cx.op("rq.embedding", cx.value(where.to(torch.int64)), table)
    y = cx.op("rq.reshape", y, shape=tuple(int(d) for d in where.shape))
    return y if dtype == "f32" else cx.op("rq.cast", y, dtype=dtype)


def _operands(cx: Cx, *xs: Any) -> list[Value]:
    """``xs`` as IR values; constants take the dtype of the first IR value among them."""
    from rqcompile.ir.types import torch_dtype

    like = next((v for v in xs if isinstance(v, Value)), None)
    dtype = torch.float32 if like is None else torch_dtype(like.type.dtype)
    return [v if isinstance(v, Value) else cx.value(torch.as_tensor(v, dtype=dtype)) for v in xs]


def _bool_binary(kind: str, fn: str) -> Callable[..., Any]:
    """``a & b``, ``a == b``, ...: ``rq.logical`` / ``rq.compare``."""

    def conv(cx: Cx, a: Any, b: Any) -> Value:
        return cx.op(f"rq.{kind}", *_operands(cx, a, b), fn=fn)

    return conv


def _not(cx: Cx, x: Value) -> Value:
    from rqcompile.errors import UnsupportedOpError

    if x.type.dtype != "i1":
        raise UnsupportedOpError(f"bitwise not of a {x.type.dtype} tensor (only booleans).")
    return cx.op("rq.logical_not", x)


def _where(cx: Cx, c: Any, a: Any, b: Any) -> Value:
    return cx.op("rq.where", cx.value(c), *_operands(cx, a, b))


def _addmm(cx: Cx, b: Any, x: Any, w: Any, *, beta: Any = 1, alpha: Any = 1) -> Value:
    y = C._mul(cx, C._matmul(cx, x, w), alpha) if alpha != 1 else C._matmul(cx, x, w)
    return C._add(cx, y, b if beta == 1 else C._mul(cx, b, beta))


def _embedding(cx: Cx, table: Any, ids: Any, *args: Any, **kw: Any) -> Value:
    return C._embedding(cx, ids, table)


def _layer_norm(
    cx: Cx, x: Any, shape: Any, w: Any = None, b: Any = None, eps: float = 1e-5, *a: Any
) -> Value:
    return C._layer_norm(cx, x, shape, w, b, eps)


def _softmax(cx: Cx, x: Any, dim: int, *args: Any) -> Value:
    return cx.op("rq.softmax", cx.value(x), axis=int(dim))


def _batch_norm(
    cx: Cx,
    x: Any,
    w: Any,
    b: Any,
    mean: Any,
    var: Any,
    training: bool = False,
    momentum: Any = 0.1,
    eps: float = 1e-5,
    *a: Any,
) -> Value:
    if training:
        raise TypeError("batch_norm in training mode cannot be converted (export in eval mode)")
    scale = (w if w is not None else torch.ones_like(var)) / torch.sqrt(var + eps)
    shift = (b if b is not None else torch.zeros_like(mean)) - mean * scale
    y = cx.op("rq.mul", cx.value(x), cx.value(scale.reshape(-1, 1, 1)))
    return cx.op("rq.add", y, cx.value(shift.reshape(-1, 1, 1)))


def _max_pool2d(
    cx: Cx, x: Any, k: Any, s: Any = (), p: Any = 0, dilation: Any = 1, ceil: bool = False
) -> Value:
    if C._pair(dilation) != (1, 1) or ceil:
        raise TypeError("max_pool2d with dilation or ceil_mode is not supported")
    return C._max_pool2d(cx, x, k, s, p)


def _sdpa(
    cx: Cx,
    q: Any,
    k: Any,
    v: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: Any = None,
    enable_gqa: bool = False,
) -> Value:
    """scaled_dot_product_attention; a constant additive or boolean mask is applied explicitly."""
    d = _dims_of(cx, q)[-1]
    sc = float(scale) if scale is not None else d**-0.5
    if attn_mask is None and not enable_gqa:
        return cx.op(
            "rq.sdpa", cx.value(q), cx.value(k), cx.value(v), causal=bool(is_causal), scale=sc
        )
    if enable_gqa:
        raise TypeError("scaled_dot_product_attention(enable_gqa=True) is not supported")
    s = C._matmul(cx, q, C._transpose(cx, k, -2, -1))
    s = cx.op("rq.mul_scalar", s, value=sc)
    if is_causal:
        s = cx.op("rq.causal_mask", s)
    if isinstance(attn_mask, torch.Tensor) and attn_mask.dtype == torch.bool:
        s = cx.op("rq.masked_fill", s, cx.value(~attn_mask), value=float("-inf"))
    else:
        s = C._add(cx, s, attn_mask)
    return C._matmul(cx, cx.op("rq.softmax", s, axis=-1), v)


def _unary(name: str) -> Callable[..., Value]:
    return lambda cx, x, *a, **kw: cx.op(name, cx.value(x))


#: ``torch.ops.aten`` overload → converter (same calling convention as ``converters.FUNCTIONS``).
ATEN: dict[Any, Callable[..., Any]] = {
    # arithmetic
    aten.add.Tensor: C._add,
    aten.add.Scalar: C._add,
    aten.sub.Tensor: C._sub,
    aten.sub.Scalar: C._sub,
    aten.rsub.Scalar: lambda cx, a, b, alpha=1: C._sub(cx, b, a, alpha),
    aten.mul.Tensor: C._mul,
    aten.mul.Scalar: C._mul,
    aten.div.Tensor: C._div,
    aten.div.Scalar: C._div,
    aten.neg.default: lambda cx, x: cx.op("rq.mul_scalar", cx.value(x), value=-1.0),
    aten.pow.Tensor_Scalar: lambda cx, x, e: cx.op("rq.pow_scalar", cx.value(x), exponent=float(e)),
    aten.rsqrt.default: _unary("rq.rsqrt"),
    aten.mean.dim: C._mean,
    aten.mean.default: C._mean,
    # activations and normalisation
    aten.relu.default: _unary("rq.relu"),
    aten.silu.default: _unary("rq.silu"),
    aten.tanh.default: _unary("rq.tanh"),
    aten.sigmoid.default: _unary("rq.sigmoid"),
    aten.gelu.default: C._gelu,
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.layer_norm.default: _layer_norm,
    aten.batch_norm.default: _batch_norm,
    aten.dropout.default: C._identity,
    # matmuls and layers kept in float
    aten.linear.default: C._linear,
    aten.addmm.default: _addmm,
    aten.mm.default: C._matmul,
    aten.matmul.default: C._matmul,
    aten.bmm.default: C._matmul,
    aten.conv2d.default: C._conv2d,
    aten.embedding.default: _embedding,
    aten.scaled_dot_product_attention.default: _sdpa,
    aten.max_pool2d.default: _max_pool2d,
    aten.adaptive_avg_pool2d.default: C._adaptive_avg_pool2d,
    aten.masked_fill.Scalar: C._masked_fill,
    # layout
    aten.view.default: C._reshape,
    aten.reshape.default: C._reshape,
    aten._unsafe_view.default: C._reshape,
    aten.flatten.using_ints: C._flatten,
    aten.unsqueeze.default: _unsqueeze,
    aten.squeeze.dim: _squeeze,
    aten.squeeze.dims: _squeeze,
    aten.squeeze.default: _squeeze,
    aten.permute.default: C._permute,
    aten.transpose.int: C._transpose,
    aten.t.default: lambda cx, x: C._transpose(cx, x, 0, 1),
    aten.slice.Tensor: _slice,
    aten.select.int: _select,
    aten.unbind.int: _unbind,
    aten.split.Tensor: C._split,
    aten.split_with_sizes.default: C._split,
    aten.chunk.default: C._chunk,
    aten.cat.default: C._cat,
    aten.expand.default: _expand,
    aten.contiguous.default: C._identity,
    aten.clone.default: C._identity,
    aten.alias.default: C._identity,
    aten.detach.default: C._identity,
    aten.to.dtype: _to,
    aten.__and__.Tensor: _bool_binary("logical", "and"),
    aten.__or__.Tensor: _bool_binary("logical", "or"),
    aten.bitwise_and.Tensor: _bool_binary("logical", "and"),
    aten.bitwise_or.Tensor: _bool_binary("logical", "or"),
    aten.logical_and.default: _bool_binary("logical", "and"),
    aten.logical_or.default: _bool_binary("logical", "or"),
    aten.logical_not.default: lambda cx, x: _not(cx, x),
    aten.bitwise_not.default: lambda cx, x: _not(cx, x),
    **{getattr(aten, f).Tensor: _bool_binary("compare", f) for f in ("eq", "ne", "lt", "le", "gt", "ge")},
    **{getattr(aten, f).Scalar: _bool_binary("compare", f) for f in ("eq", "ne", "lt", "le", "gt", "ge")},
    aten.where.self: _where,
    aten.where.ScalarOther: _where,
    aten.where.ScalarSelf: _where,
    aten.where.Scalar: _where,
    aten.index.Tensor: _index,
    aten.to.device: _to,
    aten.to.dtype_layout: _to,
    aten._to_copy.default: _to,
}
