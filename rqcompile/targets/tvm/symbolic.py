"""One build for every shape of a dynamic model: relax functions over symbolic dims.

``rq.lower(qat, "llvm", dynamic_shapes=..., specialize="none")`` builds the symbolic IR
(``rqcompile/translate/dynamic.py``) once, instead of once per concrete shape:

* **Decisions at the maxima.** The rq-IR passes (fuse-attention, select-kernels,
  fuse-prologue, pack-weights) run on the module specialized at the dims' maxima, so every
  decision that depends on the weights alone (the kernel row, the packed layout) is the one
  a static build at the largest shape makes. Weights are packed once, at bind time, as in
  a static build.
* **Symbolic types.** Every IR value's dims are then written as expressions in the declared
  dims (``batch``, ``seq``, ``batch*seq``), fitted exactly from the value's size at the
  probe points (the same multilinear fit the symbolic conversion uses for attributes), and
  the emitter builds relax functions whose parameters carry ``tirx.Var`` dims: one ``main``
  for every shape in the declared range. Constants computed from shapes (a positional
  table ``[:seq]``, a causal mask ``[:seq, :seq]``) are stored at the maxima and sliced in
  the graph.
* **Kernels valid for any row count.** Relax ops (norms, softmax, layout ops) and the
  generic TE computes take symbolic extents as they come. The x86 micro-kernels take a
  symbolic row count: the quantize and fused layer-norm-quantize kernels loop over rows
  anyway; the packed panel matmuls (VNNI, AVX2, 2:4, XNOR) run whole row tiles and then a
  one-row tail loop (``x86/panel.py``); the unpacked AVX2 and XNOR micro-kernels run
  one-row tiles. A builder that still needs a static size raises while it is built and the
  emitter emits the op's generic kernel instead (for a fused group: its ops one by one), so
  the one build is correct for every shape; ``exe.symbolic_fallbacks`` lists what fell
  back. Attention always runs as its relax ops here (its fused kernel unrolls static
  views), so mixing positions is truly symbolic in the sequence.
* **Schedules on symbolic nests** (``schedules/float_code.py``): a loop nest with symbolic
  extents vectorizes its static tail and runs its leading loops in parallel, fusing only
  loops whose indices can be recovered by dividing by static extents (a flat loop over
  ``batch*seq*32`` would divide by ``seq`` at every element); a schedule rule whose result
  vectorizes a loop of symbolic length does not apply.
* **Range bounds.** Each dim's declared maximum goes to TVM on ``main``
  (``tir_var_upper_bound``), which memory planning uses to size the buffers once, at the
  maxima.

The per-shape builds (``specialize="lru"``, ``targets/dynamic.py``) stay available: with
every dim known each kernel takes its static fast path, at the cost of a build per shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from rqcompile.errors import ConfigError
from rqcompile.ir.core import Func, Module, Op, Value
from rqcompile.ir.types import TensorType
from rqcompile.ir.verify import verify
from rqcompile.passes.infra import PassContext, PassManager
from rqcompile.passes.ir.pad_columns import PadColumns
from rqcompile.passes.ir.select_kernels import SelectKernels
from rqcompile.targets.compiled import CompiledModule
from rqcompile.targets.target import Target as RQTarget
from rqcompile.translate.dynamic import (
    SymbolicModule,
    _fit,
    format_expr,
    probe_points,
    specialize,
)

__all__ = ["SymbolicType", "build_symbolic", "dim_exprs", "symbolic_ir"]


class SymbolicType(TensorType):
    """A :class:`TensorType` whose dims may be TIR expressions in the declared dims (only
    inside a symbolic build: the emitter reads it, nothing prints or verifies it)."""

    def __post_init__(self) -> None:  # dims are ints or tirx.PrimExpr
        object.__setattr__(self, "shape", tuple(self.shape))

    def __str__(self) -> str:
        return "tensor<" + "".join(f"{d}x" for d in self.shape) + f"{self.dtype}>"


class _Vars:
    """The ``tirx.Var`` of each declared dim, and each expression string built once (so equal
    expressions are the same object, as the emitter's kernel memo wants)."""

    def __init__(self, names: Sequence[str]) -> None:
        from rqcompile.targets.tvm.adapter import tirx

        self.tirx = tirx
        self.vars = {n: tirx.Var(n, "int64") for n in names}
        self._cache: dict[str, Any] = {}

    def expr(self, text: str) -> Any:
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        total: Any = None
        for term in text.split("+"):
            coeff, prod = Fraction(1), None
            for factor in term.split("*"):
                if factor in self.vars:
                    prod = self.vars[factor] if prod is None else prod * self.vars[factor]
                else:
                    coeff *= Fraction(factor)
            if coeff.denominator != 1:
                raise ConfigError(f"dim expression {text!r} has a fractional coefficient")
            c = int(coeff)
            if prod is None:
                t: Any = self.tirx.IntImm("int64", c)
            else:
                t = prod if c == 1 else prod * c
            total = t if total is None else total + t
        self._cache[text] = total
        return total


def dim_exprs(sm: SymbolicModule) -> dict[int, tuple[str | None, ...]]:
    """Per value id of ``main``: per dim, its expression in the declared dims (``None``
    where the dim is the same at every shape). Fitted from the value's sizes at the probe
    points, checked at the extra point."""
    names = [d.name for d in sm.shapes.dims]
    corners, check = probe_points(sm.shapes.dims)
    points = [*corners, check] if check not in corners else corners
    sizes: dict[int, list[tuple[int, ...]]] = {}
    for p in points:
        f = specialize(sm, p).main
        for v in [*f.args, *(r for op in f.ops for r in op.results)]:
            sizes.setdefault(v.id, []).append(tuple(int(d) for d in v.type.shape))  # type: ignore[arg-type]
    out: dict[int, tuple[str | None, ...]] = {}
    for vid, shapes in sizes.items():
        dims: list[str | None] = []
        for k in range(len(shapes[0])):
            ys = [s[k] for s in shapes]
            if len(set(ys)) == 1:
                dims.append(None)
                continue
            e = _fit(corners, ys[: len(corners)], names)
            if e is None or any(
                sum(c * _prod(p, m) for m, c in e.items()) != y
                for p, y in zip(points, ys, strict=True)
            ):
                raise ConfigError(f"value %{vid}: dim {k} is not a polynomial in the dims")
            dims.append(format_expr(e))
        out[vid] = tuple(dims)
    return out


def _prod(p: Mapping[str, int], mono: frozenset[str]) -> int:
    out = 1
    for n in mono:
        out *= p[n]
    return out


def symbolic_ir(annotated: Module, sm: SymbolicModule) -> tuple[Module, _Vars]:
    """``annotated`` (the module at the maxima, after the rq-IR passes) with every dynamic
    dim of ``main``'s values written as a TIR expression (:class:`SymbolicType`)."""
    exprs = dim_exprs(sm)
    tv = _Vars([d.name for d in sm.shapes.dims])
    f = annotated.main
    env: dict[int, Value] = {}

    def sym(v: Value) -> Value:
        hit = env.get(v.id)
        if hit is not None:
            return hit
        es = exprs.get(v.id)
        if es is None or all(e is None for e in es):
            env[v.id] = v
        else:
            shape = tuple(d if e is None else tv.expr(e)
                          for d, e in zip(v.type.shape, es, strict=True))  # fmt: skip
            env[v.id] = Value(v.id, SymbolicType(shape, v.type.dtype))
        return env[v.id]

    args = tuple(sym(v) for v in f.args)
    ops = tuple(
        Op(op.name, tuple(sym(v) for v in op.operands), tuple(sym(r) for r in op.results),
           op.attrs, op.loc)
        for op in f.ops
    )  # fmt: skip
    main = Func(f.name, args, ops, tuple(sym(v) for v in f.outputs), f.attrs)
    return Module((main, *(g for g in annotated.funcs if g.name != f.name)),
                  annotated.constants), tv  # fmt: skip


def is_symbolic_type(t: Any) -> bool:
    return isinstance(t, SymbolicType) and any(not isinstance(d, int) for d in t.shape)


def build_symbolic(sym_ir: Module, target: RQTarget,
                   context: PassContext | None = None) -> CompiledModule:  # fmt: skip
    """Build the symbolic module ``sym_ir`` once for ``target`` (llvm): a
    :class:`CompiledModule` whose ``main`` takes any shape in the declared ranges (the
    caller checks the ranges; see ``targets/dynamic.py``)."""
    from rqcompile.targets.tvm.build import export_bytes
    from rqcompile.targets.tvm.emit.module import emit_module
    from rqcompile.targets.tvm.pipelines import (
        Phase,
        features_for,
        library_suffix,
        pipeline_for,
        tvm_target,
    )
    from rqcompile.targets.tvm.runtime import compiled_module

    sm = SymbolicModule.of(sym_ir)
    top = specialize(sm, {d.name: d.max for d in sm.shapes.dims})
    ttarget = tvm_target(target)
    ctx = (context or PassContext.current()).for_stage(target=target)
    # a row that takes only some row counts (AMX tiles from 16 rows, 4-/2-bit panels up to
    # 16) would be chosen for the maxima and be wrong for other shapes in the range
    # pad-columns adds values the symbolic shapes below do not know (padded weights and
    # results): a width no panel takes keeps the generic kernel here
    passes = [dataclasses.replace(p, any_rows=True) if isinstance(p, SelectKernels) else p
              for p in pipeline_for(ttarget) if not isinstance(p, PadColumns)]  # fmt: skip
    n_rq = next(i for i, p in enumerate(passes) if isinstance(p, Phase))
    annotated = PassManager(passes[:n_rq], verifier=verify).run(top, ctx)
    symbolic, _ = symbolic_ir(annotated, sm)
    bounds = {d.name: d.max for d in sm.shapes.dims}
    fallbacks: list[str] = []
    phases = {
        "emit": Phase("emit", lambda ir: emit_module(ir, symbolic=bounds, report=fallbacks)),
    }
    tvm_phases = [phases.get(p.name, p) for p in passes[n_rq:]]
    x: Any = PassManager(tvm_phases).run(symbolic, ctx)
    lib = export_bytes(x, library_suffix(target.to_dict()))  # .tar for another arch
    # the runner binds annotated.constants (full-size; prefixes are sliced in the graph)
    exe = compiled_module(annotated, target, lib, features_for(ttarget), executable=x,
                          tvm_target=ttarget)  # fmt: skip
    exe.symbolic_fallbacks = tuple(fallbacks)  # type: ignore[attr-defined]
    return exe
