"""The legalized relax ``main`` → a flat list of calls over numbered values.

Where it sits: ``device/build.py`` emits the rq IR with the CPU path's own emitter
(``tvm/emit/module.py``) and legalizes it with the CPU path's passes, so float ops become the same
TOPI PrimFuncs and integer ops the same TE kernels as on ``llvm``. What the relax VM would
do at run time (allocate, call each PrimFunc, unpack tuples) is read off ``main`` here
instead, because the PyPI TVM wheel has no GPU runtime: every binding must be a
``call_tir``, a tuple or a tuple item; anything else is a ``TargetError``.
"""

from __future__ import annotations

from typing import Any

from rqcompile.errors import TargetError
from rqcompile.targets.tvm.device.plan import Call, Value
from rqcompile.targets.tvm.adapter import relax, tvm

__all__ = ["Graph", "read_main"]


class Graph:
    """Values, inputs, weights, outputs and calls read from a relax ``main``."""

    def __init__(self) -> None:
        self.values: list[Value] = []
        self.inputs: list[int] = []
        self.weights: list[tuple[str, int]] = []
        self.outputs: list[int] = []
        self.calls: list[Call] = []
        self.consts: list[tuple[int, list[float]]] = []  # value id → flat data (small)
        self.funcs: dict[str, Any] = {}  # PrimFunc name → PrimFunc
        self._env: dict[Any, Any] = {}  # relax Var → value id, or a tuple of ids

    def new(self, ty: Any) -> int:
        shape = tuple(int(d) for d in ty.shape.values)
        self.values.append(Value(shape, str(ty.dtype)))
        return len(self.values) - 1

    def ids(self, expr: Any) -> Any:
        """Value id(s) of a relax expression: a Var, a Tuple, or a TupleGetItem of either."""
        if isinstance(expr, relax.Var):
            for var, v in self._env.items():
                if var.same_as(expr):
                    return v
            raise TargetError(f"device lowering: unknown relax value {expr.name_hint}.")
        if type(expr).__name__ == "GenericConst":  # a relax constant, e.g. a scalar factor
            data = expr.value.numpy()
            vid = self.new(expr.ty)
            self.consts.append((vid, [v.item() for v in data.reshape(-1)]))
            return vid
        if isinstance(expr, relax.Tuple):
            return tuple(self.ids(f) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return self.ids(expr.tuple_value)[int(expr.index)]
        raise TargetError(f"device lowering: unsupported relax expression {type(expr).__name__}.")

    def bind(self, var: Any, v: Any) -> None:
        self._env[var] = v


def _flat_ids(x: Any) -> list[int]:
    return [i for y in x for i in _flat_ids(y)] if isinstance(x, tuple) else [x]


def _call_tir(g: Graph, mod: Any, value: Any) -> Any:
    gvar, args = value.args[0], value.args[1]
    name = gvar.name_hint
    g.funcs[name] = mod[gvar]
    params: list[tuple[str, int]] = []
    for a in args.fields:
        if isinstance(a, tvm.tirx.IntImm):  # a run-time scalar (``emit_shared``)
            params.append((str(a.ty), int(a.value)))
        else:
            params.extend(("value", i) for i in _flat_ids(g.ids(a)))
    outs_ty = value.ty_args[0]
    fields = list(outs_ty.fields) if hasattr(outs_ty, "fields") else [outs_ty]
    outs = [g.new(t) for t in fields]
    params.extend(("value", o) for o in outs)
    g.calls.append(Call(name, tuple(params)))
    return outs[0] if not hasattr(outs_ty, "fields") else tuple(outs)


def read_main(mod: Any, nweights: int, weight_names: list[str]) -> Graph:
    """Read ``mod["main"]`` (after legalize/fuse) into a :class:`Graph`.

    ``main``'s parameters are the IR inputs followed by ``nweights`` weights named
    ``weight_names`` (``emit.const_params`` order).
    """
    g = Graph()
    main = mod["main"]
    params = list(main.params)
    ninputs = len(params) - nweights
    for i, p in enumerate(params):
        vid = g.new(p.struct_info if hasattr(p, "struct_info") else p.ty)
        g.bind(p, vid)
        if i < ninputs:
            g.inputs.append(vid)
        else:
            g.weights.append((weight_names[i - ninputs], vid))
    call_tir = tvm.ir.Op.get("relax.call_tir")
    body = main.body
    for block in body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and v.op.same_as(call_tir):
                g.bind(b.var, _call_tir(g, mod, v))
            elif isinstance(v, (relax.Var, relax.Tuple, relax.TupleGetItem)):
                g.bind(b.var, g.ids(v))
            else:
                raise TargetError(
                    f"device lowering: relax binding {b.var.name_hint} = {v} is not a call_tir "
                    "(an op LegalizeOps left alone). Build with target='llvm' instead."
                )
    g.outputs = _flat_ids(g.ids(body.body))
    return g
