"""``export_mlir``: an rq model as one MLIR module in upstream dialects (func, arith, linalg, ...).

Layout of the produced module (docs/mlir.md has the full op mapping):

- ``func.func @main``: the model's signature; weights are ``arith.constant dense_resource<…>``
  (blobs in the module's ``dialect_resources``, bit-exact); the body is a sequence of
  ``func.call``\\ s in a dependency-respecting order (:func:`rqcompile.targets.mlir.segments.schedule`).
- ``@<layer>.<kernel>`` (private): one function per integer kernel of the rq IR, written as
  integer ``linalg.generic`` ops by :mod:`rqcompile.targets.mlir.int_kernels` (packed weights in,
  ``f32`` out, with the per-block rank-1 corrections explicit).
- ``@rq_float_<i>`` (private): the float ops between kernels (activation quantization, norms,
  reshapes, im2col, ...) imported by torch-mlir's FX importer from the reference target's
  torch kernels and lowered to linalg-on-tensors.

The text is assembled, then parsed and verified by MLIR itself before it is returned, and
printed by MLIR (so it is canonical and re-parses).
"""

from __future__ import annotations

import re
import struct
from typing import Any

from rqcompile.errors import VerifyError
from rqcompile.ir.core import Module, Op, Value, tensor_bytes
from rqcompile.targets.mlir.bindings import require_torch_mlir
from rqcompile.targets.mlir.int_kernels import emit_int_op, pack_signs
from rqcompile.targets.mlir.segments import Segment, packs_signs, schedule, segment_module, segment_type
from rqcompile.targets.mlir.text import Writer, rq_tensor_type

__all__ = ["as_ir_module", "export_mlir", "ir_module_text"]


def as_ir_module(model: Any, example_inputs: Any = None) -> Module:
    """The rq IR of a ``CompiledModule`` or an IR module (``rq.export_mlir`` converts a QAT graph)."""
    from torch import fx

    from rqcompile.targets.compiled import CompiledModule

    if isinstance(model, fx.GraphModule):
        raise TypeError(
            "rqcompile.targets.mlir.export takes rq IR; call rq.export_mlir(qat) (it converts the QAT "
            "graph first) or rq.export_mlir(rq.convert(qat))."
        )
    if example_inputs is not None:
        raise TypeError(
            "example_inputs only applies to a QAT graph from rq.prepare(); an IR module or a "
            "compiled model already has fixed shapes. Pass the QAT graph instead."
        )
    if isinstance(model, CompiledModule):
        return model.ir
    if isinstance(model, Module):
        return model
    raise TypeError(
        "rq.export_mlir() takes the graph from rq.prepare(), the IR from rq.convert() or a "
        f"model from rq.lower(), got {type(model).__name__}."
    )


_BAD = re.compile(r"[^A-Za-z0-9_.$]")


class _Names:
    """Unique MLIR identifiers (symbols, resource keys) from free-form rq names."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, name: str) -> str:
        base = _BAD.sub("_", name) or "x"
        if not (base[0].isalpha() or base[0] == "_"):
            base = "_" + base
        out, i = base, 1
        while out in self.used:
            i += 1
            out = f"{base}_{i}"
        self.used.add(out)
        return out


def _bool_literal(t: Any) -> str:
    def rec(x: Any) -> str:
        return "[" + ", ".join(rec(v) for v in x) + "]" if isinstance(x, list) else str(x).lower()

    return "dense<" + rec(t.tolist()) + ">"


def _sig(types: list[str]) -> str:
    return "(" + ", ".join(types) + ")"


def ir_module_text(module: Module) -> tuple[str, list[tuple[str, Segment, list[Any]]]]:
    """The module text with float segments *declared*, plus what each declaration stands for.

    Returns:
        ``(text, [(symbol, segment, boundary input types), ...])``; the declarations are
        replaced by FX-imported definitions in :func:`export_mlir`.
    """
    func = module.main
    producer: dict[int, Op] = {r.id: op for op in func.ops for r in op.results}
    syms, keys = _Names(), _Names()
    main = Writer()
    names: dict[int, str] = {v.id: f"%arg{i}" for i, v in enumerate(func.args)}
    resources: list[str] = []
    for op in func.ops:
        if op.name != "rq.const":
            continue
        t = module.constant(str(op.attr("name")))
        ty = rq_tensor_type(op.result.type)
        v = main.fresh("k")
        if op.result.type.dtype == "i1":
            main.emit(f"{v} = arith.constant {_bool_literal(t)} : {ty}")
        else:
            key = keys(str(op.attr("name")))
            blob = (struct.pack("<I", t.element_size()) + tensor_bytes(t)).hex().upper()
            resources.append(f'      {key}: "0x{blob}"')
            main.emit(f"{v} = arith.constant dense_resource<{key}> : {ty}")
        names[op.result.id] = v
    funcs: list[str] = []
    jobs: list[tuple[str, Segment, list[Any]]] = []

    def call(sym: str, args: list[Value | str], arg_types: list[str], outs: list[str]) -> str:
        refs = [a if isinstance(a, str) else names[a.id] for a in args]
        v = main.fresh("r")
        head = f"{v}:{len(outs)}" if len(outs) > 1 else v
        main.emit(
            f"{head} = func.call @{sym}({', '.join(refs)}) : {_sig(arg_types)} -> {_sig(outs)}"
        )
        return v

    for step in schedule(func):
        if isinstance(step, Segment):
            sym = syms(f"rq_float_{len(jobs)}")
            in_types = [v.type for v in step.inputs]
            out_types = [segment_type(v, producer.get(v.id)) for v in step.outputs]
            ins, outs = (
                [rq_tensor_type(t) for t in in_types],
                [rq_tensor_type(t) for t in out_types],
            )
            funcs.append(f"  func.func private @{sym}{_sig(ins)} -> {_sig(outs)}")
            jobs.append((sym, step, in_types))
            r = call(sym, list(step.inputs), ins, outs)
            for i, v in enumerate(step.outputs):
                names[v.id] = f"{r}#{i}" if len(outs) > 1 else r
                p = producer[v.id]
                if packs_signs(p) and v is p.results[0]:
                    sym = syms(f"{_layer(p, producer)}.pack_signs")
                    names[v.id] = _kernel(funcs, sym, p, [names[v.id]], call)
        else:
            what = f"{_layer(step, producer)}.{step.name.removeprefix('rq.')}"
            args = [names[v.id] for v in step.operands]
            names[step.results[0].id] = _kernel(funcs, syms(what), step, args, call)
    rets = [names[v.id] for v in func.outputs]
    rtypes = [rq_tensor_type(v.type) for v in func.outputs]
    main.emit(f"func.return {', '.join(rets)} : {', '.join(rtypes)}")
    sig = ", ".join(f"%arg{i}: {rq_tensor_type(v.type)}" for i, v in enumerate(func.args))
    lines = [
        "module {",
        f"  func.func @{func.name}({sig}) -> {_sig(rtypes)} {{",
        *main.lines,
        "  }",
    ]
    lines += [*funcs, "}"]
    if resources:
        lines += ["{-#", "  dialect_resources: {", "    builtin: {", ",\n".join(resources)]
        lines += ["    }", "  }", "#-}"]
    return "\n".join(lines) + "\n", jobs


def _layer(op: Op, producer: dict[int, Op]) -> str:
    """Name for a kernel function: the weight constant's prefix (``conv3.g1`` for one group
    of a grouped conv), else the op's layer."""
    if len(op.operands) > 3:
        p = producer.get(op.operands[3].id)
        if p is not None and p.name == "rq.const":
            return str(p.attr("name")).rpartition(".")[0]
    return op.loc.layer if op.loc is not None else "kernel"


def _kernel(funcs: list[str], sym: str, op: Op, args: list[str], call: Any) -> str:
    """Write one private kernel function ``@sym`` for ``op`` and call it from main."""
    w = Writer()
    if packs_signs(op):
        src = op.operands[0].type
        in_types = [rq_tensor_type(src.with_dtype("i8"))]
        res = pack_signs(w, "%arg0", tuple(int(d) for d in src.shape))  # type: ignore[arg-type]
        out = rq_tensor_type(op.results[0].type)
    else:
        in_types = [rq_tensor_type(v.type) for v in op.operands]
        res = emit_int_op(w, [f"%arg{i}" for i in range(len(args))], op)
        out = rq_tensor_type(op.result.type)
    sig = ", ".join(f"%arg{i}: {t}" for i, t in enumerate(in_types))
    funcs.append(f"  func.func private @{sym}({sig}) -> {out} {{")
    funcs += w.lines
    funcs += [f"    func.return {res} : {out}", "  }"]
    return call(sym, args, in_types, [out])  # type: ignore[no-any-return]


def export_mlir(model: Any, example_inputs: Any = None) -> str:
    r"""Export ``model`` as MLIR text (upstream dialects; integer kernels as integer linalg).

    Args:
        model: the graph from ``rq.prepare`` (converted here), the IR from ``rq.convert`` or a
            model from ``rq.lower`` / ``rq.build``.
        example_inputs: shapes to convert a QAT graph for (default: those of ``prepare``).

    Returns:
        The module's text, printed by MLIR after parsing and verifying it.

    Raises:
        TargetError: torch-mlir is not installed.
        UnsupportedOpError: a shape is dynamic, or torch-mlir cannot import a float op.
        VerifyError: the assembled module fails MLIR verification (a bug: please report).

    Example:
        >>> import torch, rqcompile as rq
        >>> qat = rq.prepare(torch.nn.Linear(64, 8), (torch.randn(2, 64),), "A4W4")
        >>> text = rq.export_mlir(qat)
        >>> print(text[text.index("func.func @main"):].splitlines()[0])
        func.func @main(%arg0: tensor<2x64xf32>) -> tensor<2x8xf32> {
        >>> import re
        >>> re.findall(r"call @([\w.]+)", text)  # float ops, integer kernel, bias
        ['rq_float_0', 'linear.int_matmul', 'rq_float_1']
    """
    irm = as_ir_module(model, example_inputs)
    ir = require_torch_mlir()
    text, jobs = ir_module_text(irm)
    with ir.Context():
        try:
            mod = ir.Module.parse(text)
        except Exception as e:
            raise VerifyError(f"MLIR export produced invalid integer kernels: {e}") from e
        decls = {str(op.attributes["sym_name"]).strip('"'): op for op in mod.body.operations}
        for sym, seg, in_types in jobs:
            imported = ir.Module.parse(segment_module(seg, in_types, sym))
            (fop,) = [o for o in imported.body.operations if o.operation.name == "func.func"]
            fop.attributes["sym_visibility"] = ir.StringAttr.get("private")
            decls[sym].operation.erase()
            mod.body.append(fop)
        try:
            mod.operation.verify()
        except Exception as e:
            raise VerifyError(f"MLIR export: the assembled module does not verify: {e}") from e
        return str(mod)
