"""Float and layout ops of the catalogue (the float code around the integer core).

Semantics follow the torch function of the same name unless stated. Arithmetic ops take
``f32``; layout ops (reshape, permute, slice, concat, im2col, cast) take any element type.
Negative axes count from the end, as in torch. Importing this module registers the ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rqcompile.ir.ops import (
    AttrSpec,
    Dims,
    broadcast_shapes,
    defop,
    expect_type,
    fail,
    norm_axis,
    unify_dims,
)
from rqcompile.ir.types import DTYPES, Dim, TensorType

__all__: list[str] = []  # registers ops; nothing to import from here

Attrs = Mapping[str, Any]  # already checked against the op's schema
Types = tuple[TensorType, ...]

_F32 = ("f32",)
_PAIR = AttrSpec(tuple, elem=int, length=2)


def _unary(ts: Types, attrs: Attrs) -> Types:
    """Elementwise; the result has the operand's type."""
    expect_type(ts[0], "x", dtypes=_F32)
    return (ts[0],)


for _name, _attrs, _summary in (
    ("rq.relu", {}, "max(x, 0)"),
    ("rq.silu", {}, "x * sigmoid(x)"),
    ("rq.tanh", {}, "tanh(x)"),
    ("rq.sigmoid", {}, "1 / (1 + exp(-x))"),
    (
        "rq.gelu",
        {"approximate": AttrSpec(str, default="none", choices=("none", "tanh"))},
        "GELU, exact (erf) or tanh approximation",
    ),
    ("rq.add_scalar", {"value": AttrSpec(float)}, "x + value"),
    ("rq.mul_scalar", {"value": AttrSpec(float)}, "x * value"),
):
    defop(_name, ("x",), attrs=_attrs, summary=_summary)(_unary)


@defop("rq.causal_mask", ("x",), attrs={"fill": AttrSpec(float, default=float("-inf"))})
def _causal_mask(ts: Types, attrs: Attrs) -> Types:
    """x[..., T, S] with x[..., i, j] = fill where j > i + (S - T)."""
    expect_type(ts[0], "x", dtypes=_F32, min_rank=2)
    return (ts[0],)


def _binary(ts: Types, attrs: Attrs) -> Types:
    """Elementwise with numpy broadcasting."""
    a, b = ts
    expect_type(a, "lhs", dtypes=_F32)
    expect_type(b, "rhs", dtypes=_F32)
    return (TensorType(broadcast_shapes(a.shape, b.shape), "f32"),)


for _name in ("rq.add", "rq.sub", "rq.mul", "rq.div"):
    defop(_name, ("lhs", "rhs"), summary=f"elementwise {_name[3:]} with numpy broadcasting")(
        _binary
    )


@defop("rq.linear", ("x", "w"))
def _linear(ts: Types, attrs: Attrs) -> Types:
    """x[..., K] @ w[N, K]ᵀ -> [..., N] (no bias; add it with rq.add)."""
    x, w = ts
    expect_type(x, "x", dtypes=_F32, min_rank=1)
    env = Dims()
    env.match(w, "w", ("N", "K"), "f32")
    env.bind("K", x.shape[-1], f"x {x}")
    return (TensorType((*x.shape[:-1], env["N"]), "f32"),)


@defop("rq.matmul", ("lhs", "rhs"))
def _matmul(ts: Types, attrs: Attrs) -> Types:
    """torch.matmul: 1-D operands are promoted and squeezed, batch dims broadcast."""
    a, b = ts
    expect_type(a, "lhs", dtypes=_F32, min_rank=1)
    expect_type(b, "rhs", dtypes=_F32, min_rank=1)
    a_shape = (1, *a.shape) if a.rank == 1 else a.shape
    b_shape = (*b.shape, 1) if b.rank == 1 else b.shape
    unify_dims(a_shape[-1], b_shape[-2], f"contraction dim of {a} @ {b}")
    batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
    out = (*batch, *(a_shape[-2:-1] if a.rank > 1 else ()), *(b_shape[-1:] if b.rank > 1 else ()))
    return (TensorType(out, "f32"),)


def _norm(x: TensorType, params: Types, names: tuple[str, ...]) -> Types:
    expect_type(x, "x", dtypes=_F32, min_rank=1)
    w = params[0]
    expect_type(w, names[0], dtypes=_F32, min_rank=1)
    if w.rank > x.rank:
        fail(f"{names[0]} {w} has more dims than x {x}")
    for t, name in zip(params, names, strict=True):
        expect_type(t, name, dtypes=_F32, rank=w.rank)
        for i in range(1, w.rank + 1):
            unify_dims(x.shape[-i], t.shape[-i], f"normalized dim -{i} of x {x} vs {name} {t}")
    return (x,)


@defop("rq.layer_norm", ("x", "weight", "bias"), attrs={"eps": AttrSpec(float, default=1e-5)})
def _layer_norm(ts: Types, attrs: Attrs) -> Types:
    """Layer norm over the trailing dims covered by weight/bias."""
    return _norm(ts[0], ts[1:], ("weight", "bias"))


@defop("rq.rms_norm", ("x", "weight"), attrs={"eps": AttrSpec(float)})
def _rms_norm(ts: Types, attrs: Attrs) -> Types:
    """RMS norm over the trailing dims covered by weight."""
    return _norm(ts[0], ts[1:], ("weight",))


@defop("rq.softmax", ("x",), attrs={"axis": AttrSpec(int)})
def _softmax(ts: Types, attrs: Attrs) -> Types:
    """Softmax along ``axis``."""
    expect_type(ts[0], "x", dtypes=_F32, min_rank=1)
    norm_axis(attrs["axis"], ts[0].rank)
    return (ts[0],)


@defop("rq.embedding", ("ids", "table"))
def _embedding(ts: Types, attrs: Attrs) -> Types:
    """Row lookup: ids[...] (i64 or i32) into table[V, D] -> [..., D]."""
    ids, table = ts
    expect_type(ids, "ids", dtypes=("i64", "i32"))
    expect_type(table, "table", dtypes=_F32, rank=2)
    return (TensorType((*ids.shape, table.shape[1]), "f32"),)


def _numel(shape: tuple[Dim, ...]) -> int | None:
    if 0 in shape:
        return 0
    n = 1
    for d in shape:
        if d is None:
            return None
        n *= d
    return n


@defop("rq.reshape", ("x",), attrs={"shape": AttrSpec(tuple, elem=int)})
def _reshape(ts: Types, attrs: Attrs) -> Types:
    """Reshape; one -1 entry is inferred (dynamic if x has dynamic dims); 0 means size 0."""
    (x,) = ts
    shape: tuple[int, ...] = attrs["shape"]
    if any(d < -1 for d in shape) or shape.count(-1) > 1:
        fail(f"shape={shape}: entries must be >= 0, with at most one -1")
    known = 1
    for d in shape:
        known *= d if d != -1 else 1
    numel = _numel(x.shape)
    out: list[Dim] = list(shape)
    if -1 in shape:
        if numel is None:
            out[shape.index(-1)] = None
        elif known == 0 or numel % known:
            fail(f"cannot reshape {x} ({numel} elements) to {shape}")
        else:
            out[shape.index(-1)] = numel // known
    elif numel is not None and numel != known:
        fail(f"cannot reshape {x} ({numel} elements) to {shape} ({known} elements)")
    return (TensorType(tuple(out), x.dtype),)


@defop("rq.permute", ("x",), attrs={"dims": AttrSpec(tuple, elem=int)})
def _permute(ts: Types, attrs: Attrs) -> Types:
    """Permute dims: result dim i is x dim ``dims[i]``."""
    (x,) = ts
    dims: tuple[int, ...] = attrs["dims"]
    if len(dims) != x.rank:
        fail(f"dims={dims} has {len(dims)} entries for rank-{x.rank} x {x}")
    norm = [norm_axis(d, x.rank, "dims entry") for d in dims]
    if sorted(norm) != list(range(x.rank)):
        fail(f"dims={dims} is not a permutation of range({x.rank})")
    return (TensorType(tuple(x.shape[d] for d in norm), x.dtype),)


@defop(
    "rq.slice",
    ("x",),
    attrs={
        "axis": AttrSpec(int),
        "start": AttrSpec(int),
        "stop": AttrSpec(int),
        "step": AttrSpec(int, default=1),
    },
)
def _slice(ts: Types, attrs: Attrs) -> Types:
    """x[..., start:stop:step, ...] along ``axis`` with Python clamping; step >= 1."""
    (x,) = ts
    axis = norm_axis(attrs["axis"], x.rank)
    start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
    if step < 1:
        fail(f"step={step} must be >= 1")
    d = x.shape[axis]
    n = None if d is None else len(range(*slice(start, stop, step).indices(d)))
    return (x.with_shape((*x.shape[:axis], n, *x.shape[axis + 1 :])),)


@defop("rq.concat", ("inputs*",), attrs={"axis": AttrSpec(int)})
def _concat(ts: Types, attrs: Attrs) -> Types:
    """Concatenate one or more tensors of equal rank and dtype along ``axis``."""
    first = ts[0]
    expect_type(first, "inputs[0]", min_rank=1)
    axis = norm_axis(attrs["axis"], first.rank)
    shape: list[Dim] = list(first.shape)
    for i, t in enumerate(ts[1:], 1):
        expect_type(t, f"inputs[{i}]", dtypes=(first.dtype,), rank=first.rank)
        for j, d in enumerate(t.shape):
            if j == axis:
                cur = shape[j]
                shape[j] = None if cur is None or d is None else cur + d
            else:
                shape[j] = unify_dims(shape[j], d, f"dim {j} of inputs[{i}] {t}")
    return (TensorType(tuple(shape), first.dtype),)


@defop(
    "rq.sdpa",
    ("q", "k", "v"),
    attrs={"causal": AttrSpec(bool, default=False), "scale": AttrSpec(float)},
)
def _sdpa(ts: Types, attrs: Attrs) -> Types:
    """softmax(q @ kᵀ * scale [+ causal mask]) @ v; q[..., L, E], k[..., S, E], v[..., S, Ev]."""
    q, k, v = ts
    expect_type(q, "q", dtypes=_F32, min_rank=2)
    batch = tuple(f"B{i}" for i in range(q.rank - 2))
    env = Dims()
    env.match(q, "q", (*batch, "L", "E"), "f32")
    env.match(k, "k", (*batch, "S", "E"), "f32")
    env.match(v, "v", (*batch, "S", "Ev"), "f32")
    return (TensorType((*(env[b] for b in batch), env["L"], env["Ev"]), "f32"),)


def _window(d: Dim, k: Dim, s: int, p: int, dil: int, what: str) -> Dim:
    if d is None or k is None:
        return None
    out = (d + 2 * p - dil * (k - 1) - 1) // s + 1
    if out < 1:
        fail(f"{what}: output size {out} < 1 (input {d}, kernel {k}, padding {p}, dilation {dil})")
    return out


def _check_pairs(attrs: Attrs, **minimum: int) -> None:
    for name, lo in minimum.items():
        if any(v < lo for v in attrs[name]):
            fail(f"{name}={attrs[name]} must be >= {lo}")


_CONV_ATTRS = {
    "stride": AttrSpec(tuple, elem=int, length=2, default=(1, 1)),
    "padding": AttrSpec(tuple, elem=int, length=2, default=(0, 0)),
    "dilation": AttrSpec(tuple, elem=int, length=2, default=(1, 1)),
}


@defop("rq.conv2d", ("x", "w"), attrs={**_CONV_ATTRS, "groups": AttrSpec(int, default=1)})
def _conv2d(ts: Types, attrs: Attrs) -> Types:
    """NCHW convolution, x[N, C, H, W] * w[O, C/groups, kh, kw] (no bias)."""
    x, w = ts
    _check_pairs(attrs, stride=1, padding=0, dilation=1)
    groups: int = attrs["groups"]
    if groups < 1:
        fail(f"groups={groups} must be >= 1")
    env = Dims()
    env.match(x, "x", ("N", "C", "H", "W"), "f32")
    env.match(w, "w", ("O", "C/groups", "kh", "kw"), "f32")
    cg = env["C/groups"]
    env.bind("C", None if cg is None else cg * groups, f"w {w} with groups={groups}")
    if env["C"] is not None and env["C"] % groups:
        fail(f"channels {env['C']} not divisible by groups={groups}")
    if env["O"] is not None and env["O"] % groups:
        fail(f"output channels {env['O']} not divisible by groups={groups}")
    (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
    ho = _window(env["H"], env["kh"], sh, ph, dh, "height")
    wo = _window(env["W"], env["kw"], sw, pw, dw, "width")
    return (TensorType((env["N"], env["O"], ho, wo), "f32"),)


@defop("rq.im2col", ("x",), attrs={"kernel": _PAIR, **_CONV_ATTRS})
def _im2col(ts: Types, attrs: Attrs) -> Types:
    """Channels-last patches: x[N, H, W, C] -> [N, Ho, Wo, kh*kw*C] in (kh, kw, C) order."""
    (x,) = ts
    _check_pairs(attrs, kernel=1, stride=1, padding=0, dilation=1)
    env = Dims()
    env.match(x, "x", ("N", "H", "W", "C"))
    expect_type(x, "x", dtypes=("f32", "i8", "ui32"))  # ui32: sign bits, 32 channels a word
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    (ph, pw), (dh, dw) = attrs["padding"], attrs["dilation"]
    ho = _window(env["H"], kh, sh, ph, dh, "height")
    wo = _window(env["W"], kw, sw, pw, dw, "width")
    c = env["C"]
    return (TensorType((env["N"], ho, wo, None if c is None else kh * kw * c), x.dtype),)


def _spatial(x: TensorType) -> None:
    expect_type(x, "x", dtypes=_F32)
    if x.rank not in (3, 4):
        fail(f"x has type {x}, expected [N, C, H, W] or [C, H, W]")


@defop(
    "rq.max_pool2d",
    ("x",),
    attrs={"kernel": _PAIR, "stride": _PAIR, "padding": _CONV_ATTRS["padding"]},
)
def _max_pool2d(ts: Types, attrs: Attrs) -> Types:
    """Max pooling over the last two dims (NCHW), floor mode; padding <= kernel / 2."""
    (x,) = ts
    _spatial(x)
    _check_pairs(attrs, kernel=1, stride=1, padding=0)
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    if ph > kh // 2 or pw > kw // 2:
        fail(f"padding={attrs['padding']} must be at most half of kernel={attrs['kernel']}")
    ho = _window(x.shape[-2], kh, sh, ph, 1, "height")
    wo = _window(x.shape[-1], kw, sw, pw, 1, "width")
    return (x.with_shape((*x.shape[:-2], ho, wo)),)


@defop("rq.adaptive_avg_pool2d", ("x",), attrs={"output_size": _PAIR})
def _adaptive_avg_pool2d(ts: Types, attrs: Attrs) -> Types:
    """Adaptive average pooling of the last two dims to ``output_size``."""
    (x,) = ts
    _spatial(x)
    _check_pairs(attrs, output_size=1)
    return (x.with_shape((*x.shape[:-2], *attrs["output_size"])),)


@defop(
    "rq.mean",
    ("x",),
    attrs={"axes": AttrSpec(tuple, elem=int), "keepdim": AttrSpec(bool, default=False)},
)
def _mean(ts: Types, attrs: Attrs) -> Types:
    """Mean over ``axes`` (non-empty, distinct)."""
    (x,) = ts
    expect_type(x, "x", dtypes=_F32, min_rank=1)
    axes = [norm_axis(a, x.rank, "axes entry") for a in attrs["axes"]]
    if not axes or len(set(axes)) != len(axes):
        fail(f"axes={attrs['axes']} must be non-empty and distinct")
    if attrs["keepdim"]:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return (x.with_shape(shape),)


@defop("rq.cast", ("x",), attrs={"dtype": AttrSpec(str, choices=DTYPES)})
def _cast(ts: Types, attrs: Attrs) -> Types:
    """Element type conversion (torch ``.to`` semantics)."""
    return (ts[0].with_dtype(attrs["dtype"]),)
