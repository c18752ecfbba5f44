"""rq IR → TVM relax ``IRModule``: one emitter per IR op, looked up in :data:`EMITTERS`.

Where it sits: ``build``, phase ``emit`` of ``targets/tvm/pipelines.py``. In: a verified
``rqcompile.ir.Module`` with static shapes. Out: a ``tvm.IRModule`` whose relax function
``main`` takes the IR's arguments followed by one parameter per weight, in the order of
:func:`const_params`.

* **Integer ops** are ``BlockBuilder.emit_te`` calls over the TE computes of :mod:`.kernels`,
  with the op's attributes as keywords. Their PrimFuncs carry ``op_pattern = kOpaque``, so
  relax fusion leaves them whole for ``schedules.schedule_module`` (which finds them by their
  ``rq.kernel`` block annotations).
* **Float and layout ops** are ``relax.op.*`` calls, legalized to TOPI by ``LegalizeOps``.
  ``im2col``, ``causal_mask`` and ``slice`` are TE computes written here.
* **Attention is fused** on CPU targets with vector code: :mod:`.attention_match` finds
  ``softmax(q·kᵀ·scale [mask]) · v`` (explicit or ``rq.sdpa``) with the q/k/v split, bias
  and head transposes around it, and :mod:`.kernels_attention` emits one kernel for the
  group; the group's other ops are not emitted.
* **The float op before an activation quantize is fused** where the quantize is the AVX2
  micro-kernel: :mod:`.prologue_match` finds ``[bias add →] gelu → quantize`` and
  ``layer_norm → quantize`` and :mod:`.kernels_x86_prologue` emits one kernel per chain
  (``options["prologue_quantize"]``; the op's output never reaches memory).
* **Weights are parameters, not constants.** Every ``rq.const`` becomes a parameter of
  ``main`` named after the constant; the runtime binds ``ir.constants`` to them, so the
  shared library holds code only and an artifact stores each weight once (safetensors).
* **One kernel per distinct signature.** Convert splits grouped convolutions into one matmul
  per group (64 for a depthwise layer), so the same kernel is requested many times.
  :meth:`Emission.emit_te` emits a TE compute once per (kind, operand types, attributes) and
  calls the same PrimFunc after that; ``rq.slice`` passes its start offset at run time for
  the same reason, and wide concats become a tree of 8-input kernels. Together these cut the
  tiny CNN's build from 43 s to about 10 s on 2 cores.

Numerics: integer results are bit-exact against ``targets/reference.py`` (the oracle); float
ops agree to ~1e-6 relative (TOPI float32 vs torch; summation order differs).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from rqcompile.errors import TargetError, UnsupportedOpError
from rqcompile.ir.core import AttrValue, Func, Module, Op, attr_key
from rqcompile.ir.types import TensorType
from rqcompile.ir.uses import Uses
from rqcompile.names import identifier  # C-safe names for every target
from rqcompile.quant.primitives import QFormat, code_range
from rqcompile.targets.tvm import kernels as K
from rqcompile.targets.tvm.adapter import relax, te, tirx, topi
from rqcompile.targets.tvm.attention_match import AttentionGroup, find_attention
from rqcompile.targets.tvm.kernels_attention import attention_supported, te_attention
from rqcompile.targets.tvm.kernels_x86_prologue import te_prologue_quantize
from rqcompile.targets.tvm.prologue_match import PrologueChain, find_prologues

__all__ = [
    "EMITTERS",
    "TVM_DTYPES",
    "Emission",
    "const_params",
    "emit_module",
    "te_causal_mask",
    "te_im2col",
    "te_slice",
]

Expr = Any  # relax.Expr; TVM ships no type stubs
Attrs = Mapping[str, AttrValue]

#: IR element type -> TVM dtype of the stored tensor (i2/i4 live unpacked in int8, as in torch).
TVM_DTYPES: Mapping[str, str] = {
    "i1": "bool",
    "i2": "int8",
    "i4": "int8",
    "i8": "int8",
    "ui8": "uint8",
    "i32": "int32",
    "ui32": "uint32",
    "i64": "int64",
    "f32": "float32",
}

#: relax's ``OpPatternKind.kOpaque``: FuseOps never fuses a PrimFunc that carries it.
_OPAQUE = {"op_pattern": 8}


# -- TE computes for the ops relax has no equivalent of -----------------------------------


def te_im2col(
    x: Any,
    *,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Any:
    """Channels-last patches ``x[N, H, W, C] -> [N, Ho, Wo, kh*kw*C]`` in ``(kh, kw, C)`` order.

    Zero padding (``0`` of ``x``'s dtype, so int8 codes and float32 both work); the padded
    taps are selected with ``if_then_else`` so no out-of-bounds element is ever read.
    """
    n, h, w, c = (int(d) for d in x.shape)
    (kh, kw), (sh, sw) = kernel, stride
    (ph, pw), (dh, dw) = padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    zero = tirx.const(0, x.dtype)

    def patch(b: Any, i: Any, j: Any, idx: Any) -> Any:
        tap, ch = idx // c, idx % c
        r = i * sh + (tap // kw) * dh - ph
        s = j * sw + (tap % kw) * dw - pw
        inside = tirx.all(r >= 0, r < h, s >= 0, s < w)
        return tirx.if_then_else(inside, x[b, r, s, ch], zero)

    return te.compute((n, ho, wo, kh * kw * c), patch, name="im2col")


def te_causal_mask(x: Any, *, fill: float, offset: int | None = None) -> Any:
    """``x[..., T, S]`` with ``fill`` where ``j > i + offset`` (default ``offset = S - T``).

    ``offset = S - T`` is ``rq.causal_mask`` (aligned to the bottom right, like
    ``tril(S - T)``); ``offset = 0`` is torch SDPA's ``is_causal`` (top left).
    """
    *_, t, s = (int(d) for d in x.shape)
    off = s - t if offset is None else offset
    value = tirx.const(fill, x.dtype)

    def masked(*idx: Any) -> Any:
        i, j = idx[-2:]
        return tirx.Select(j > i + off, value, x(*idx))

    return te.compute(x.shape, masked, name="causal_mask")


def te_slice(x: Any, start: Any, *, axis: int, size: int, step: int) -> Any:
    """``x[..., start : start + size*step : step, ...]`` along ``axis``; ``start`` may be a var."""
    shape = [int(d) for d in x.shape]
    shape[axis] = size

    def at(*i: Any) -> Any:
        return x[(*i[:axis], start + i[axis] * step, *i[axis + 1 :])]

    return te.compute(shape, at, name="slice")


# -- emission context -----------------------------------------------------------------------


def _flat(xs: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for x in xs:
        out.extend(_flat(x) if isinstance(x, (list, tuple)) else [x])
    return out


def _out_types(t: Any) -> Any:
    return list(t.fields) if hasattr(t, "fields") else t


class Emission:
    """The state of one :func:`emit_module` call: the block builder and its kernel memo.

    The memo maps a key (op kind, operand types, attributes) to the ``GlobalVar`` and output
    types of the PrimFunc emitted for it, and lives only as long as this object.
    """

    def __init__(
        self, bb: relax.BlockBuilder, options: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        self.bb = bb
        self.options = dict(options or {})  # kernel name -> extra TE keywords (target ISA)
        self._memo: dict[Hashable, tuple[Any, Any]] = {}
        self.uses: Uses | None = None  # of the function being emitted

    def emit(self, expr: Expr) -> Expr:
        return self.bb.emit(expr)

    def emit_te(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        key: Hashable,
        name: str,
        opaque: bool = False,
        attrs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Expr:
        """``bb.emit_te(fn, *args, **kwargs)``, reusing the PrimFunc of an earlier equal ``key``.

        ``key`` must determine the PrimFunc: it has to cover the operand types and every
        keyword that shapes the compute. ``opaque`` keeps fusion off the PrimFunc; ``attrs``
        are more PrimFunc attributes.
        """
        hit = self._memo.get(key)
        flat = _flat(args)
        if hit is not None:
            return self.bb.emit(relax.call_tir(hit[0], flat, hit[1]))
        fattrs = {**(_OPAQUE if opaque else {}), **(attrs or {})}
        extra: dict[str, Any] = {"primfunc_attrs": fattrs} if fattrs else {}
        var = self.bb.emit_te(fn, *args, **kwargs, primfunc_name_hint=name, **extra)
        call = self.bb.lookup_binding(var)
        called = list(call.args[1])
        # memoize only when emit_te passed exactly our tensors, in order (always, today)
        if len(called) == len(flat) and all(
            a.same_as(b) for a, b in zip(called, flat, strict=True)
        ):
            self._memo[key] = (call.args[0], _out_types(call.ty_args[0]))
        return var

    def emit_shared(
        self,
        fn: Callable[..., Any],
        args: Sequence[Expr],
        types: Sequence[TensorType],
        scalars: Sequence[int],
        *,
        name: str,
        **attrs: Any,
    ) -> Expr:
        """``fn(*args, *scalars, **attrs)`` with the int scalars as run-time PrimFunc parameters.

        Calls that differ only in those scalars share one PrimFunc, where ``emit_te`` would
        bake each value into a kernel of its own.
        """
        key = (name, tuple(types), len(scalars), tuple(sorted(attrs.items())))
        hit = self._memo.get(key)
        if hit is None:
            phs = [
                te.placeholder(_dims(t), TVM_DTYPES[t.dtype], name=f"x{i}")
                for i, t in enumerate(types)
            ]
            svars = [tirx.Var(f"s{i}", "int64") for i in range(len(scalars))]
            out = fn(*phs, *svars, **attrs)
            func = te.create_prim_func([*phs, *svars, out]).without_attr("global_symbol")
            out_type = relax.TensorType([int(d) for d in out.shape], str(out.dtype))
            hit = self._memo[key] = (self.bb.add_func(func, name), out_type)
        prims = [relax.prim_value(tirx.IntImm("int64", int(v))) for v in scalars]
        return self.bb.emit(relax.call_tir(hit[0], [*args, *prims], hit[1]))


def _op_key(op: Op) -> Hashable:
    return (
        op.name,
        tuple(v.type for v in op.operands),
        tuple((k, attr_key(v)) for k, v in op.attrs),
    )


Emitter = Callable[[Emission, Op, tuple[Expr, ...]], Expr]


# -- emitters -------------------------------------------------------------------------------


def _te_op(fn: Callable[..., Any], name: str) -> Emitter:
    """An integer op: ``emit_te(fn, *operands, **attrs)``, kept opaque to fusion."""

    def emit(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
        opts = cx.options.get(name, {})
        key = (_op_key(op), tuple(sorted(opts.items())))
        return cx.emit_te(fn, xs, key=key, name=name, opaque=True, **_kw(op), **opts)

    return emit


def _x_range(cx: Emission, op: Op) -> tuple[int, int] | None:
    """The code range of ``op``'s activation operand where an ``rq.quantize`` defines it."""
    src = cx.uses.op_of(op.operands[0]) if cx.uses is not None else None
    if src is None or src.name != "rq.quantize" or str(src.attr("pack")) != "none":
        return None
    bits = float(src.attr("bits"))  # type: ignore[arg-type]
    fmt = QFormat(bits=bits, symmetric=bool(src.attr("symmetric")))
    return code_range(fmt) if bits < 8 else None


def _packed(
    te_fn: Any, pack_fn: Any, packed_fn: Any, packs: Any, kind: str, *,
    pass_isa: bool = False, pass_x_range: bool = False,
) -> Emitter:  # fmt: skip
    """An integer matmul whose weights the target kernel wants packed: emit the pack (its
    own PrimFunc, on the weight-side operands after ``xq, xs, xc``) then the kernel on all
    the parts it returns, where ``packs`` allows it for these shapes and the target's kernel
    options; else the one fused TE kernel ``te_fn``.

    The pack depends on weights only, so ``LiftTransformParams`` (pipelines.py) moves it
    into ``main_transform_params``, which the runtime calls once when binding weights.
    ``pass_isa``: pack and kernel also take the target's ``isa`` (their layout depends on it).
    ``pass_x_range``: they also take the activation codes' range, where an ``rq.quantize``
    with fewer than 8 bits defines them (``kernels.narrow_x_offset``).
    """
    fused = _te_op(te_fn, kind)

    def emit(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
        opts = dict(cx.options.get(kind, {}))
        isa = opts.get("isa", "generic")
        shapes = _dims(op.operands[0].type), _dims(op.operands[3].type)[0]
        if not packs(*shapes, isa=isa, **_kw(op)):
            return fused(cx, op, xs)
        kw = {**_kw(op), **({"isa": isa} if pass_isa else {})}
        xr = _x_range(cx, op) if pass_x_range else None
        if xr is not None:
            kw["x_range"] = xr
        wkey = ("pack", kind, tuple(v.type for v in op.operands[3:]), tuple(sorted(kw.items())))
        packed = cx.emit_te(pack_fn, list(xs[3:]), key=wkey, name=f"pack_{kind}", opaque=True,
                            **kw)  # fmt: skip
        parts = [cx.emit(relax.TupleGetItem(packed, i))
                 for i in range(len(packed.ty.fields))]  # fmt: skip
        return cx.emit_te(packed_fn, [*xs[:3], *parts], key=("packed", _op_key(op), xr),
                          name=kind, opaque=True, **kw)  # fmt: skip

    return emit


def _f32(value: float) -> Expr:
    return relax.const(value, "float32")


def _unary(fn: Callable[[Expr], Expr]) -> Emitter:
    return lambda cx, op, xs: cx.emit(fn(xs[0]))


def _binary(fn: Callable[[Expr, Expr], Expr]) -> Emitter:
    return lambda cx, op, xs: cx.emit(fn(xs[0], xs[1]))


def _scalar(fn: Callable[[Expr, Expr], Expr]) -> Emitter:
    return lambda cx, op, xs: cx.emit(fn(xs[0], _f32(_float(op, "value"))))


def _float(op: Op, name: str) -> float:
    return float(op.attr(name))  # type: ignore[arg-type]


def _int(op: Op, name: str) -> int:
    return int(op.attr(name))  # type: ignore[arg-type]


def _kw(op: Op) -> dict[str, Any]:
    """The op's attributes as keyword arguments."""
    return dict(op.attrs_dict)


def _dims(t: TensorType) -> list[int]:
    """Static dims (``_check`` rejected dynamic ones before emission)."""
    return [int(d) for d in t.shape]  # type: ignore[arg-type]


def _norm_axes(op: Op) -> list[int]:
    """The trailing dims a norm covers: as many as its weight has."""
    return list(range(-op.operands[1].type.rank, 0))


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


#: IR op name -> emitter. ``rq.const`` is not here: constants become parameters of ``main``.
EMITTERS: dict[str, Emitter] = {
    # integer core (kernels.py; scheduled by schedules.py)
    "rq.quantize": _te_op(K.te_quantize, "quantize"),
    "rq.int_matmul": _packed(K.te_int_matmul, K.te_pack_int_matmul_weights,
                             K.te_int_matmul_packed, K.int_matmul_packs, "int_matmul",
                             pass_isa=True, pass_x_range=True),
    "rq.xnor_popcount_matmul": _packed(K.te_xnor_popcount_matmul, K.te_pack_xnor_weights,
                                       K.te_xnor_popcount_matmul_packed, K.xnor_packs,
                                       "xnor_popcount_matmul", pass_isa=True),
    "rq.sparse24_matmul": _packed(K.te_sparse24_matmul, K.te_pack_sparse24_weights,
                                  K.te_sparse24_matmul_packed, K.sparse24_packs,
                                  "sparse24_matmul"),
    "rq.qbmm": _te_op(K.te_qbmm, "qbmm"),
    "rq.repeat_blocks": _repeat_blocks,
    # float ops
    "rq.linear": _binary(relax.op.linear),
    "rq.add": _binary(relax.op.add),
    "rq.sub": _binary(relax.op.subtract),
    "rq.mul": _binary(relax.op.multiply),
    "rq.div": _binary(relax.op.divide),
    "rq.add_scalar": _scalar(relax.op.add),
    "rq.mul_scalar": _scalar(relax.op.multiply),
    "rq.matmul": _binary(relax.op.matmul),
    "rq.layer_norm": _layer_norm,
    "rq.rms_norm": _rms_norm,
    "rq.softmax": _softmax,
    "rq.gelu": _gelu,
    "rq.relu": _unary(relax.op.nn.relu),
    "rq.silu": _unary(relax.op.nn.silu),
    "rq.tanh": _unary(relax.op.tanh),
    "rq.sigmoid": _unary(relax.op.sigmoid),
    "rq.embedding": _embedding,
    "rq.reshape": _reshape,
    "rq.permute": _permute,
    "rq.slice": _slice,
    "rq.concat": _concat,
    "rq.causal_mask": _causal_mask,
    "rq.masked_fill": _masked_fill,
    "rq.sdpa": _sdpa,
    "rq.conv2d": _conv2d,
    "rq.im2col": _im2col,
    "rq.max_pool2d": _spatial(_max_pool),
    "rq.adaptive_avg_pool2d": _spatial(_avg_pool),
    "rq.mean": _mean,
    "rq.cast": _cast,
    "rq.rsqrt": _unary(relax.op.rsqrt),
    "rq.pow_scalar": _pow_scalar,
    "rq.broadcast_to": _broadcast_to,
}


# -- fused attention ------------------------------------------------------------------------

#: PrimFunc attributes of the fused attention: a kernel of its own (``rq.kernel``) that is
#: already scheduled, so neither schedule phase touches it.
_ATTENTION_ATTRS = {"rq.kernel": "attention", "rq.scheduled": True}


def _attention_groups(ir: Module, f: Func, opts: Mapping[str, Any] | None) -> list[AttentionGroup]:
    """The attention groups to fuse: none unless the target asked (``options["attention"]``
    with its vector ``lanes``), and only those the kernel takes."""
    if not opts:
        return []
    lanes = int(opts["lanes"])
    return [g for g in find_attention(f, ir.constants) if attention_supported(g, lanes)]


def _emit_attention(cx: Emission, g: AttentionGroup, env: Mapping[int, Expr]) -> Expr:
    lanes = int(cx.options["attention"]["lanes"])
    args = [env[v.id] for v in g.inputs]
    # the group goes in a partial: emit_te only passes TVM-convertible keywords
    fn = functools.partial(te_attention, group=g, lanes=lanes)
    return cx.emit_te(fn, args, key=("attention", g.key, lanes), name="attention",
                      opaque=True, attrs=_ATTENTION_ATTRS)  # fmt: skip


# -- fused quantize prologues ---------------------------------------------------------------

#: PrimFunc attributes of a fused prologue quantize: already scheduled (its own parallel
#: row loop), so neither schedule phase touches it.
_PROLOGUE_ATTRS = {"rq.kernel": "prologue_quantize", "rq.scheduled": True}


def _prologue_chains(
    f: Func, options: Mapping[str, Mapping[str, Any]], taken: set[int]
) -> list[PrologueChain]:
    """The chains to fuse: none unless the target asked (``options["prologue_quantize"]``
    with the ``ops`` to fuse) and its quantize is the AVX2 micro-kernel; none that share an
    op with ``taken`` (the fused attention groups)."""
    opts = options.get("prologue_quantize")
    if not opts or options.get("quantize", {}).get("isa") != "avx2":
        return []
    ops = set(opts.get("ops", ()))
    return [c for c in find_prologues(f) if c.prologue in ops and not c.ops & taken]


def _prologue_te(x: Any, residual: list[Any], params: list[Any], **kw: Any) -> Any:
    return te_prologue_quantize(x, params, residual=residual, **kw)


def _emit_prologue(cx: Emission, c: PrologueChain, env: dict[int, Expr]) -> None:
    """Emit the fused kernel of chain ``c``; bind the quantize's three results (and the
    residual sum ``c.h``, for its other users)."""
    x = c.inputs[0]
    k = _dims(x.type)[-1]
    rows = math.prod(_dims(x.type)) // k

    def as_rows(v: Any) -> Expr:  # full-size inputs as [rows, K]: a view, no copy
        e = env[v.id]
        return e if _dims(v.type) == [rows, k] else cx.emit(relax.op.reshape(e, [rows, k]))

    full = [x, *c.inputs[1 : 1 + c.residual]]
    residual = [as_rows(v) if _dims(v.type) != [k] else env[v.id] for v in full[1:]]
    params = [env[p.id] for p in c.inputs[1 + c.residual :]]
    a = c.quantize.attrs_dict
    fn = functools.partial(
        _prologue_te, prologue=c.prologue, bits=a["bits"], block=int(a["block"]),
        estimator=str(a["estimator"]), ridge_lambda=float(a["ridge_lambda"]),
        pack=str(a["pack"]), eps=c.eps, h_out=c.h is not None,
    )  # fmt: skip
    out = cx.emit_te(fn, [as_rows(x), residual, params], key=("prologue_quantize", c.key),
                     name="prologue_quantize", opaque=True, attrs=_PROLOGUE_ATTRS)  # fmt: skip
    results = [*c.quantize.results, *([c.h] if c.h is not None else [])]
    for i, r in enumerate(results):
        part = cx.emit(relax.TupleGetItem(out, i))
        built = [rows, k] if i == 3 else [rows, *_dims(r.type)[-1:]]  # the kernel's shape
        if _dims(r.type) != built:
            part = cx.emit(relax.op.reshape(part, _dims(r.type)))
        env[r.id] = part


# -- module ---------------------------------------------------------------------------------


def _relax_type(t: TensorType) -> Any:
    return relax.TensorType(_dims(t), TVM_DTYPES[t.dtype])


def const_params(ir: Module, func: str = "main") -> tuple[str, ...]:
    """Names of the constants ``func`` reads, in first-use order: its trailing parameters.

    Example:
        >>> import torch
        >>> from rqcompile.ir import Builder, TensorType
        >>> b = Builder()
        >>> x = b.arg(TensorType((2,), "f32"))
        >>> b.ret(b.op("rq.add", x, b.const("bias", torch.zeros(2))))
        >>> const_params(b.module())
        ('bias',)
    """
    names = (str(op.attr("name")) for op in ir.func(func).ops if op.name == "rq.const")
    return tuple(dict.fromkeys(names))


def _check(f: Func) -> None:
    """Collect every problem (unsupported ops, dynamic dims), then raise once."""
    missing = sorted({op.name for op in f.ops if op.name not in EMITTERS and op.name != "rq.const"})
    if missing:
        raise UnsupportedOpError(
            f"the TVM emitter has no rule for: {', '.join(missing)}. Build with "
            "target='reference', or add an emitter to rqcompile.targets.tvm.emit.EMITTERS."
        )
    values = [*f.args, *(r for op in f.ops for r in op.results)]
    dynamic = [v for v in values if any(d is None for d in v.type.shape)]
    if dynamic:
        raise TargetError(
            f"TVM targets need static shapes; {len(dynamic)} value(s) have dynamic dims, e.g. "
            f"{dynamic[0].type}. Convert for concrete shapes: "
            "rq.lower(qat, target, example_inputs=(x,))."
        )


def emit_module(
    ir: Module, func: str = "main", *, options: Mapping[str, Mapping[str, Any]] | None = None
) -> Any:
    """Translate ``ir``'s function ``func`` into a relax ``IRModule`` with function ``main``.

    ``main(*ir_args, *weights)``: the IR's arguments (named ``input0``, ...), then one
    parameter per name of :func:`const_params`. Returns a single tensor or a tuple, as the IR
    function does. ``options`` maps a kernel name (``"int_matmul"``) to extra keywords for its
    TE builder: the target's instruction set, from ``schedules.kernel_options``; with
    ``options["attention"] = {"lanes": n}`` attention is fused (:mod:`.attention_match`),
    with ``options["prologue_quantize"] = {"ops": ("gelu", "layer_norm")}`` the float op
    before an AVX2 quantize (:mod:`.prologue_match`).

    Raises:
        UnsupportedOpError: ops with no emitter (all listed at once).
        TargetError: dynamic shapes.
    """
    f = ir.func(func)
    _check(f)
    inputs = [relax.Var(f"input{i}", _relax_type(v.type)) for i, v in enumerate(f.args)]
    weights: dict[str, Any] = {}
    for op in f.ops:
        if op.name == "rq.const":
            name = str(op.attr("name"))
            weights.setdefault(name, relax.Var(identifier(name), _relax_type(op.result.type)))
    cx = Emission(relax.BlockBuilder(), options)
    env: dict[int, Expr] = {v.id: x for v, x in zip(f.args, inputs, strict=True)}
    groups = _attention_groups(ir, f, cx.options.get("attention"))
    fused = {i for g in groups for i in g.ops}
    anchors = {g.anchor: g for g in groups}
    chains = _prologue_chains(f, cx.options, fused)
    fused |= {i for c in chains for i in c.ops}
    chain_at = {c.anchor: c for c in chains}
    # num_input: the rest are weights, whose weight-only work LiftTransformParams may hoist
    with cx.bb.function("main", [*inputs, *weights.values()], attrs={"num_input": len(inputs)}):
        with cx.bb.dataflow():
            cx.uses = Uses(f)
            for i, op in enumerate(f.ops):
                if op.name == "rq.const":
                    env[op.result.id] = weights[str(op.attr("name"))]
                    continue
                if i in anchors:
                    env[anchors[i].result.id] = _emit_attention(cx, anchors[i], env)
                    continue
                if i in chain_at:
                    _emit_prologue(cx, chain_at[i], env)
                    continue
                if i in fused:
                    continue
                out = EMITTERS[op.name](cx, op, tuple(env[v.id] for v in op.operands))
                if len(op.results) == 1:
                    env[op.result.id] = out
                else:
                    for i, r in enumerate(op.results):
                        env[r.id] = cx.emit(relax.TupleGetItem(out, i))
            outs = [env[v.id] for v in f.outputs]
            ret = cx.bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        cx.bb.emit_func_output(ret)
    return cx.bb.finalize()
