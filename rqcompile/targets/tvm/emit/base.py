"""The emitter's state (:class:`Emission`: block builder + kernel memo) and the helpers every
emitter shares (operand attributes, dims, TVM dtypes)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from rqcompile.ir.core import AttrValue, Op, attr_key
from rqcompile.ir.types import TensorType
from rqcompile.ir.uses import Uses
from rqcompile.targets.tvm.adapter import relax, te, tirx

__all__ = ["TVM_DTYPES", "Emission"]


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

    def __init__(self, bb: relax.BlockBuilder) -> None:
        self.bb = bb
        self._memo: dict[Hashable, tuple[Any, Any]] = {}
        self.uses: Uses | None = None  # of the function being emitted
        #: a symbolic build (``targets/tvm/symbolic.py``): a kernel builder that cannot
        #: take symbolic sizes falls back to the generic kernel
        self.symbolic = False
        #: what each fallback replaced, for the build's report
        self.fallbacks: list[str] = []

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

    def prim_func(self, key: Hashable, name: str, build: Callable[[], Any]) -> Any:
        """The ``GlobalVar`` of a hand-written PrimFunc (``build()``), added once per ``key``."""
        hit = self._memo.get(key)
        if hit is None:
            func = build().without_attr("global_symbol")  # add_func names it uniquely
            hit = self._memo[key] = (self.bb.add_func(func, name), None)
        return hit[0]

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
            out_type = relax.TensorType(list(out.shape), str(out.dtype))
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
    """The op's own attributes (not its annotations) as keyword arguments."""
    return dict(op.attrs_dict)


def _dims(t: TensorType) -> list[Any]:
    """The dims: ints, or in a symbolic build (``targets/tvm/symbolic.py``) TIR expressions
    in the declared dims where they vary (``_check`` rejected ``?`` dims before emission)."""
    return [d if not isinstance(d, int) else int(d) for d in t.shape]


def _norm_axes(op: Op) -> list[int]:
    """The trailing dims a norm covers: as many as its weight has."""
    return list(range(-op.operands[1].type.rank, 0))
