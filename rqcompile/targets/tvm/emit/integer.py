"""Emitters of the integer ops: build what the op's kernel-table row names (``rq.kernel``),
on packed weights where ``pack-weights`` chose a layout (``rq.weight_layout``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rqcompile.ir.core import Op
from rqcompile.passes.ir.kernel_table import KernelRow, find_row
from rqcompile.targets.tvm.adapter import relax
from rqcompile.targets.tvm.emit.base import Emission, Emitter, Expr, _kw, _op_key
from rqcompile.targets.tvm.kernels.table import KIND

__all__ = []


def _row(op: Op) -> KernelRow | None:
    """The kernel-table row ``select-kernels`` chose for ``op`` (``rq.kernel``), if any."""
    name = op.attr("rq.kernel", None)
    return None if name is None else find_row(KIND, str(name))


def _te_op(fn: Callable[..., Any], name: str) -> Emitter:
    """An integer op: ``emit_te(builder, *operands, **attrs, **row options)``, opaque to
    fusion. The builder and its options come from the op's kernel row (``rq.kernel``);
    without one, ``fn`` with its defaults (the generic TE compute)."""

    def emit(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
        row = _row(op)
        build = fn if row is None or row.builder is None else row.builder
        opts = dict(row.options) if row is not None else {}
        key = (_op_key(op), tuple(sorted(opts.items())))
        if cx.symbolic and opts:  # the row's kernel, if it takes symbolic sizes
            try:
                return cx.emit_te(build, xs, key=key, name=name, opaque=True, **_kw(op), **opts)
            except Exception as e:  # any builder error: the generic kernel
                cx.fallbacks.append(f"{op.attr('rq.kernel', name)} -> generic ({_why(e)})")
            key = (_op_key(op), ())
            return cx.emit_te(fn, xs, key=key, name=name, opaque=True, **_kw(op))
        return cx.emit_te(build, xs, key=key, name=name, opaque=True, **_kw(op), **opts)

    return emit


def _packed(te_fn: Any, kind: str, n_x: int = 3) -> Emitter:
    """An integer matmul: where ``pack-weights`` chose a packed layout
    (``rq.weight_layout``), emit the row's pack (its own PrimFunc, on the weight-side
    operands after the ``n_x`` activation-side ones: ``xq, xs, xc``, or ``x`` of
    ``rq.wo_matmul``) then the row's kernel on all the parts it returns; else the one fused
    TE kernel of the row.

    The pack depends on weights only, so ``LiftTransformParams`` (pipelines.py) moves it
    into ``main_transform_params``, which the runtime calls once when binding weights.
    ``rq.x_range`` (the activation codes' range, recorded by ``pack-weights`` where the
    layout depends on it) goes to both builders.
    """
    fused = _te_op(te_fn, kind)

    def emit(cx: Emission, op: Op, xs: tuple[Expr, ...]) -> Expr:
        row = _row(op)
        layout = op.attr("rq.weight_layout", None)
        if row is None or row.pack is None or layout != row.pack.layout:
            return fused(cx, op, xs)
        if cx.symbolic:  # the packed kernel, if it takes symbolic sizes; else the generic one
            try:
                return packed_kernel(cx, op, xs, row, layout)
            except Exception as e:
                cx.fallbacks.append(f"{op.attr('rq.kernel', kind)} -> generic ({_why(e)})")
                return cx.emit_te(te_fn, xs, key=(_op_key(op), ()), name=kind, opaque=True,
                                  **_kw(op))  # fmt: skip
        return packed_kernel(cx, op, xs, row, layout)

    def packed_kernel(cx: Emission, op: Op, xs: tuple[Expr, ...], row: Any, layout: Any) -> Expr:
        kw = {**_kw(op), **row.pack.options}
        xr = op.attr("rq.x_range", None)
        if xr is not None:
            kw["x_range"] = tuple(int(v) for v in xr)  # type: ignore[union-attr]
        wkey = ("pack", kind, tuple(v.type for v in op.operands[n_x:]),
                tuple(sorted(kw.items())))  # fmt: skip
        packed = cx.emit_te(row.pack.pack, list(xs[n_x:]), key=wkey, name=f"pack_{kind}",
                            opaque=True, **kw)  # fmt: skip
        parts = [cx.emit(relax.TupleGetItem(packed, i))
                 for i in range(len(packed.ty.fields))]  # fmt: skip
        return cx.emit_te(row.pack.kernel, [*xs[:n_x], *parts], key=("packed", _op_key(op), xr),
                          name=kind, opaque=True, **kw)  # fmt: skip

    return emit


def _why(e: BaseException) -> str:
    """One line of a builder's error, for the symbolic build's fallback report."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1][:120] if text else ''}"
