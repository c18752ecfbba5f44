"""Converter table for float ops: fx target → function emitting rq IR (float ops stay float).

Each converter takes the :class:`TranslateContext` and the node's already-translated
arguments (IR values, folded tensors or Python values) and returns the result.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rqcompile.ir.core import Value
from rqcompile.translate.context import TranslateContext

__all__ = ["FUNCTIONS", "METHODS", "MODULES"]

Cx = TranslateContext


def _pair(v: Any, n: int = 2) -> tuple[int, ...]:
    """An int or a sequence as a tuple of ints; an int repeats ``n`` times (torch's conv/pool
    argument convention)."""
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _scalar(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def _add(cx: Cx, a: Any, b: Any, alpha: Any = 1) -> Value:
    if alpha != 1:
        b = _mul(cx, b, alpha)
    if _scalar(b) is not None:
        return cx.op("rq.add_scalar", cx.value(a), value=_scalar(b))
    if _scalar(a) is not None:
        return cx.op("rq.add_scalar", cx.value(b), value=_scalar(a))
    return cx.op("rq.add", cx.value(a), cx.value(b))


def _mul(cx: Cx, a: Any, b: Any) -> Value:
    if _scalar(b) is not None:
        return cx.op("rq.mul_scalar", cx.value(a), value=_scalar(b))
    if _scalar(a) is not None:
        return cx.op("rq.mul_scalar", cx.value(b), value=_scalar(a))
    return cx.op("rq.mul", cx.value(a), cx.value(b))


def _sub(cx: Cx, a: Any, b: Any, alpha: Any = 1) -> Value:
    if _scalar(b) is not None:
        return cx.op("rq.add_scalar", cx.value(a), value=-_scalar(b) * alpha)  # type: ignore[operator]
    if _scalar(a) is not None:
        neg = cx.op("rq.mul_scalar", cx.value(b), value=-float(alpha))
        return cx.op("rq.add_scalar", neg, value=_scalar(a))
    if alpha != 1:
        b = _mul(cx, b, alpha)
    return cx.op("rq.sub", cx.value(a), cx.value(b))


def _div(cx: Cx, a: Any, b: Any) -> Value:
    if _scalar(b) is not None:
        return cx.op("rq.mul_scalar", cx.value(a), value=1.0 / _scalar(b))  # type: ignore[operator]
    return cx.op("rq.div", cx.value(a), cx.value(b))


def _unary(name: str) -> Callable[..., Value]:
    def conv(cx: Cx, x: Any, *args: Any, **kwargs: Any) -> Value:
        return cx.op(name, cx.value(x))

    return conv


def _gelu(cx: Cx, x: Any, approximate: str = "none") -> Value:
    return cx.op("rq.gelu", cx.value(x), approximate=approximate)


def _softmax(cx: Cx, x: Any, dim: int | None = None, *args: Any, **kwargs: Any) -> Value:
    axis = kwargs.get("dim", dim)
    return cx.op("rq.softmax", cx.value(x), axis=-1 if axis is None else int(axis))


def _identity(cx: Cx, x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


def _shape_args(args: tuple[Any, ...]) -> tuple[int, ...]:
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        args = tuple(args[0])
    return tuple(int(a) for a in args)


def _reshape(cx: Cx, x: Any, *shape: Any) -> Value:
    return cx.op("rq.reshape", cx.value(x), shape=_shape_args(shape))


def _flatten(cx: Cx, x: Any, start_dim: int = 0, end_dim: int = -1) -> Value:
    v = cx.value(x)
    dims = list(v.type.shape)
    r = len(dims)
    s, e = start_dim % r, end_dim % r
    merged = 1
    for d in dims[s : e + 1]:
        merged *= int(d)  # type: ignore[arg-type]
    return cx.op("rq.reshape", v, shape=(*dims[:s], merged, *dims[e + 1 :]))


def _permute(cx: Cx, x: Any, *dims: Any) -> Value:
    return cx.op("rq.permute", cx.value(x), dims=_shape_args(dims))


def _transpose(cx: Cx, x: Any, d0: int, d1: int) -> Value:
    v = cx.value(x)
    r = len(v.type.shape)
    perm = list(range(r))
    perm[d0 % r], perm[d1 % r] = perm[d1 % r], perm[d0 % r]
    return cx.op("rq.permute", v, dims=tuple(perm))


def _slice(cx: Cx, v: Value, axis: int, start: int, stop: int, step: int = 1) -> Value:
    return cx.op("rq.slice", v, axis=axis, start=start, stop=stop, step=step)


def _split(cx: Cx, x: Any, size: Any, dim: int = 0) -> tuple[Value, ...]:
    v = cx.value(x)
    n = int(v.type.shape[dim])  # type: ignore[arg-type]
    sizes = (
        [size] * (n // size) + ([n % size] if n % size else [])
        if isinstance(size, int)
        else list(size)
    )
    out, start = [], 0
    for s in sizes:
        out.append(_slice(cx, v, dim, start, start + s))
        start += s
    return tuple(out)


def _chunk(cx: Cx, x: Any, chunks: int, dim: int = 0) -> tuple[Value, ...]:
    n = int(cx.value(x).type.shape[dim])  # type: ignore[arg-type]
    return _split(cx, x, -(-n // chunks), dim)


def _getitem(cx: Cx, x: Any, idx: Any) -> Any:
    if not isinstance(x, Value):
        return x[idx]
    idx = idx if isinstance(idx, tuple) else (idx,)
    v, axis, drop = x, 0, []
    rank = len(x.type.shape)
    if Ellipsis in idx:
        i = idx.index(Ellipsis)
        idx = idx[:i] + (slice(None),) * (rank - len(idx) + 1) + idx[i + 1 :]
    for it in idx:
        n = int(v.type.shape[axis])  # type: ignore[arg-type]
        if isinstance(it, slice):
            start, stop, step = it.indices(n)
            if (start, stop, step) != (0, n, 1):
                v = _slice(cx, v, axis, start, stop, step)
        elif isinstance(it, int):
            i = it % n
            v = _slice(cx, v, axis, i, i + 1)
            drop.append(axis)
        else:
            from rqcompile.errors import UnsupportedOpError

            raise UnsupportedOpError(
                f"indexing with {type(it).__name__} {it!r:.60}: the IR indexes only with ints, "
                "slices and '...'"
            )
        axis += 1
    if drop:
        shape = tuple(d for i, d in enumerate(v.type.shape) if i not in drop)
        v = cx.op("rq.reshape", v, shape=tuple(int(d) for d in shape))  # type: ignore[arg-type]
    return v


def _masked_fill(cx: Cx, x: Any, mask: Any, value: Any) -> Value:
    m = mask if isinstance(mask, Value) else cx.value(mask.to(torch.bool))
    return cx.op("rq.masked_fill", cx.value(x), m, value=float(value))


def _matmul(cx: Cx, a: Any, b: Any) -> Value:
    return cx.op("rq.matmul", cx.value(a), cx.value(b))


def _linear(cx: Cx, x: Any, w: Any, b: Any = None) -> Value:
    y = cx.op("rq.linear", cx.value(x), cx.value(w))
    return y if b is None else cx.op("rq.add", y, cx.value(b))


def _layer_norm(
    cx: Cx, x: Any, shape: Any, w: Any = None, b: Any = None, eps: float = 1e-5
) -> Value:
    v = cx.value(x)
    d = int(v.type.shape[-1])  # type: ignore[arg-type]
    if len(tuple(shape)) != 1:
        raise TypeError("layer_norm over more than the last dim is not supported")
    w = torch.ones(d) if w is None else w
    b = torch.zeros(d) if b is None else b
    return cx.op("rq.layer_norm", v, cx.value(w), cx.value(b), eps=float(eps))


def _conv2d(
    cx: Cx,
    x: Any,
    w: Any,
    b: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> Value:
    if isinstance(padding, str):
        padding = _conv_padding(padding, tuple(w.shape[2:]), _pair(stride), _pair(dilation))
    y = cx.op(
        "rq.conv2d",
        cx.value(x),
        cx.value(w),
        stride=_pair(stride),
        padding=_pair(padding),
        dilation=_pair(dilation),
        groups=int(groups),
    )
    if b is None:
        return y
    return cx.op("rq.add", y, cx.value(b.reshape(-1, 1, 1)))


def _conv_padding(
    mode: str, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[int, ...]:
    """``padding="valid"|"same"`` as explicit symmetric padding, or UnsupportedOpError."""
    from rqcompile.errors import UnsupportedOpError

    if mode == "valid":
        return (0, 0)
    totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    if mode == "same" and all(s == 1 for s in stride) and all(t % 2 == 0 for t in totals):
        return tuple(t // 2 for t in totals)
    raise UnsupportedOpError(
        f"conv2d padding={mode!r} with kernel {kernel}, dilation {dilation}, stride {stride} "
        "needs asymmetric padding, which the IR's conv2d does not have; use an odd kernel "
        "or explicit padding."
    )


def _mean(cx: Cx, x: Any, dim: Any = None, keepdim: bool = False, **kw: Any) -> Value:
    v = cx.value(x)
    axes = (
        tuple(range(len(v.type.shape)))
        if dim is None
        else (dim if isinstance(dim, (tuple, list)) else (dim,))
    )
    return cx.op("rq.mean", v, axes=tuple(int(a) for a in axes), keepdim=bool(keepdim))


def _max_pool2d(
    cx: Cx, x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, **kw: Any
) -> Value:
    stride = kernel_size if stride in (None, ()) else stride
    return cx.op(
        "rq.max_pool2d",
        cx.value(x),
        kernel=_pair(kernel_size),
        stride=_pair(stride),
        padding=_pair(padding),
    )


def _adaptive_avg_pool2d(cx: Cx, x: Any, output_size: Any) -> Value:
    pair = (
        tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    )
    return cx.op("rq.adaptive_avg_pool2d", cx.value(x), output_size=tuple(int(p) for p in pair))


def _embedding(cx: Cx, ids: Any, table: Any, *args: Any, **kw: Any) -> Value:
    return cx.op("rq.embedding", cx.value(ids), cx.value(table))


def _cat(cx: Cx, xs: Any, dim: int = 0) -> Value:
    return cx.op("rq.concat", *(cx.value(x) for x in xs), axis=int(dim))


FUNCTIONS: dict[Any, Callable[..., Any]] = {
    operator.add: _add,
    torch.add: _add,
    operator.sub: _sub,
    torch.sub: _sub,
    operator.mul: _mul,
    torch.mul: _mul,
    operator.truediv: _div,
    torch.div: _div,
    operator.neg: lambda cx, x: cx.op("rq.mul_scalar", cx.value(x), value=-1.0),
    operator.getitem: _getitem,
    F.relu: _unary("rq.relu"),
    torch.relu: _unary("rq.relu"),
    F.gelu: _gelu,
    F.silu: _unary("rq.silu"),
    torch.tanh: _unary("rq.tanh"),
    torch.sigmoid: _unary("rq.sigmoid"),
    F.softmax: _softmax,
    torch.softmax: _softmax,
    F.dropout: _identity,
    torch.flatten: _flatten,
    torch.reshape: _reshape,
    torch.permute: _permute,
    torch.transpose: _transpose,
    torch.split: _split,
    torch.matmul: _matmul,
    operator.matmul: _matmul,
    torch.bmm: _matmul,
    F.linear: _linear,
    F.layer_norm: _layer_norm,
    F.conv2d: _conv2d,
    torch.mean: _mean,
    F.max_pool2d: _max_pool2d,
    F.adaptive_avg_pool2d: _adaptive_avg_pool2d,
    F.embedding: _embedding,
    torch.cat: _cat,
}

METHODS: dict[str, Callable[..., Any]] = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "div": _div,
    "relu": _unary("rq.relu"),
    "tanh": _unary("rq.tanh"),
    "sigmoid": _unary("rq.sigmoid"),
    "softmax": _softmax,
    "reshape": _reshape,
    "view": _reshape,
    "flatten": _flatten,
    "permute": _permute,
    "transpose": _transpose,
    "split": _split,
    "chunk": _chunk,
    "contiguous": _identity,
    "clone": _identity,
    "masked_fill": _masked_fill,
    "mean": _mean,
    "__getitem__": _getitem,
}


def _bn(cx: Cx, m: nn.BatchNorm2d, x: Any) -> Value:
    w = m.weight.detach() if m.weight is not None else torch.ones(m.num_features)  # affine=False
    b = m.bias.detach() if m.bias is not None else torch.zeros(m.num_features)
    scale = w / torch.sqrt(m.running_var + m.eps)  # type: ignore[operator]
    shift = b - m.running_mean * scale  # type: ignore[operator]
    y = cx.op("rq.mul", cx.value(x), cx.value(scale.reshape(-1, 1, 1)))
    return cx.op("rq.add", y, cx.value(shift.reshape(-1, 1, 1)))


MODULES: dict[type, Callable[..., Any]] = {
    nn.Linear: lambda cx, m, x: _linear(cx, x, m.weight, m.bias),
    nn.Conv2d: lambda cx, m, x: _conv2d(
        cx, x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups
    ),
    nn.ReLU: lambda cx, m, x: cx.op("rq.relu", cx.value(x)),
    nn.GELU: lambda cx, m, x: _gelu(cx, x, m.approximate),
    nn.SiLU: lambda cx, m, x: cx.op("rq.silu", cx.value(x)),
    nn.Tanh: lambda cx, m, x: cx.op("rq.tanh", cx.value(x)),
    nn.LayerNorm: lambda cx, m, x: _layer_norm(cx, x, m.normalized_shape, m.weight, m.bias, m.eps),
    nn.Embedding: lambda cx, m, ids: _embedding(cx, ids, m.weight),
    nn.Dropout: lambda cx, m, x: x,
    nn.Identity: lambda cx, m, x: x,
    nn.Flatten: lambda cx, m, x: _flatten(cx, x, m.start_dim, m.end_dim),
    nn.BatchNorm2d: _bn,
    nn.MaxPool2d: lambda cx, m, x: _max_pool2d(cx, x, m.kernel_size, m.stride, m.padding),
    nn.AdaptiveAvgPool2d: lambda cx, m, x: _adaptive_avg_pool2d(cx, x, m.output_size),
    nn.Softmax: lambda cx, m, x: _softmax(cx, x, m.dim),
}
